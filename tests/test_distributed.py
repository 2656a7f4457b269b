"""Retrieval split across torch.distributed ranks (gloo on CPU) equals retrieval in one process."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from click.testing import CliRunner

from amemctl import launch
from amemctl.core.distributed import shard_range
from amemctl.core.retrieval import recall
from amemctl.core.separation import make_separation
from amemctl.store.memory import MemoryStore
from tests.test_runs import SWEEP as RUNS_SWEEP

ROOT = Path(__file__).resolve().parent.parent
CASES = [("softmax", {"beta": 5.0}), ("topk", {"k": 3}), ("max", {}), ("identity", {}), ("polynomial", {"n": 3})]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _memory(path):
    g = torch.Generator().manual_seed(0)
    keys, values, queries = torch.rand(1001, 12, generator=g), torch.rand(1001, 5, generator=g), torch.rand(37, 12, generator=g)
    store = MemoryStore.create(path, chunk_bytes=12 * 4 * 64)  # 64 rows a chunk: 16 chunks
    store.append(patterns=keys, values=values)
    store.forget(ids=list(range(0, 1001, 97)))  # shards must skip forgotten rows too
    return queries


def _leave() -> None:
    """Leave the group and exit as a finished `--nproc` rank does (launch.exit_worker says why)."""
    launch.stop_worker(finished=True)
    launch.exit_worker()


def _worker(rank: int, world: int, port: int, path: str, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    from amemctl.core.distributed import sharded_recall

    store = MemoryStore.open(path)
    queries = torch.load(out + ".queries", weights_only=True)
    results = {}
    for name, params in CASES:
        for hetero in (False, True):
            r = sharded_recall(queries, store.rows("patterns"), store.rows("values") if hetero else None, similarity="manhattan",
                               separation=make_separation(name, **params), budget=37 * 16 * 40)
            results[(name, hetero)] = (r.output, r.index)
    if rank == 0:
        torch.save(results, out)
    _leave()


@pytest.mark.parametrize("world", [2, 3])
def test_ranks_merge_to_the_single_process_answer(tmp_path, world):
    path = tmp_path / "m.zarr"
    queries = _memory(path)
    out = str(tmp_path / "out.pt")
    torch.save(queries, out + ".queries")
    mp.spawn(_worker, args=(world, _free_port(), str(path), out), nprocs=world)
    results = torch.load(out, weights_only=True)
    store = MemoryStore.open(path)
    keys, values = store.to_tensor("patterns"), store.to_tensor("values")
    for (name, hetero), (output, index) in results.items():
        expected = recall(queries, keys, values if hetero else None, similarity="manhattan", separation=make_separation(name, **dict(CASES)[name]))
        torch.testing.assert_close(output, expected.output, rtol=1e-5, atol=1e-5)
        assert torch.equal(index, expected.index), (name, hetero)


def test_shards_cover_the_rows_once():
    for rows in (0, 1, 7, 1000):
        for world in (1, 2, 3, 8):
            ranges = [shard_range(rows, r, world) for r in range(world)]
            assert ranges[0][0] == 0 and ranges[-1][1] == rows
            assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:]))
            assert max(b - a for a, b in ranges) - min(b - a for a, b in ranges) <= 1


PIPELINE = """\
name: dist
sweep:
  separation: [{function: softmax, beta: 50}, {function: topk, k: 3}]
  association: [{name: auto, values: patterns}, {name: hetero, values: successors}]
stages:
  - open_store: {store: STORE}
  - associate: {mode: shift}
  - corrupt: {kind: gaussian, variance: 0.05, count: 64}
  - score: {similarity: manhattan}
  - separate: ${separation}
  - project: {values: "${association.values}"}
  - persist: {store: "OUT/${association.name}-${separation.function}.zarr", patterns: retrieved, labels: null}
"""


def test_nproc_runs_the_same_pipeline_on_two_ranks(tmp_path):
    from amemctl.cli import main

    store = tmp_path / "memory.zarr"
    MemoryStore.create(store, chunk_bytes=64 * 4 * 50).append(patterns=torch.rand(600, 1, 8, 8), labels=torch.arange(600))
    outputs = {}
    for nproc in (1, 2):
        (tmp_path / f"out{nproc}").mkdir()
        path = tmp_path / f"p{nproc}.yaml"
        path.write_text(PIPELINE.replace("STORE", str(store)).replace("OUT", str(tmp_path / f"out{nproc}")))
        result = CliRunner().invoke(main, ["run", str(path), "--nproc", str(nproc), "--quiet", "--out", str(tmp_path / "runs"), "--device", "cpu"])
        assert result.exit_code == 0, result.output
        outputs[nproc] = {p.name: MemoryStore.open(p).to_tensor() for p in sorted((tmp_path / f"out{nproc}").glob("*.zarr"))}
    assert set(outputs[1]) == set(outputs[2]) and len(outputs[1]) == 4
    commands = sorted(json.loads(r.read_text())["command"] for r in (tmp_path / "runs" / "dist").glob("*/run.json"))
    assert [c[-2:] == ["--nproc", "2"] for c in commands] == [False, True] and "--nproc" not in commands[0], commands  # run.json: the command that repeats the run
    for name in outputs[1]:
        torch.testing.assert_close(outputs[2][name], outputs[1][name], rtol=1e-5, atol=1e-5)


def test_a_failing_rank_fails_the_run_and_names_itself(tmp_path, capfd):
    import subprocess

    path = tmp_path / "bad.yaml"
    path.write_text("data: {dataset: digits, limit: 20}\nstages:\n  - corrupt: {count: 50}\n  - persist: {store: " + str(tmp_path / "never.zarr") + "}\n")
    proc = subprocess.run([sys.executable, "-m", "amemctl", "run", str(path), "--nproc", "2", "--quiet", "--out", str(tmp_path / "runs")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "(rank 0) stage 'corrupt' failed" in proc.stderr or "(rank 1) stage 'corrupt' failed" in proc.stderr
    assert "the distributed run failed: rank" in proc.stderr
    assert not (tmp_path / "never.zarr").exists()


#: test_runs' sweep, long enough (16 points of 600 digits) to be signalled halfway
SWEEP = RUNS_SWEEP.replace("limit: 200", "limit: 600").replace("[1, 10, 100, 1000]", "[1, 3, 10, 30, 100, 300, 1000, 3000]").replace("  - report: {count: 3}\n", "")


def _first_point(runs: Path, child: subprocess.Popen, timeout: float = 180) -> None:
    """Wait until rank 0 has saved a point (or the launcher ended): no fixed sleep racing the run."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and child.poll() is None and not list(runs.glob("small/*/points/*.pt")):
        time.sleep(0.05)


@pytest.mark.parametrize("signum, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_an_interrupted_nproc_run_is_recorded_interrupted_and_resumes(tmp_path, signum, code):
    """Ctrl-C or SIGTERM reaches the launcher alone (torch starts each rank in a session of its own);
    it passes the signal on, rank 0 records the run interrupted and the command exits as a
    one-process run does: 128 + the signal, one line saying how to resume, no traceback."""
    from click.testing import CliRunner

    from amemctl.cli import main
    from amemctl.engine.records import read_record

    (tmp_path / "small.yaml").write_text(SWEEP)
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    command = [sys.executable, "-m", "amemctl", "run", "small.yaml", "--nproc", "2", "--quiet", "--device", "cpu", "--out", "runs"]
    with open(tmp_path / "stdout", "w") as stdout, open(tmp_path / "stderr", "w") as stderr:
        child = subprocess.Popen(command, env=env, cwd=tmp_path, stdout=stdout, stderr=stderr)
        _first_point(tmp_path / "runs", child)
        child.send_signal(signum)
        child.wait(timeout=120)
    out, err = (tmp_path / "stdout").read_text(), (tmp_path / "stderr").read_text()
    (run_dir,) = (tmp_path / "runs" / "small").iterdir()
    record = read_record(run_dir)
    assert record["points_done"] < 16, "the run finished before it was signalled: make the sweep longer"
    assert child.returncode == code, out + err
    assert f"of 16 points; continue it with `amemctl run --resume runs/small/{run_dir.name}`" in out, out + err
    assert "Traceback" not in out + err and "the distributed run failed" not in err, out + err
    assert record["status"] == "interrupted" and record["error"]["type"] == "Interrupted", record
    done = record["points_done"]
    resumed = CliRunner().invoke(main, ["run", "--resume", str(run_dir), "--quiet"])
    assert resumed.exit_code == 0, resumed.output
    record = read_record(run_dir)
    assert record["status"] == "finished" and record["points_done"] == 16 and record["points_reused"] == done
    assert record["attempts"][0]["status"] == "interrupted"


def test_ranks_stopped_by_a_signal_are_an_interruption_and_a_failed_rank_a_failure():
    """The launcher's verdict when the ranks alone were signalled (a scheduler signalling every process but it)."""
    failures = lambda *codes: {rank: SimpleNamespace(exitcode=code) for rank, code in enumerate(codes)}
    assert launch.stopped_by(failures(143, -15)) == signal.SIGTERM
    assert launch.stopped_by(failures(130)) == signal.SIGINT
    assert launch.stopped_by(failures(-2, 143)) == signal.SIGINT  # the lowest rank's signal
    assert launch.stopped_by(failures(2, 143)) is None  # rank 0 failed; the launcher then stopped rank 1
    assert launch.stopped_by(failures(143, 1)) is None
    assert launch.stopped_by(failures(-9)) is None  # SIGKILL: the kernel's OOM killer, not a stop request
    assert launch.stopped_by({}) is None


def _embed_worker(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    from amemctl.core.distributed import embed_sharded, gather_rows, shard_range
    from amemctl.models.encoders import Preprocessing, random_encoder

    phi = random_encoder("small", True, Preprocessing(), seed=1)
    images = torch.rand(23, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    seen = []
    embeddings = embed_sharded(lambda part: seen.append(len(part)) or phi.embed(part, torch.device("cpu")), images)
    start, stop = shard_range(23, rank, world)
    rows = gather_rows(torch.full((stop - start, 1), float(rank)), 23)
    if rank == 0:
        torch.save({"embeddings": embeddings, "rows": rows, "seen": seen}, out)
    _leave()


def test_embedding_is_split_across_ranks_and_gathered(tmp_path):
    from amemctl.models.encoders import Preprocessing, random_encoder

    out = str(tmp_path / "e.pt")
    mp.spawn(_embed_worker, args=(3, _free_port(), out), nprocs=3)
    result = torch.load(out, weights_only=True)
    phi = random_encoder("small", True, Preprocessing(), seed=1)
    images = torch.rand(23, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(result["embeddings"], phi.embed(images, torch.device("cpu")), rtol=1e-4, atol=1e-5)
    assert result["seen"] == [8]  # rank 0 embedded only its own 8 of 23 rows
    assert result["rows"][:, 0].tolist() == [0.0] * 8 + [1.0] * 8 + [2.0] * 7
