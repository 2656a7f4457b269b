"""Dropping the rows an interrupted append left past the published ones.

An append grows its arrays before it publishes the new `count`, so one killed in between
leaves rows past `count`. Stores record how far an append may grow them (`reserved`, written
first), and such rows are then read as what they are: unpublished, overwritten by the next
append. A store written before amemctl recorded `reserved` cannot tell them from a tampered
shape and is refused as damaged; `trim` is how its published rows are opened again without
copying them.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path

from amemctl.atomic import write_atomically
from amemctl.errors import DamagedStore
from amemctl.store.memory import MemoryStore, _now
from amemctl.store.soundness import FIXED, RESERVED, open_array


def trim(path: "str | Path") -> dict[str, int]:
    """Shrink every array of the store at `path` to its published rows; returns the rows dropped, per array.

    Under the writer lock, each longer array's chunk files wholly past the published rows are
    deleted, then its zarr.json is rewritten (atomically) with the published length: space
    comes first, so trim works on the disk a failed append filled. A kill in between leaves
    a shape past missing chunk files, rows zarr reads as zeros but no reader reads (they are
    unpublished) and the next append overwrites. Published rows are not touched, so readers
    that opened the store before read on. Arrays holding fewer rows than published, or
    metadata amemctl did not write, are damage that trimming cannot mend and are refused
    before anything changes.
    """
    store = MemoryStore.open(path, mode="a", check=False)
    with store._writer():
        store._refresh()
        attrs = store.attrs
        count = attrs["count"]
        arrays = {}
        for name, spec in {**FIXED, **attrs["arrays"]}.items():
            array = open_array(store.path, store.group, name, spec, attrs)
            if array is None:
                continue
            if array.shape[0] < count:
                raise DamagedStore(
                    f"{store.path}: {name} has {array.shape[0]} rows but the store publishes {count}; trimming drops rows, it cannot restore them",
                    hint=f"run `amemctl store verify {store.path}`; restore the store from a copy or write it again",
                )
            arrays[name] = array
        dropped = {name: array.shape[0] - count for name, array in arrays.items() if array.shape[0] > count}
        for name in dropped:
            _shrink(store.path / name, count, int(arrays[name].chunks[0]))
        if dropped or attrs.get(RESERVED, count) != count:
            attrs[RESERVED] = count
            attrs["updated"] = _now()
            if dropped:
                attrs["provenance"].append({"time": _now(), "trimmed": dropped})
            store._publish(attrs)
    return dropped


def _shrink(folder: Path, rows: int, chunk_rows: int) -> None:
    """Delete the chunk files of the array at `folder` wholly past `rows` rows, then declare `rows` rows."""
    first_gone = math.ceil(rows / chunk_rows)
    chunks = folder / "c"
    if chunks.is_dir():
        for entry in os.scandir(chunks):  # the files there, however large the shape once claimed
            if entry.name.isdigit() and int(entry.name) >= first_gone:
                if entry.is_dir(follow_symlinks=False):
                    shutil.rmtree(entry.path)
                else:
                    os.unlink(entry.path)
    meta = folder / "zarr.json"
    doc = json.loads(meta.read_bytes())
    doc["shape"][0] = rows
    write_atomically(meta, json.dumps(doc, indent=2))


__all__ = ["trim"]
