"""Writing a store's live rows to one numpy .npz file, a storage chunk at a time."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from amemctl.atomic import replacing
from amemctl.errors import StoreError, refusal_hint
from amemctl.store.memory import MemoryStore


def export_npz(store: MemoryStore, output: Path) -> dict[str, tuple[int, ...]]:
    """Write the live rows of every array of `store`, and their ids, to `output`; returns each entry's shape.

    The entries are what `np.load` reads back: `ids`, `patterns`, `labels`, `values` and
    `keys__<space>`, decoded as `MemoryStore.to_tensor` decodes them. `np.savez` needs every
    array in memory at once; here each entry's .npy header is written first and its rows
    follow as `iter_chunks` reads them, a storage chunk at a time, so a store larger than
    memory exports in about two chunks of it. The file is written beside `output` and renamed
    over it once complete.
    """
    shapes = {}
    try:
        with replacing(output) as partial, zipfile.ZipFile(partial, "w", compression=zipfile.ZIP_DEFLATED, allowZip64=True) as archive:
            for name in ["ids", *store.arrays]:
                entry = name.replace("/", "__")
                shapes[entry] = _write_entry(archive, entry, store, name)
    except OSError as exc:  # the store's reads tell their own failures as StoreErrors: this is the output's
        raise _unwritable(output, exc) from None
    return shapes


def _unwritable(output: Path, exc: OSError) -> StoreError:
    """The export's error when `output` cannot be written: its folder missing or a file, no room, no permission."""
    folder = output.parent
    if not folder.is_dir():
        what = f"{folder} is not a folder" if folder.exists() else f"the folder {folder} does not exist"
        return StoreError(f"cannot write {output}: {what}", hint="create the folder first, or name a file in an existing folder")
    if output.is_dir():
        return StoreError(f"cannot write {output}: it is a folder", hint="name a .npz file to write")
    return StoreError(
        f"cannot write {output}: {exc.strerror or exc}" + (" (nothing was written; an earlier file there is kept)" if output.exists() else " (nothing was written)"),
        hint=refusal_hint(exc, folder) or f"check that you may write to {folder}",
    )


def _write_entry(archive: zipfile.ZipFile, entry: str, store: MemoryStore, name: str) -> tuple[int, ...]:
    """Array `name`'s live rows as the .npy member `entry` of `archive`: the header, then the rows chunk by chunk."""
    decoded = store.read(name, 0, 0).numpy()  # the type the rows decode to
    shape = (len(store.live_rows()), *store.row_shape(name))
    header = {"descr": np.lib.format.dtype_to_descr(decoded.dtype), "fortran_order": False, "shape": shape}
    with archive.open(f"{entry}.npy", "w", force_zip64=True) as member:
        np.lib.format.write_array_header_2_0(member, header)
        for _, block in store.iter_chunks(name):  # live rows, flattened in C order: the bytes of the row-shaped array
            member.write(np.ascontiguousarray(block.numpy()).tobytes())
    return shape


__all__ = ["export_npz"]
