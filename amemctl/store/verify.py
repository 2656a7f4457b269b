"""Checking a store: metadata agrees with the data, ids are sound, every chunk is present, decodes and
matches its checksum, and no stored row holds NaN or inf."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from amemctl.errors import StoreError
from amemctl.store.encoding import decode
from amemctl.store.memory import OPEN_ATTEMPTS, MemoryStore, within_one_copy
from amemctl.store.soundness import EVERY_CHUNK, chunk_file, problems, row_bound


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
    """Check the store at `path` thoroughly, reading every chunk of every array.

    Like `MemoryStore.open`, it reads without the writer lock: when another process swaps a new
    copy in while it reads (compact, replace), what it read mixes two copies, and it checks again.
    """
    report = within_one_copy(Path(path), lambda: _verify(path))  # a StoreError here: a read refused within one copy (damage is reported, not raised)
    if report is None:
        report = Report(Path(path))
        report.problems.append(f"{path} was replaced by other processes each of the {OPEN_ATTEMPTS} times it was verified (compacted or rewritten); run again")
    return report


def _verify(path: "str | Path") -> Report:
    report = Report(Path(path))
    try:
        store = MemoryStore.open(path, check=False)
    except StoreError as exc:
        report.problems.append(exc.message)
        return report
    count = store.count
    report.problems.extend(problems(store.path, store.group, store.attrs))
    if not store.attrs.get(EVERY_CHUNK):
        report.notes.append("written before amemctl kept every chunk file: a missing chunk cannot be told from one of zeros (compact or rewrite the store to fix)")
    names = ["ids", "alive", *store.arrays]
    for name in names:
        try:
            array = store._array(name)
        except StoreError:  # missing or damaged: problems() has said so
            continue
        if array.shape[0] > count and array.shape[0] <= row_bound(store.path, store.attrs, array.shape[0]):
            report.notes.append(f"{name} holds {array.shape[0] - count} unpublished rows from an interrupted append (ignored; the next append overwrites them)")
        report.chunks_checked += _check_chunks(store, name, array, report)
    on_disk = {f"keys/{k}" for k in _group_keys(store, "keys")}
    for extra in sorted(on_disk - set(store.arrays)):
        report.notes.append(f"{extra} exists on disk but is not listed in the attributes (an interrupted add_space?)")
    for space in store.spaces:
        if f"keys/{space}" not in store.arrays:
            report.problems.append(f"space {space!r} has an identity but no keys/{space} array")
    if report.ok and count:
        ids = store._array("ids")[:count]
        if np.any(np.diff(ids) <= 0):
            report.problems.append("ids are not strictly increasing")
        if ids.max(initial=-1) >= store.attrs["next_id"]:
            report.problems.append(f"an id reaches next_id={store.attrs['next_id']}: ids could be reused")
    return report


def _check_chunks(store: MemoryStore, name: str, array, report: Report) -> int:
    """Decode every chunk of the published rows of `name` (rows beyond `count` are no data), noting NaN and inf rows."""
    rows = array.chunks[0]
    checked = 0
    count = min(store.count, array.shape[0])
    storage = store.storage(name)
    bad: list[int] = []
    for start in range(0, count, rows):
        try:
            data = array[start : min(start + rows, count)]
        except Exception as exc:  # any decoding failure is what verify exists to find
            report.problems.append(
                f"{name} chunk {start // rows} (rows {start}..{min(start + rows, count) - 1}, file {chunk_file(name, start // rows, array.ndim)}) does not decode: {exc}"
            )
            data = None
        checked += 1
        if data is not None and storage in ("float32", "float16", "bfloat16"):
            values = decode(data, storage).reshape(len(data), -1)
            finite = torch.isfinite(values).all(dim=1).numpy()
            bad.extend((start + np.flatnonzero(~finite)).tolist())
    if bad:
        try:
            alive = store.alive()
            bad = [r for r in bad if alive[r]]  # forgotten rows are never retrieved
        except StoreError:
            pass
    if bad:
        try:
            ids = store._array("ids").get_orthogonal_selection((np.asarray(bad[:5]),)).tolist()
        except StoreError:
            ids = bad[:5]
        report.problems.append(
            f"{name}: {len(bad)} row(s) hold NaN or inf (ids {', '.join(map(str, ids))}{' ...' if len(bad) > 5 else ''})"
            + "; forget them with `amemctl store forget --ids ...`"
        )
    return checked


def _group_keys(store: MemoryStore, name: str) -> list[str]:
    try:
        return list(store.group[name].array_keys())
    except Exception:  # no such group, or one zarr cannot read (problems() names what is damaged)
        return []
