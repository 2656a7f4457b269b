"""Checking a store: arrays agree in length, ids are sound, every chunk decodes and its checksum matches."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from amemctl.errors import StoreError
from amemctl.store.memory import MemoryStore


@dataclass
class Report:
    """What `verify` found: problems make a store unsound; notes are worth knowing."""

    path: Path
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    chunks_checked: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems


def verify(path: "str | Path") -> Report:
    """Check the store at `path` thoroughly, reading every chunk of every array."""
    report = Report(Path(path))
    try:
        store = MemoryStore.open(path)
    except StoreError as exc:
        report.problems.append(exc.message)
        return report
    count = store.count
    names = ["ids", "alive", *store.arrays]
    for name in names:
        try:
            array = store.group[name]
        except KeyError:
            report.problems.append(f"array {name!r} is listed in the attributes but missing")
            continue
        if array.shape[0] < count:
            report.problems.append(f"{name} has {array.shape[0]} rows but the store publishes {count}")
        elif array.shape[0] > count:
            report.notes.append(f"{name} holds {array.shape[0] - count} unpublished rows from an interrupted append (ignored; the next append overwrites them)")
        report.chunks_checked += _check_chunks(store, name, array, report)
    on_disk = {f"keys/{k}" for k in _group_keys(store, "keys")}
    for extra in sorted(on_disk - set(store.arrays)):
        report.notes.append(f"{extra} exists on disk but is not listed in the attributes (an interrupted add_space?)")
    for space in store.spaces:
        if f"keys/{space}" not in store.arrays:
            report.problems.append(f"space {space!r} has an identity but no keys/{space} array")
    if report.ok and count:
        ids = store.group["ids"][:count]
        if np.any(np.diff(ids) <= 0):
            report.problems.append("ids are not strictly increasing")
        if ids.max(initial=-1) >= store.attrs["next_id"]:
            report.problems.append(f"an id reaches next_id={store.attrs['next_id']}: ids could be reused")
    return report


def _check_chunks(store: MemoryStore, name: str, array, report: Report) -> int:
    rows = array.chunks[0]
    checked = 0
    for start in range(0, array.shape[0], rows):
        try:
            array[start : start + rows]
        except Exception as exc:  # any decoding failure is what verify exists to find
            grid = "/".join(str(i) for i in itertools.chain([start // rows], [0] * (array.ndim - 1)))
            report.problems.append(f"{name} chunk {start // rows} (rows {start}..{min(start + rows, array.shape[0]) - 1}, file {name}/c/{grid}) does not decode: {exc}")
        checked += 1
    return checked


def _group_keys(store: MemoryStore, name: str) -> list[str]:
    try:
        return list(store.group[name].array_keys())
    except KeyError:
        return []
