"""How tensors are stored: float32, float16, bfloat16 (as raw 16 bits) or uint8 images.

uint8 suits images that came from 8-bit files (values k/255): they round-trip exactly and
take a quarter of float32's room. Anything else asked to go into uint8 is refused rather
than silently rounded.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from amemctl.errors import StoreError

#: storage name -> the zarr data type it is written as
STORAGE = {"float32": "float32", "float16": "float16", "bfloat16": "uint16", "uint8": "uint8", "int64": "int64"}


def encode(x: Tensor, storage: str, what: str) -> np.ndarray:
    """The tensor as a numpy array of the storage type (on the CPU)."""
    x = x.detach().cpu()
    if storage == "int64":
        if x.is_floating_point():
            raise StoreError(f"{what} must be integers, got {x.dtype}")
        return x.to(torch.int64).numpy()
    if not x.is_floating_point():
        x = x.float()
    if storage == "uint8":
        scaled = x.float() * 255
        if x.numel() and (x.min() < 0 or x.max() > 1 or (scaled - scaled.round()).abs().max() > 1e-3):
            raise StoreError(
                f"{what} are not 8-bit images (values k/255 in [0, 1]); uint8 storage would change them",
                hint="store them as float16 or float32 (dtype: float16)",
            )
        return scaled.round().to(torch.uint8).numpy()
    if storage == "bfloat16":
        return x.to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
    if storage in ("float32", "float16"):
        return x.to(getattr(torch, storage)).numpy()
    raise StoreError(f"unknown storage type {storage!r}", hint=f"use one of {', '.join(s for s in STORAGE if s != 'int64')}")


def decode(a: np.ndarray, storage: str) -> Tensor:
    """The stored array as a tensor: float32 for images and keys, int64 for labels and ids."""
    return widen(stored(a, storage), storage)


def stored(a: np.ndarray, storage: str) -> Tensor:
    """The stored array as a tensor of its stored width, not decoded yet (bfloat16: its 16 bits as int16).

    What a store streams to a GPU: `widen` there moves half the bytes of float32 for float16 and
    bfloat16, a quarter for uint8, and spares the reading thread the conversion.
    """
    t = torch.from_numpy(np.ascontiguousarray(a))
    return t.view(torch.int16) if storage == "bfloat16" else t


def widen(t: Tensor, storage: str) -> Tensor:
    """A `stored` tensor decoded, on its own device: the same numbers on every device."""
    if storage == "uint8":
        return t.float().div_(255)
    if storage == "bfloat16":
        return t.view(torch.bfloat16).float()
    if storage == "float16":
        return t.float()
    return t
