"""Writing a store's live rows to one numpy .npz file, a storage chunk at a time."""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

import numpy as np

from amemctl.store.memory import MemoryStore


def export_npz(store: MemoryStore, output: Path) -> dict[str, tuple[int, ...]]:
    """Write the live rows of every array of `store`, and their ids, to `output`; returns each entry's shape.

    The entries are what `np.load` reads back: `ids`, `patterns`, `labels`, `values` and
    `keys__<space>`, decoded as `MemoryStore.to_tensor` decodes them. `np.savez` needs every
    array in memory at once; here each entry's .npy header is written first and its rows
    follow chunk by chunk, so a store larger than memory exports in about one chunk of it.
    The file is written beside `output` and renamed over it once complete.
    """
    live = store.live_rows()
    partial = output.with_name(f".{output.name}.partial")
    shapes = {}
    try:
        with zipfile.ZipFile(partial, "w", compression=zipfile.ZIP_DEFLATED, allowZip64=True) as archive:
            for name in ["ids", *store.arrays]:
                entry = name.replace("/", "__")
                shapes[entry] = _write_entry(archive, entry, store, name, live)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    os.replace(partial, output)
    return shapes


def _write_entry(archive: zipfile.ZipFile, entry: str, store: MemoryStore, name: str, live: np.ndarray) -> tuple[int, ...]:
    """Array `name`'s rows `live` as the .npy member `entry` of `archive`: the header, then the rows chunk by chunk."""
    step = store.chunk_rows(name)
    decoded = store.take(name, live[:0]).numpy()  # the type and row shape the rows decode to
    shape = (len(live), *decoded.shape[1:])
    header = {"descr": np.lib.format.dtype_to_descr(decoded.dtype), "fortran_order": False, "shape": shape}
    with archive.open(f"{entry}.npy", "w", force_zip64=True) as member:
        np.lib.format.write_array_header_2_0(member, header)
        for start in range(0, len(live), step):
            member.write(np.ascontiguousarray(store.take(name, live[start : start + step]).numpy()).tobytes())
    return shape


__all__ = ["export_npz"]
