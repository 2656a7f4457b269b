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


#: a test-only plugin: `fail_rank` fails on one rank of a distributed run, at the Nth point it runs there
FAIL_RANK_PLUGIN = """\
import torch.distributed as dist

from amemctl import AmemctlError, Param, Stage, hookimpl


class FailRank(Stage):
    \"\"\"Fail on `rank` at the `call`th point this process runs (never in one process).\"\"\"

    name = "fail_rank"
    rank = Param(int, 1, "the rank that fails")
    call = Param(int, 3, "the point (counted in this process) at which it fails")
    calls = 0

    def run(self, ctx):
        type(self).calls += 1
        if ctx.distributed and dist.get_rank(ctx.group) == self.rank and type(self).calls == self.call:
            raise AmemctlError(f"rank {self.rank} fails on purpose")


@hookimpl
def amemctl_register_stages():
    return [FailRank]
"""


def _fail_rank_env(tmp_path: Path) -> dict[str, str]:
    """The environment of a subprocess that has the `fail_rank` plugin installed (a dist-info with its entry point)."""
    site = tmp_path / "site"
    info = site / "failrank-0.1.dist-info"
    info.mkdir(parents=True)
    (site / "failrank.py").write_text(FAIL_RANK_PLUGIN)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: failrank\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[amemctl]\nfailrank = failrank\n")
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(site), os.environ.get("PYTHONPATH", "")])}


@pytest.mark.parametrize("rank", [1, 0])
def test_a_rank_failing_partway_is_recorded_failed_by_rank_0_and_resumes(tmp_path, rank):
    """Rank `rank` fails at its third point; the launcher then stops the other rank with SIGTERM.

    Stopped, rank 0 recorded the run interrupted (or left it running, or failed with an echo of
    the peer's failure, a broken collective): the record must say failed, naming the rank that
    failed and its message. Rank 0 failing itself records its own error. Either way the run
    resumes. Rank 0 saved at least two points: rank 1 reached its third point's end only after
    rank 0 joined that point's collective, which it does after saving the second.
    """
    from amemctl.engine.records import read_record

    sweep = RUNS_SWEEP.replace("  - report: {count: 3}\n", "").replace("  - evaluate:", f"  - fail_rank: {{rank: {rank}, call: 3}}\n  - evaluate:")
    (tmp_path / "small.yaml").write_text(sweep)
    env = _fail_rank_env(tmp_path)
    command = [sys.executable, "-m", "amemctl", "run", "small.yaml", "--nproc", "2", "--quiet", "--device", "cpu", "--out", "runs"]
    proc = subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=180)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 2, output
    assert f"(rank {rank}) stage 'fail_rank' failed" in proc.stderr, output
    assert "the distributed run failed: rank 0 exited with code" in proc.stderr and "Traceback" not in output, output
    (run_dir,) = (tmp_path / "runs" / "small").iterdir()
    record = read_record(run_dir)
    assert record["status"] == "failed" and record["ended"] is not None, record
    assert f"rank {rank} fails on purpose" in record["error"]["message"], record
    if rank == 1:  # the launcher's correction names the rank and its exit code
        assert record["error"]["message"].startswith("rank 1 failed (exit code 2): ") and record["error"]["type"] == "RankFailed", record
        assert "please report it" not in proc.stderr.replace("if none did, a bug in amemctl (please report it)", ""), output  # rank 0's broken collective is not blamed on amemctl
    else:  # rank 0's own record of its own failure
        assert record["error"]["type"] != "RankFailed", record
    assert f"rank {rank} fails on purpose" in (run_dir / record["error"]["traceback"]).read_text()
    done = record["points_done"]
    assert 2 <= done < 8, record
    resumed = subprocess.run([sys.executable, "-m", "amemctl", "run", "--resume", str(run_dir), "--quiet"], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=180)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    record = read_record(run_dir)
    assert record["status"] == "finished" and record["points_done"] == 8 and record["points_reused"] == done, record
    assert record["attempts"][0]["status"] == "failed"


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


def test_the_first_rank_to_fail_is_blamed_and_a_finished_record_is_never_rewritten(tmp_path):
    """first_failure: the earliest error file, past ranks the launcher stopped and those that left none; fail_elsewhere spares a finished run."""
    from amemctl.engine.records import RunRecord, read_record

    def failure(code, at=None, message="boom"):
        return SimpleNamespace(exitcode=code, message={"message": message, "extraInfo": {"failed_at": at}} if at is not None else "")

    assert launch.first_failure({0: failure(2, at=5.0), 1: failure(2, at=4.0)})[0] == 1  # rank 0's error echoes rank 1's
    assert launch.first_failure({0: failure(143), 1: failure(1)})[0] == 1  # no error file: still the failure
    assert launch.first_failure({0: failure(2, at=4.0), 1: failure(-15)})[0] == 0
    assert launch.first_failure({0: failure(143), 1: failure(-15)}) is None
    assert launch.failure_text(1, failure(2, at=1.0, message="bad")) == ("rank 1 failed (exit code 2): bad", "")
    RunRecord.start(tmp_path, pipeline="p", file="p.yaml", overrides=[], command=["amemctl"], points=1, headline=None).finish()
    folder = tmp_path / "folder"
    folder.write_text(str(tmp_path))
    launch.record_failure(folder, {0: failure(143), 1: failure(2, at=1.0)})
    assert read_record(tmp_path)["status"] == "finished" and not (tmp_path / "error.txt").exists()


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
