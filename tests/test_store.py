"""Memory stores: round trips, append, forget and compact, crashes, locking, verification, streaming."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from amemctl.core.retrieval import recall
from amemctl.errors import StoreError
from amemctl.store.lock import WriterLock, lock_path
from amemctl.store.memory import MemoryStore, is_store
from amemctl.store.verify import verify
from tests.conftest import child_env


def _images(n=100, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, 4, 4), generator=g).float() / 255


@pytest.mark.parametrize(
    "storage,make",
    [
        ("float32", lambda: torch.randn(50, 7)),
        ("float16", lambda: torch.randn(50, 7).half().float()),
        ("bfloat16", lambda: torch.randn(50, 7).bfloat16().float()),
        ("uint8", lambda: _images(50)),
    ],
)
def test_what_was_stored_comes_back_exactly(tmp_path, storage, make):
    x = make()
    store = MemoryStore.create(tmp_path / "s.zarr")
    store.append(patterns=x, labels=torch.arange(len(x)), storage={"patterns": storage})
    again = MemoryStore.open(tmp_path / "s.zarr")
    assert again.storage("patterns") == storage
    assert torch.equal(again.to_tensor("patterns"), x)
    assert torch.equal(again.to_tensor("labels"), torch.arange(len(x)))


def test_uint8_refuses_what_it_would_change(tmp_path):
    store = MemoryStore.create(tmp_path / "s.zarr")
    with pytest.raises(StoreError, match="not 8-bit images.*\n.*float16"):
        store.append(patterns=torch.full((3, 4), 1 / 16), storage={"patterns": "uint8"})


def test_appends_keep_ids_and_check_shapes(tmp_path):
    store = MemoryStore.create(tmp_path / "s.zarr", chunk_bytes=1024)
    first = store.append(patterns=_images(30), labels=torch.zeros(30, dtype=torch.long))
    second = store.append(patterns=_images(20, seed=1), labels=torch.ones(20, dtype=torch.long))
    assert first.tolist() == list(range(30)) and second.tolist() == list(range(30, 50))
    assert len(MemoryStore.open(tmp_path / "s.zarr")) == 50
    with pytest.raises(StoreError, match=r"patterns rows are shaped \(3, 4, 4\).*got \(3, 5, 5\)"):
        store.append(patterns=torch.rand(2, 3, 5, 5), labels=torch.zeros(2, dtype=torch.long))
    with pytest.raises(StoreError, match="missing labels"):
        store.append(patterns=_images(2))
    provenance = MemoryStore.open(tmp_path / "s.zarr").attrs["provenance"]
    assert [p["rows"] for p in provenance] == [[0, 30], [30, 50]]


def test_arrays_are_checked_once_per_read_and_again_after_a_write(tmp_path, monkeypatch):
    """Streaming reads ask for an array per chunk; its zarr.json is checked once, and again after a write."""
    from amemctl.store import memory

    opened = []
    real = memory.open_array
    monkeypatch.setattr(memory, "open_array", lambda path, group, name, *a: opened.append(name) or real(path, group, name, *a))
    store = MemoryStore.create(tmp_path / "s.zarr", chunk_bytes=256)
    store.append(patterns=_images(40), labels=torch.zeros(40, dtype=torch.long))
    opened.clear()
    chunks = [block for _, block in store.iter_chunks("patterns")]
    assert len(chunks) > 3 and opened.count("patterns") == 1
    store.append(patterns=_images(10, seed=1), labels=torch.ones(10, dtype=torch.long))
    assert torch.equal(store.read("patterns")[40:], _images(10, seed=1))  # the grown array, not the one kept before
    assert torch.equal(store.to_tensor("labels"), torch.tensor([0] * 40 + [1] * 10))
    assert opened.count("patterns") == 2


def test_forget_then_compact(tmp_path, monkeypatch):
    path = tmp_path / "s.zarr"
    store = MemoryStore.create(path, chunk_bytes=512)
    x = _images(60)
    store.append(patterns=x, labels=torch.arange(60) % 3)
    assert store.forget(ids=[4, 5]) == 2
    assert store.forget(where=lambda labels: labels == 2) == 20 - (1 if 5 % 3 == 2 else 0)
    reader = MemoryStore.open(path)
    live = reader.ids()
    assert 4 not in live and 5 not in live and all(int(i) % 3 != 2 for i in live)
    # a forgotten row is never retrieved, even by its exact copy
    result = recall(x[4:5], reader.rows("patterns"), similarity="euclidean", separation="max")
    assert int(live[result.index]) != 4
    read = []
    load = MemoryStore._load
    monkeypatch.setattr(MemoryStore, "_load", lambda self, name, *a: read.append((name, len(data := load(self, name, *a)))) or data)
    dropped = store.compact()
    monkeypatch.undo()
    rows = store._array("patterns").chunks[0]
    copied = [n for name, n in read if name != "alive"]  # the alive mask (a byte a row) is read whole
    assert len(copied) > 3 and max(copied) <= rows < len(live), "compaction reads a chunk's worth of rows at a time, never a whole array"
    compacted = MemoryStore.open(path)
    assert dropped == 60 - len(live) and compacted.count == len(live)
    assert torch.equal(compacted.ids(), live)
    assert torch.equal(compacted.to_tensor("patterns"), x[live])
    assert verify(path).ok
    with pytest.raises(StoreError, match="no rows with ids 999"):
        store.forget(ids=[999])


def test_a_stores_content_id_changes_with_its_rows_not_with_its_key_spaces(tmp_path):
    """What a resumed run compares (engine.files): every change of the rows a run read changes it; a key space
    that `embed` adds to the store it reads does not."""
    path = tmp_path / "s.zarr"
    store = MemoryStore.create(path, chunk_bytes=512)
    store.append(patterns=_images(10), labels=torch.arange(10))

    def now():
        return MemoryStore.open(path).content_id()

    seen = [now()]
    store.append(patterns=_images(5, seed=1), labels=torch.arange(5))
    seen.append(now())
    store.forget(ids=[0])
    seen.append(now())
    store.compact()
    seen.append(now())
    assert seen[-1]["rows"] == seen[-1]["alive"] == seen[-2]["alive"] == 14
    store.add_space("pca", torch.rand(14, 2), {"encoder": "pca"})
    store.add_space("pca", torch.rand(14, 2), {"encoder": "pca", "seed": 1})  # rewritten in place: a new generation
    assert now() == seen[-1]
    MemoryStore.write_new(path, lambda new: new.append(patterns=_images(14, seed=2), labels=torch.arange(14)), replace=True)
    seen.append(now())
    assert seen[-1]["rows"] == 14 and len({json.dumps(s, sort_keys=True) for s in seen}) == len(seen) == 5


def test_streaming_matches_memory_with_tiny_chunks(tmp_path):
    x = torch.rand(500, 12)
    values = torch.rand(500, 3)
    store = MemoryStore.create(tmp_path / "s.zarr", chunk_bytes=12 * 4 * 7)  # 7 rows a chunk
    store.append(patterns=x, values=values)
    store.forget(ids=list(range(0, 500, 9)))
    reader = MemoryStore.open(tmp_path / "s.zarr")
    assert reader.chunk_rows("patterns") == 7
    chunks = list(reader.iter_chunks("patterns", prefetch=2))
    assert all(len(c) <= 7 for _, c in chunks)
    assert [o for o, _ in chunks] == list(np.cumsum([0] + [len(c) for _, c in chunks[:-1]]))
    live = reader.live_rows()
    assert torch.equal(torch.cat([c for _, c in chunks]), x[live])
    q = torch.rand(20, 12)
    for separation in ("softmax", "max", "topk"):
        streamed = recall(q, reader.rows("patterns"), reader.rows("values"), similarity="manhattan", separation=separation, budget=20 * 16 * 16)
        direct = recall(q, x[live], values[live], similarity="manhattan", separation=separation)
        torch.testing.assert_close(streamed.output, direct.output)
        assert torch.equal(streamed.index, direct.index)


CHILD = """
import signal, sys, torch, zarr.storage
from amemctl.store.memory import MemoryStore
store = MemoryStore.open(sys.argv[1], mode="a")
big = torch.rand(int(sys.argv[2]), 3, 32, 32)
real = zarr.storage.LocalStore.set

async def set(self, key, value, *args, **kwargs):  # the writer stops for good once a chunk of new rows is on disk
    await real(self, key, value, *args, **kwargs)
    if key.startswith("patterns/c/") and int(key.split("/")[2]) >= int(sys.argv[3]):
        print("wrote", key, flush=True)
        signal.pause()  # holds zarr's writing thread: no further chunk, no count, until the kill

zarr.storage.LocalStore.set = set
print("appending", flush=True)
store.append(patterns=big, labels=torch.zeros(len(big), dtype=torch.long))
print("done", flush=True)
"""


def test_a_writer_killed_mid_append_leaves_the_previous_store(tmp_path):
    """The writer is killed while it holds the lock, with chunks of its rows written and their count not yet published."""
    path = tmp_path / "s.zarr"
    before = torch.rand(40, 3, 32, 32)
    store = MemoryStore.create(path, chunk_bytes=64 * 1024)  # 5 images a chunk: 8 chunks hold the first 40 rows
    store.append(patterns=before, labels=torch.zeros(40, dtype=torch.long))
    script = tmp_path / "child.py"
    script.write_text(textwrap.dedent(CHILD))
    env = child_env()
    child = subprocess.Popen([sys.executable, str(script), str(path), "200", "8"], stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert child.stdout.readline().strip() == "appending"
        assert child.stdout.readline().startswith("wrote patterns/c/")  # it has written new rows and stopped
    finally:
        child.send_signal(signal.SIGKILL)
        rest = child.stdout.read()
        child.wait()
    assert "done" not in rest, "the writer finished before it was killed; the test proves nothing"
    chunks = path / "patterns" / "c"
    assert len(list(chunks.iterdir())) > 8, "the writer was killed before it wrote new rows"
    assert MemoryStore.open(path).group["patterns"].shape[0] == 240, "the arrays had grown for the append"
    after = MemoryStore.open(path)
    assert after.count == 40 and len(after) == 40
    assert torch.equal(after.to_tensor("patterns"), before)
    assert verify(path).ok
    # the kernel released the dead writer's lock, and the next append succeeds
    assert lock_path(path).exists()
    MemoryStore.open(path, mode="a").append(patterns=torch.rand(5, 3, 32, 32), labels=torch.ones(5, dtype=torch.long))
    assert len(MemoryStore.open(path)) == 45


HOLDER = """
import signal, sys
from amemctl.store.lock import WriterLock
with WriterLock(sys.argv[1]):
    print("holding", flush=True)
    signal.pause()  # until killed
"""


def test_one_writer_at_a_time(tmp_path):
    path = tmp_path / "s.zarr"
    MemoryStore.create(path)
    env = child_env()
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(path)], stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert holder.stdout.readline().strip() == "holding"
        with pytest.raises(StoreError, match=f"being written by another process: pid {holder.pid} on .*\n.*AMEMCTL_LOCK_WAIT"):
            with WriterLock(path, wait=0.2):
                pass
    finally:
        holder.kill()
        holder.wait()
    with WriterLock(path, wait=60) as outer:  # the kernel released the killed holder's lock (60 s: only a safety net)
        with WriterLock(path) as inner:  # reentrant within one thread
            assert outer.outermost and not inner.outermost
    MemoryStore.open(path, mode="a").append(patterns=torch.rand(2, 3))
    assert len(MemoryStore.open(path)) == 2


def test_verify_finds_a_damaged_chunk(tmp_path):
    path = tmp_path / "s.zarr"
    MemoryStore.create(path, chunk_bytes=3 * 4 * 4 * 4 * 10).append(patterns=_images(50), labels=torch.zeros(50, dtype=torch.long))
    assert verify(path).ok and verify(path).chunks_checked == 4 * 5
    chunk = path / "patterns" / "c" / "2" / "0" / "0" / "0"
    data = bytearray(chunk.read_bytes())
    data[len(data) // 2] ^= 0xFF
    chunk.write_bytes(bytes(data))
    report = verify(path)
    assert not report.ok
    assert any("patterns chunk 2 (rows 20..29, file patterns/c/2/0/0/0) does not decode" in p for p in report.problems)


def test_opening_what_is_not_a_usable_store(tmp_path):
    with pytest.raises(StoreError, match="no store at"):
        MemoryStore.open(tmp_path / "missing.zarr")
    (tmp_path / "plain").mkdir()
    with pytest.raises(StoreError, match="not a zarr v3 store"):
        MemoryStore.open(tmp_path / "plain")
    import zarr

    zarr.create_group(store=str(tmp_path / "foreign.zarr"), zarr_format=3)
    with pytest.raises(StoreError, match="not an amemctl store"):
        MemoryStore.open(tmp_path / "foreign.zarr")
    assert not is_store(tmp_path / "foreign.zarr")
    zarr.create_group(store=str(tmp_path / "schemaless.zarr"), zarr_format=3, attributes={"amemctl": {"count": 0}})
    assert is_store(tmp_path / "schemaless.zarr")  # so replace may write over it: then open must call it ours too
    with pytest.raises(StoreError, match=r"attributes of .*schemaless.zarr.* are damaged: schema is 'missing'"):
        MemoryStore.open(tmp_path / "schemaless.zarr")
    path = tmp_path / "future.zarr"
    store = MemoryStore.create(path)
    attrs = store.attrs
    attrs["schema"] = 99
    store._publish(attrs)
    before = (path / "zarr.json").read_bytes()
    with pytest.raises(StoreError, match="schema 99, newer than this amemctl understands"):
        MemoryStore.open(path, mode="a")
    assert (path / "zarr.json").read_bytes() == before


def test_keys_made_by_another_encoder_are_refused(tmp_path):
    store = MemoryStore.create(tmp_path / "s.zarr")
    identity = {"architecture": "resnet18", "weights_sha256": "abc", "preprocessing": "cifar"}
    store.append(patterns=torch.rand(4, 3), keys={"resnet18": torch.rand(4, 8)}, identities={"resnet18": identity})
    store.check_space("resnet18", identity)
    with pytest.raises(StoreError, match="made by another encoder \\(weights_sha256: store 'abc', pipeline 'def'\\)"):
        store.check_space("resnet18", {**identity, "weights_sha256": "def"})
    store.add_space("pca", torch.rand(4, 2), {"encoder": "pca"})
    assert set(MemoryStore.open(tmp_path / "s.zarr").spaces) == {"resnet18", "pca"}


def test_pipelines_persist_and_reopen_a_store(tmp_path, run_text):
    path = tmp_path / "digits.zarr"
    write = f"data: {{dataset: digits, limit: 200}}\nstages:\n  - persist: {{store: {path}, dtype: float16}}\n"
    assert run_text(write).points[0].metrics["persisted"] == 200
    with pytest.raises(StoreError, match="already exists"):
        run_text(write)
    read = f"""\
stages:
  - open_store: {{store: {path}}}
  - corrupt: {{kind: gaussian, variance: 0.01, count: 50}}
  - score: {{similarity: manhattan}}
  - separate: {{function: max}}
  - project: {{}}
  - evaluate: {{}}
"""
    metrics = run_text(read).points[0].metrics
    assert metrics["stored"] == 200 and metrics["error_index"] < 0.1


def test_replace_keeps_the_old_store_until_the_new_one_is_written(tmp_path, run_text):
    path = tmp_path / "s.zarr"
    run_text(f"data: {{dataset: digits, limit: 10}}\nstages:\n  - persist: {{store: {path}}}\n")
    bad = f"data: {{dataset: digits, limit: 10}}\nstages:\n  - persist: {{store: {path}, mode: replace, dtype: uint8}}\n"
    with pytest.raises(StoreError, match="not 8-bit images"):
        run_text(bad)
    assert len(MemoryStore.open(path)) == 10 and sorted(p.name for p in tmp_path.iterdir() if "zarr" in p.name) == [".s.zarr.lock", "s.zarr"]


@pytest.mark.parametrize("mode,rows", [("create", 10), ("replace", 10), ("append", 20)])
def test_a_persist_tidies_once_and_still_clears_what_a_killed_writer_left(tmp_path, run_text, monkeypatch, mode, rows):
    """Persist holds the lock and appends or writes a new copy under it: one tidy, at the outermost hold."""
    from amemctl.store import memory

    path = tmp_path / "s.zarr"
    persist = f"data: {{dataset: digits, limit: 10}}\nstages:\n  - persist: {{store: {path}, mode: {mode}}}\n"
    if mode != "create":
        run_text(persist)
    leftover = memory._aside(path, "new")  # a writer killed while writing a new copy
    MemoryStore._create_at(leftover).append(patterns=torch.rand(3, 4))
    tidied = []
    real = memory.tidy
    monkeypatch.setattr(memory, "tidy", lambda p: (tidied.append(p), real(p)))
    run_text(persist)
    assert tidied == [path]
    assert not leftover.exists() and len(MemoryStore.open(path)) == rows


def test_a_swap_interrupted_between_its_renames_is_finished_on_open(tmp_path):
    from amemctl.store.memory import _aside, _journal, swap_in

    path = tmp_path / "s.zarr"
    MemoryStore.create(path).append(patterns=torch.zeros(3, 2))
    new = _aside(path, "new")
    MemoryStore._create_at(new).append(patterns=torch.ones(5, 2))
    old = _aside(path, "old")
    _journal(path).write_text(json.dumps({"new": new.name, "old": old.name}))
    path.rename(old)  # the first rename happened, the second did not
    recovered = MemoryStore.open(path)
    assert torch.equal(recovered.to_tensor(), torch.ones(5, 2))
    assert sorted(p.name for p in tmp_path.iterdir() if "zarr" in p.name) == [".s.zarr.lock", "s.zarr"]
    # a kill while the old copy was being deleted leaves no folder that looks like a store
    new = _aside(path, "new")
    MemoryStore._create_at(new).append(patterns=torch.full((2, 2), 2.0))
    deleted = []
    import shutil

    real = shutil.rmtree
    shutil.rmtree = lambda p, **kw: deleted.append(p)  # the kill came before the deletion
    try:
        swap_in(path, new)
    finally:
        shutil.rmtree = real
    leftovers = [p for p in tmp_path.iterdir() if p.name.startswith(".s.zarr.old-")]
    assert len(leftovers) == 1 and not (leftovers[0] / "zarr.json").exists()
    MemoryStore.open(path, mode="a").forget(ids=[0])  # the next writer clears it
    assert not leftovers[0].exists()


@pytest.mark.parametrize("route", ["cpu", "general"])
def test_hetero_retrieval_from_a_store_whose_key_and_value_chunks_differ(tmp_path, route):
    """Keys in memory chunk by the block, values from a store by whole storage chunks: each value row must still pair with its key."""
    from amemctl import recall
    from amemctl.core.separation import Softmax

    g = torch.Generator().manual_seed(2)
    keys, values = torch.rand(3000, 4, generator=g), torch.rand(3000, 64, generator=g)
    store = MemoryStore.create(tmp_path / "h.zarr", chunk_bytes=4 * 64 * 37)  # storage chunks of 37 rows
    store.append(patterns=keys, values=values)
    queries = torch.rand(9, 4, generator=g)
    options = {"similarity": "euclidean", "separation": Softmax(beta=20.0), "budget": 64 * 1024, "normalize_scores": route == "general"}
    expected = recall(queries, keys, values, **options).output
    torch.testing.assert_close(recall(queries, store.rows("patterns"), store.rows("values"), **options).output, expected)
    torch.testing.assert_close(recall(queries, keys, store.rows("values"), **options).output, expected)
