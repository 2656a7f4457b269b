"""Cheap checks that a store's metadata agrees with its data, made whenever a store is opened.

zarr reads a missing chunk file as the fill value, so a deleted chunk would silently decode
as rows of zeros, and a tampered `storage` attribute would decode one type as another.
These checks look only at metadata and file sizes (no chunk is decoded), so every open can
afford them; `amemctl store verify` adds the full decode of every chunk.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from amemctl.store.encoding import STORAGE

#: attribute set by stores that write every chunk (even all-zero ones), so a missing file is damage
EVERY_CHUNK = "every_chunk_written"


def chunk_file(name: str, index: int, ndim: int) -> str:
    """The file of row-chunk `index` of array `name`, relative to the store (zarr v3 default keys)."""
    return "/".join([name, "c", str(index), *["0"] * (ndim - 1)])


def problems(path: Path, group: Any, attrs: dict) -> list[str]:
    """What is wrong with the store's metadata or chunk files (empty when nothing is)."""
    found: list[str] = []
    count = attrs.get("count")
    arrays = attrs.get("arrays")
    if not isinstance(count, int) or count < 0 or not isinstance(arrays, dict):
        return [f"the store attributes are damaged (count {count!r}, arrays {type(arrays).__name__})"]
    specs: dict[str, dict] = {"ids": {"storage": "int64"}, "alive": {"storage": "uint8"}, **arrays}
    for name, spec in specs.items():
        try:
            array = group[name]
        except KeyError:
            if name in arrays or count:  # ids and alive appear with the first append
                found.append(f"array {name!r} is listed in the attributes but missing")
            continue
        storage = spec.get("storage") if isinstance(spec, dict) else None
        if storage not in STORAGE:
            found.append(f"{name}: unknown storage {storage!r} in the attributes")
            continue
        if np.dtype(STORAGE[storage]) != np.dtype(str(array.dtype)):
            found.append(f"{name}: the attributes say {storage} (zarr {STORAGE[storage]}) but the array holds {array.dtype}")
        if "row_shape" in spec and tuple(spec["row_shape"]) != tuple(array.shape[1:]):
            found.append(f"{name}: the attributes say rows of shape {tuple(spec['row_shape'])} but the array holds {tuple(array.shape[1:])}")
        if array.shape[0] < count:
            found.append(f"{name} has {array.shape[0]} rows but the store publishes {count}")
            continue
        if attrs.get(EVERY_CHUNK):
            found.extend(_chunk_files(path, name, array, count, attrs))
    return found


def _chunk_files(path: Path, name: str, array: Any, count: int, attrs: dict) -> list[str]:
    rows = int(array.chunks[0])
    raw = math.prod(array.chunks) * np.dtype(str(array.dtype)).itemsize + (4 if attrs.get("checksum") else 0)
    found = []
    for index in range(math.ceil(count / rows)):
        relative = chunk_file(name, index, array.ndim)
        span = f"rows {index * rows}..{min(count, (index + 1) * rows) - 1}"
        try:
            size = (path / relative).stat().st_size
        except FileNotFoundError:
            found.append(f"{name} chunk {index} ({span}, file {relative}) is missing")
            continue
        if size == 0 or (attrs.get("compression") == "none" and size != raw):
            found.append(f"{name} chunk {index} ({span}, file {relative}) is truncated ({size} bytes{'' if attrs.get('compression') != 'none' else f', expected {raw}'})")
    return found
