"""Peak memory of tensors made inside a block, counted as a GPU's allocator would hand them out.

Works on meta tensors (shapes without data, so a GPU's memory can be measured on a CPU) and on
CPU tensors alike: the bytes of every new storage, alive at once, inputs not counted.
"""

from __future__ import annotations

import weakref

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten


class Peak(TorchDispatchMode):
    """The most bytes that tensors made inside the mode hold at once (meta tensors: their sizes; inputs not counted)."""

    def __init__(self) -> None:
        super().__init__()
        self.storages: dict[int, tuple[int, list]] = {}  # storage -> (bytes, weak references of the tensors on it)
        self.bytes = 0

    def _alive(self, key: int) -> bool:
        refs = self.storages[key][1]
        refs[:] = [r for r in refs if r() is not None]
        if not refs:  # freed: its address may come back as another storage's
            del self.storages[key]
        return bool(refs)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        given = {t.untyped_storage()._cdata for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)}
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                key = t.untyped_storage()._cdata
                if key in self.storages and self._alive(key):
                    self.storages[key][1].append(weakref.ref(t))
                elif key not in given:  # a new allocation (what a GPU's allocator would hand out: numel x element size)
                    self.storages[key] = (t.numel() * t.element_size(), [weakref.ref(t)])
        self.bytes = max(self.bytes, sum(self.storages[k][0] for k in list(self.storages) if self._alive(k)))
        return out
