"""Stores under races, kills, hostile paths and damage: nothing lost, nothing silently wrong."""

from __future__ import annotations

import json
import queue
import random
import signal
import subprocess
import sys
import threading
import time

import pytest
import torch

from amemctl.errors import AmemctlError, DamagedStore, StoreError
from amemctl.store.memory import MemoryStore
from amemctl.store.verify import verify
from tests.conftest import child_env

WRITER = """
import sys, time, torch
from amemctl.errors import StoreError
from amemctl.store.memory import MemoryStore
path, role = sys.argv[1], sys.argv[2]
print("ready", flush=True)
k = 0
while True:
    k += 1
    if role == "replace":  # a whole new store of 300 rows, every row holding (and labelled) 1000 + k
        n = 300
        fill = lambda s: s.append(patterns=torch.full((n, 6), 1000.0 + k), labels=torch.full((n,), 1000 + k))
        MemoryStore.write_new(path, fill, replace=True, chunk_bytes=6 * 4 * 64)
    elif role == "append":  # 50 rows holding (and labelled) k
        MemoryStore.open(path, mode="a").append(patterns=torch.full((50, 6), float(k)), labels=torch.full((50,), k))
    else:  # forget the oldest live rows, then compact
        store = MemoryStore.open(path, mode="a")
        try:  # the ids are read without the lock: a copy swapped in meanwhile refuses the read, or lacks them
            store.forget(ids=store.ids()[:30])
        except StoreError as exc:
            if "replaced while it was being read" not in exc.message and "no rows with ids" not in exc.message:
                raise
            print("refused", exc.message, flush=True)
            continue
        store.compact()
    print(role, k, flush=True)
    time.sleep(0.02)  # flock is not fair: a writer that loops without a pause could starve the other
"""
#: seconds a round of the race test may last before it gives up (a safety net: a round takes seconds, even on a busy machine)
ROUND_LIMIT = 300


def _consistent(path) -> None:
    """The store is whole: verify finds nothing, and every row's pattern agrees with its label."""
    report = verify(path)
    assert report.ok, report.problems
    store = MemoryStore.open(path)
    patterns, labels = store.to_tensor("patterns"), store.to_tensor("labels")
    assert len(patterns) == len(labels) == len(store)
    assert torch.equal(patterns, labels[:, None].float().expand_as(patterns)), "rows of different writers mixed"
    assert torch.equal(store.ids(), torch.sort(store.ids()).values)


def _lines(children: dict) -> "queue.Queue":
    """Every child's output lines as (role, line) on one queue, (role, None) once it has ended (any child may print next)."""
    lines: queue.Queue = queue.Queue()

    def read(role, child):
        for line in child.stdout:
            lines.put((role, line.strip()))
        lines.put((role, None))

    for role, child in children.items():
        threading.Thread(target=read, args=(role, child), daemon=True).start()
    return lines


def test_replace_racing_append_and_compact_under_sigkill_never_publishes_a_mixed_store(tmp_path):
    """Three writers race; each round they are killed at once, after every one has completed an operation.

    Rounds end on the writers' own reports, not after a time: on a busy machine they still all
    take part. The kill lands after a random number of further operations, so at varying points
    of the writers that did not just report. A writer that fails (rather than being killed) fails the test.
    """
    path = tmp_path / "s.zarr"
    MemoryStore.create(path, chunk_bytes=6 * 4 * 64).append(patterns=torch.zeros(200, 6), labels=torch.zeros(200, dtype=torch.long))
    env = child_env()
    done = {"replace": 0, "append": 0, "compact": 0}
    rng = random.Random(0)
    for turn in range(2):
        errors = {role: tmp_path / f"{role}-{turn}.err" for role in done}
        children = {}
        for role in done:
            with errors[role].open("w") as stderr:
                children[role] = subprocess.Popen([sys.executable, "-c", WRITER, str(path), role], stdout=subprocess.PIPE, stderr=stderr, text=True, env=env)
        lines = _lines(children)
        now = dict.fromkeys(done, 0)
        further = rng.randrange(12)
        limit = time.monotonic() + ROUND_LIMIT
        try:
            while min(now.values()) == 0 or sum(now.values()) < len(now) + further:
                try:
                    role, line = lines.get(timeout=max(0.0, limit - time.monotonic()))
                except queue.Empty:
                    pytest.fail(f"a writer completed no operation in {ROUND_LIMIT} s (operations this round: {now})")
                assert line is not None, f"the {role} writer ended by itself: {errors[role].read_text()}"
                now[role] += line.startswith(f"{role} ")
        finally:
            for child in children.values():
                child.send_signal(signal.SIGKILL)
            for child in children.values():
                child.wait()
        ended = 0
        while ended < len(children):  # what they reported before the kill
            role, line = lines.get(timeout=ROUND_LIMIT)
            ended += line is None
            now[role] += line is not None and line.startswith(f"{role} ")
        for role, child in children.items():
            assert child.returncode == -signal.SIGKILL and "Traceback" not in errors[role].read_text(), f"the {role} writer failed: {errors[role].read_text()}"
            done[role] += now[role]
        _consistent(path)
    assert all(n > 0 for n in done.values()), f"a writer never completed an operation; the test proves nothing: {done}"
    leftovers = [p.name for p in tmp_path.iterdir() if p.name not in ("s.zarr", ".s.zarr.lock") and p.suffix != ".err"]
    MemoryStore.open(path, mode="a").append(patterns=torch.ones(1, 6), labels=torch.ones(1, dtype=torch.long))
    assert [p.name for p in tmp_path.iterdir() if p.name not in ("s.zarr", ".s.zarr.lock") and p.suffix != ".err"] == [], f"the next writer clears {leftovers}"


def test_a_copy_swapped_in_while_a_store_is_opened_is_opened_not_called_damaged(tmp_path, monkeypatch):
    """Another process compacts after an open has read the attributes, before it checks the arrays against them.

    The old attributes publish 60 rows, the arrays on disk by then hold the compacted 30: the
    open must see that the copy changed under it and open the new one, not call the store damaged.
    """
    from amemctl.store import memory

    path = tmp_path / "s.zarr"
    writer = MemoryStore.create(path, chunk_bytes=4 * 4 * 10)
    writer.append(patterns=torch.arange(60.0)[:, None].expand(60, 4).contiguous())
    writer.forget(ids=list(range(30)))
    before = writer.generation
    real, checks = memory.problems, []

    def compacted_meanwhile(*args):
        checks.append(args[2]["count"])
        if len(checks) == 1:  # the first check of the reader's open: the other writer swaps its copy in now
            assert writer.compact() == 30
        return real(*args)

    monkeypatch.setattr(memory, "problems", compacted_meanwhile)
    reader = MemoryStore.open(path)
    assert checks[0] == 60 and writer.generation != before  # the pause came where it was meant to
    assert reader.generation == writer.generation and reader.count == 30
    assert torch.equal(reader.to_tensor()[:, 0], torch.arange(30.0, 60.0))


def test_a_copy_swapped_in_while_a_store_is_verified_is_verified_again_not_reported_damaged(tmp_path, monkeypatch):
    from amemctl.store import verify as verifying

    path = tmp_path / "s.zarr"
    writer = MemoryStore.create(path, chunk_bytes=4 * 4 * 10)
    writer.append(patterns=torch.arange(60.0)[:, None].expand(60, 4).contiguous())
    writer.forget(ids=list(range(30)))
    real, checks = verifying.problems, []

    def compacted_meanwhile(*args):
        checks.append(args[2]["count"])
        if len(checks) == 1:  # verify has opened the store and read its attributes: the other writer swaps its copy in now
            assert writer.compact() == 30
        return real(*args)

    monkeypatch.setattr(verifying, "problems", compacted_meanwhile)
    report = verify(path)
    assert checks == [60, 30] and report.ok, report.problems
    monkeypatch.undo()
    assert report == verify(path)  # the report of the compacted copy, as verifying it alone


def test_an_open_between_the_renames_of_a_swap_opens_the_new_copy(tmp_path, monkeypatch):
    """The store folder is renamed away (a swap's first rename) after an open found it, before it looks for its zarr.json."""
    from pathlib import Path

    from amemctl.store.memory import _aside, _journal

    path = tmp_path / "s.zarr"
    MemoryStore.create(path).append(patterns=torch.zeros(3, 2))
    new = _aside(path, "new")
    MemoryStore._create_at(new).append(patterns=torch.ones(5, 2))
    old = _aside(path, "old")
    real, renamed = Path.is_file, []

    def swapping_meanwhile(self):
        if self == path / "zarr.json" and not renamed:  # a writer begins its swap now, and is killed between the renames
            _journal(path).write_text(json.dumps({"new": new.name, "old": old.name}))
            path.rename(old)
            renamed.append(True)
        return real(self)

    monkeypatch.setattr(Path, "is_file", swapping_meanwhile)
    store = MemoryStore.open(path)
    assert renamed and torch.equal(store.to_tensor(), torch.ones(5, 2))


def test_a_reader_of_a_store_replaced_by_one_of_another_storage_is_told_so_not_that_it_is_damaged(tmp_path):
    path = tmp_path / "m.zarr"
    MemoryStore.write_new(path, lambda s: s.append(patterns=torch.zeros(8, 4)))
    reader = MemoryStore.open(path)  # patterns not read yet: its zarr.json is read at the first read
    MemoryStore.write_new(path, lambda s: s.append(patterns=torch.ones(8, 4), storage={"patterns": "float16"}), replace=True)
    with pytest.raises(StoreError, match="replaced while it was being read") as refused:
        reader.read("patterns")
    assert not isinstance(refused.value, DamagedStore)
    assert MemoryStore.open(path).storage("patterns") == "float16"


def test_a_store_path_must_be_a_store_root_outside_other_stores(tmp_path, run_text, monkeypatch):
    path = tmp_path / "x.zarr"
    MemoryStore.create(path).append(patterns=torch.rand(5, 3))
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    for bad in (path / "patterns", path / "sub" / "y.zarr"):
        with pytest.raises(AmemctlError, match="lies inside the store"):
            run_text(f"data: {{dataset: digits, limit: 10}}\nstages:\n  - persist: {{store: {bad}, mode: replace}}\n")
        with pytest.raises(StoreError, match="lies inside the store"):
            MemoryStore.create(bad)
    monkeypatch.chdir(tmp_path)
    for bad in (".", "x.zarr/..", ""):
        with pytest.raises(StoreError, match="cannot be a store path"):
            MemoryStore.write_new(bad, lambda s: None, replace=True)
    from tests.conftest import error_of

    assert "cannot be a store path" in error_of("data: {dataset: digits, limit: 10}\nstages:\n  - persist: {store: ., mode: replace}\n")
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before
    assert len(MemoryStore.open(path)) == 5


def _store(tmp_path, **options):
    path = tmp_path / "s.zarr"
    MemoryStore.create(path, chunk_bytes=4 * 4 * 10, **options).append(patterns=torch.rand(40, 4) + 0.5, labels=torch.zeros(40, dtype=torch.long))
    return path


def test_a_missing_chunk_is_refused_not_read_as_zeros(tmp_path):
    path = _store(tmp_path)
    (path / "patterns" / "c" / "2" / "0").unlink()
    with pytest.raises(StoreError, match=r"damaged: patterns chunk 2 \(rows 20..29, file patterns/c/2/0\) is missing(.|\n)*store verify"):
        MemoryStore.open(path)
    assert any("patterns chunk 2 (rows 20..29, file patterns/c/2/0) is missing" in p for p in verify(path).problems)


def test_an_all_zero_chunk_is_kept_so_it_is_not_mistaken_for_damage(tmp_path):
    path = tmp_path / "s.zarr"
    store = MemoryStore.create(path, chunk_bytes=4 * 4 * 10)
    store.append(patterns=torch.zeros(40, 4), labels=torch.zeros(40, dtype=torch.long))
    store.forget(ids=list(range(10)))
    assert verify(path).ok and len(MemoryStore.open(path)) == 30


def test_a_zero_byte_or_bad_chunk_is_a_clear_error(tmp_path, run_text):
    path = _store(tmp_path, compression="none", checksum=False)
    chunk = path / "patterns" / "c" / "1" / "0"
    chunk.write_bytes(chunk.read_bytes()[:-8])
    with pytest.raises(StoreError, match=r"file patterns/c/1/0\) is truncated \(152 bytes, expected 160\)"):
        MemoryStore.open(path)
    chunk.write_bytes(b"")
    assert any("patterns/c/1/0) is truncated (0 bytes" in p for p in verify(path).problems)
    # damage after opening (a flipped byte under a checksum): the read fails with a StoreError
    path = _store(tmp_path / "b")
    store = MemoryStore.open(path)
    chunk = path / "patterns" / "c" / "3" / "0"
    data = bytearray(chunk.read_bytes())
    data[len(data) // 2] ^= 0xFF
    chunk.write_bytes(bytes(data))
    with pytest.raises(StoreError, match="cannot read rows 0..39 of patterns(.|\n)*store verify"):
        store.read("patterns")
    read = f"stages:\n  - open_store: {{store: {path}}}\n  - corrupt: {{kind: gaussian, variance: 0.01, count: 5}}\n  - score: {{}}\n  - separate: {{function: max}}\n  - project: {{}}\n  - evaluate: {{}}\n"
    with pytest.raises(StoreError, match="of patterns in"):
        run_text(read)


def test_metadata_that_disagrees_with_the_data_is_refused(tmp_path):
    path = _store(tmp_path)
    store = MemoryStore.open(path, mode="a")
    attrs = store.attrs
    attrs["arrays"]["patterns"]["storage"] = "uint8"
    store._publish(attrs)
    with pytest.raises(StoreError, match="patterns: the attributes say uint8 \\(zarr uint8\\) but the array holds float32"):
        MemoryStore.open(path)
    attrs["arrays"]["patterns"]["storage"] = "float32"
    attrs["count"] = 1210
    store._publish(attrs)
    with pytest.raises(StoreError, match="patterns has 40 rows but the store publishes 1210"):
        MemoryStore.open(path)
    assert not verify(path).ok


def test_verify_reports_nan_and_inf_rows(tmp_path):
    x = torch.rand(30, 4)
    x[7, 1] = float("nan")
    x[12, 0] = float("inf")
    x[20, 2] = float("nan")
    path = tmp_path / "s.zarr"
    store = MemoryStore.create(path, chunk_bytes=4 * 4 * 10)
    store.append(patterns=x, storage={"patterns": "float16"})
    store.forget(ids=[20])
    report = verify(path)
    assert report.problems == ["patterns: 2 row(s) hold NaN or inf (ids 7, 12); forget them with `amemctl store forget --ids ...`"]


def test_a_refused_write_is_a_store_error(tmp_path, monkeypatch):
    path = _store(tmp_path)
    store = MemoryStore.open(path, mode="a")

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied", str(path / "alive" / "c" / "0"))

    monkeypatch.setattr(MemoryStore, "_publish", refuse)
    with pytest.raises(StoreError, match="cannot write to the store .*Permission denied"):
        store.forget(ids=[1])


def test_store_ls_lists_neither_temporary_nor_discarded_copies(tmp_path):
    from click.testing import CliRunner

    from amemctl.cli import main
    from amemctl.store.memory import _aside

    path = _store(tmp_path)
    MemoryStore._create_at(_aside(path, "old")).append(patterns=torch.rand(3, 4))  # a kill before the old copy was deleted
    (path / "labels" / "c" / "0").unlink()
    (tmp_path / "t.zarr").mkdir()
    result = CliRunner().invoke(main, ["store", "ls", str(tmp_path)])
    assert result.exit_code == 0
    assert "old" not in result.output and "s.zarr" in result.output and "damaged" in result.output


def test_a_reader_refuses_to_go_on_once_the_store_is_replaced_under_it(tmp_path):
    """Chunk files are read by path: after another writer swaps a new copy in, reading on would mix two stores."""
    path = tmp_path / "m.zarr"
    old = torch.zeros(64, 8)
    MemoryStore.write_new(path, lambda s: s.append(patterns=old), chunk_bytes=8 * 4 * 8, compression="none")  # 8 chunks of 8 rows
    reader = MemoryStore.open(path)
    assert reader.generation is not None
    chunks = reader.rows("patterns", prefetch=0).chunks(8)
    offset, first = next(chunks)
    assert offset == 0 and torch.equal(first, old[:8])
    MemoryStore.write_new(path, lambda s: s.append(patterns=torch.ones(64, 8)), replace=True, chunk_bytes=8 * 4 * 8, compression="none")
    with pytest.raises(StoreError, match="replaced while it was being read"):
        for _ in chunks:
            pass
    again = MemoryStore.open(path)  # a new read sees the new copy whole
    assert torch.equal(again.to_tensor(), torch.ones(64, 8)) and again.generation != reader.generation
    # appends keep the copy: a reader goes on across another writer's append
    reader = MemoryStore.open(path)
    MemoryStore.open(path, mode="a").append(patterns=torch.ones(8, 8))
    assert len(reader.read("patterns")) == 64


def test_a_store_opened_to_append_also_refuses_a_copy_swapped_in_under_its_reads(tmp_path):
    path = tmp_path / "m.zarr"
    MemoryStore.write_new(path, lambda s: s.append(patterns=torch.zeros(64, 8)), chunk_bytes=8 * 4 * 8, compression="none")
    appender = MemoryStore.open(path, mode="a")
    chunks = appender.rows("patterns", prefetch=0).chunks(8)
    next(chunks)
    MemoryStore.write_new(path, lambda s: s.append(patterns=torch.ones(64, 8)), replace=True, chunk_bytes=8 * 4 * 8, compression="none")
    with pytest.raises(StoreError, match="replaced while it was being read"):
        list(chunks)


def test_rows_taken_before_a_compaction_by_the_same_store_are_refused_after_it(tmp_path):
    path = tmp_path / "m.zarr"
    MemoryStore.write_new(path, lambda s: s.append(patterns=torch.arange(16.0)[:, None].expand(16, 4).contiguous()), chunk_bytes=4 * 4 * 4)
    store = MemoryStore.open(path, mode="a")
    store.forget(ids=list(range(0, 16, 2)))
    rows = store.rows("patterns", prefetch=0)
    store.compact()  # physical row numbers move: the rows' own numbering is the old copy's
    with pytest.raises(StoreError, match="compacted or rewritten after these rows were taken"):
        list(rows.chunks(4))
    assert store.rows("patterns").to_tensor()[:, 0].tolist() == [float(i) for i in range(1, 16, 2)]


def test_replacing_a_key_space_stops_readers_of_the_old_keys(tmp_path):
    path = tmp_path / "m.zarr"
    store = MemoryStore.create(path, chunk_bytes=8 * 4 * 8, compression="none")
    store.append(patterns=torch.zeros(64, 8))
    identity = {"arch": "test"}
    store.add_space("phi", torch.zeros(64, 8), identity)
    reader = MemoryStore.open(path)
    chunks = reader.rows("keys/phi", prefetch=0).chunks(8)
    next(chunks)
    store.add_space("phi", torch.ones(64, 8), {"arch": "other"})
    with pytest.raises(StoreError, match="replaced while it was being read"):
        list(chunks)
