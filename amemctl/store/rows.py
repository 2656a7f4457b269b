"""A store's live rows as retrieval Rows: chunks read from disk in the background.

While retrieval scores one chunk, the next is read and decoded by a worker thread (and,
on a GPU, copied from pinned memory without blocking), so a store larger than memory
answers queries at close to the speed of reading it. On a GPU the rows cross as stored
(float16, bfloat16, uint8: half or a quarter of float32's bytes) and are decoded there.
"""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Iterator

import numpy as np
import torch
from torch import Tensor

from amemctl.errors import StoreError
from amemctl.store.encoding import widen

if TYPE_CHECKING:
    from amemctl.store.memory import MemoryStore


class StoreRows:
    """Rows (in the sense of amemctl.core.rows) over one array of a store, forgotten rows skipped."""

    def __init__(self, store: "MemoryStore", name: str, device: torch.device, prefetch: int = 1, bounds: tuple[int, int] | None = None) -> None:
        self.store = store
        self.name = name
        self.device = device
        self.prefetch = max(0, prefetch)
        self._shape = store.row_shape(name)
        alive = store.alive()
        self._first, last = bounds if bounds is not None else (0, len(alive))
        self._alive = alive[self._first : last]  # physical rows first..last
        self._live = np.flatnonzero(self._alive)  # relative to first
        self._generation = store.generation  # the row numbers above belong to this copy
        self._storage = store.storage(name)
        #: chunks cross to the device as stored and are decoded there (`encoding.widen`): on a GPU
        self.decode_on_device = self.device.type == "cuda"

    def __len__(self) -> int:
        return len(self._live)

    @property
    def row_shape(self) -> tuple[int, ...]:
        return self._shape

    @property
    def width(self) -> int:
        return math.prod(self._shape)

    def __repr__(self) -> str:
        return f"StoreRows({self.store.path}/{self.name}, {len(self)} rows of {self._shape})"

    def chunks(self, size: int) -> Iterator[tuple[int, Tensor]]:
        """(offset among live rows, n x width tensor on the device), reading ahead."""
        count = len(self._alive)
        stored = self.store.chunk_rows(self.name)
        size = max(1, size - size % stored if size >= stored else size)  # whole storage chunks when possible
        starts = list(range(0, count, size))
        if not starts:
            return
        with ThreadPoolExecutor(max_workers=1) as pool:
            pending = [pool.submit(self._read, s, min(s + size, count)) for s in starts[: self.prefetch + 1]]
            offset = 0
            for i in range(len(starts)):
                block = pending.pop(0).result()
                ahead = i + self.prefetch + 1
                if ahead < len(starts):
                    pending.append(pool.submit(self._read, starts[ahead], min(starts[ahead] + size, count)))
                if len(block):
                    yield offset, self._arrived(block)
                    offset += len(block)

    def shard(self, start: int, stop: int) -> "StoreRows":
        """Live rows start..stop of these rows (for one rank of several)."""
        if start >= stop:
            return StoreRows(self.store, self.name, self.device, self.prefetch, (self._first, self._first))
        lo = self._first + int(self._live[start])
        hi = self._first + int(self._live[stop - 1]) + 1
        return StoreRows(self.store, self.name, self.device, self.prefetch, (lo, hi))

    def take(self, index: Tensor) -> Tensor:
        self._check_copy()
        physical = self._first + self._live[index.detach().cpu().numpy().astype(np.int64)]
        return self._to_device(self.store.take(self.name, physical).reshape(len(physical), -1))

    def to_tensor(self) -> Tensor:
        """All live rows in their stored shape (for stores that fit in memory)."""
        return self.store.take(self.name, self._first + self._live).to(self.device)

    def _check_copy(self) -> None:
        """Refuse to go on once the store became another copy (compacted through this very object)."""
        if self.store.generation != self._generation:
            raise StoreError(
                f"{self.store.path} was compacted or rewritten after these rows were taken from it",
                hint="open the rows again (store.rows(...)) after compacting",
            )

    def _read(self, start: int, stop: int) -> Tensor:
        """(In the worker thread) the live rows of physical rows start..stop, for `_arrived`: decoded here, or as stored."""
        self._check_copy()
        read = self.store.read_stored if self.decode_on_device else self.store.read
        block = read(self.name, self._first + start, self._first + stop).reshape(stop - start, -1)
        keep = self._alive[start:stop]
        if not keep.all():
            block = block[torch.from_numpy(keep)]
        if self.device.type == "cuda":
            block = block.pin_memory()
        return block

    def _arrived(self, block: Tensor) -> Tensor:
        """A block `_read` made, on the device and decoded."""
        moved = self._to_device(block)
        return widen(moved, self._storage) if self.decode_on_device else moved

    def _to_device(self, block: Tensor) -> Tensor:
        return block.to(self.device, non_blocking=self.device.type == "cuda")
