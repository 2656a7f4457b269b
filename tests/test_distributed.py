"""Retrieval split across torch.distributed ranks (gloo on CPU) equals retrieval in one process."""

from __future__ import annotations

import json
import math
import os
import signal
import socket
import subprocess
import sys
import tempfile
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
from tests.conftest import child_env
from tests.test_runs import SWEEP as RUNS_SWEEP

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
    import amemctl  # the public one: names as `recall` takes them, the whole memory given to every rank

    r = amemctl.sharded_recall(queries, store.rows("patterns"), store.rows("values"), similarity="manhattan", separation={"function": "topk", "k": 3}, budget=37 * 16 * 40)
    results[("public topk", True)] = (r.output, r.index)
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
        function = name.removeprefix("public ")
        expected = recall(queries, keys, values if hetero else None, similarity="manhattan", separation=make_separation(function, **dict(CASES)[function]))
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
    # --device cpu: gloo, as on the CPU machines; on a one-GPU machine NCCL refused rank 1 before its corrupt stage ran
    proc = subprocess.run([sys.executable, "-m", "amemctl", "run", str(path), "--nproc", "2", "--quiet", "--device", "cpu", "--out", str(tmp_path / "runs")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "(rank 0) stage 'corrupt' failed" in proc.stderr or "(rank 1) stage 'corrupt' failed" in proc.stderr
    assert "the distributed run failed: rank" in proc.stderr
    assert not (tmp_path / "never.zarr").exists()


#: a test-only plugin: `fail_rank` fails on one rank of a distributed run, at the Nth point it runs there;
#: `hold_rank` waits on one rank, after leaving its pid in a file; with AMEMCTL_TEST_HOLD set, every rank
#: waits while it starts, before anything is recorded (AMEMCTL_TEST_HOLD_MAIN: a one-process run too)
FAIL_RANK_PLUGIN = """\
import os
import time
from pathlib import Path

import torch.distributed as dist

from amemctl import AmemctlError, Param, Stage, hookimpl


def _hold(marker):
    \"\"\"Leave this process's pid in `marker` (whole, by a rename), then wait, out of any collective, until a signal stops it.\"\"\"
    Path(f"{marker}.tmp").write_text(str(os.getpid()))
    os.replace(f"{marker}.tmp", marker)
    while True:
        time.sleep(0.01)


_FOLDER = os.environ.get("AMEMCTL_TEST_HOLD")
if _FOLDER and ("RANK" in os.environ or os.environ.get("AMEMCTL_TEST_HOLD_MAIN")):  # loaded while the pipeline is checked
    _hold(Path(_FOLDER, "start-" + os.environ.get("RANK", "main")))


class FailRank(Stage):
    \"\"\"Fail on `rank` at the `call`th point this process runs (never in one process).\"\"\"

    name = "fail_rank"
    rank = Param(int, 1, "the rank that fails")
    call = Param(int, 3, "the point (counted in this process) at which it fails")
    hold = Param(bool, False, "the other ranks then wait there, out of any collective, until they are stopped")
    crash = Param(bool, False, "fail as a bug does (a ValueError), not with an amemctl error")
    calls = 0

    def run(self, ctx):
        type(self).calls += 1
        if ctx.distributed and type(self).calls == self.call:
            if dist.get_rank(ctx.group) == self.rank:
                if self.crash:
                    raise ValueError(f"rank {self.rank} crashes on purpose")
                raise AmemctlError(f"rank {self.rank} fails on purpose")
            while self.hold:
                time.sleep(0.01)


class HoldRank(Stage):
    \"\"\"On `rank`, at the `call`th point this process runs, leave the pid in `marker` and wait until stopped.\"\"\"

    name = "hold_rank"
    rank = Param(int, 1, "the rank that waits")
    call = Param(int, 3, "the point (counted in this process) at which it waits")
    marker = Param(str, "held", "the file that gets its pid")
    calls = 0

    def run(self, ctx):
        type(self).calls += 1
        if ctx.distributed and type(self).calls == self.call and dist.get_rank(ctx.group) == self.rank:
            _hold(self.marker)


@hookimpl
def amemctl_register_stages():
    return [FailRank, HoldRank]
"""


def _fail_rank_env(tmp_path: Path) -> dict[str, str]:
    """The environment of a subprocess that has the `fail_rank` plugin installed (a dist-info with its entry point)."""
    site = tmp_path / "site"
    info = site / "failrank-0.1.dist-info"
    info.mkdir(parents=True)
    (site / "failrank.py").write_text(FAIL_RANK_PLUGIN)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: failrank\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[amemctl]\nfailrank = failrank\n")
    return child_env(site)


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
    (run_dir,) = (tmp_path / "runs" / "small").iterdir()
    name = f"runs/small/{run_dir.name}"
    assert f"error: the distributed run failed: rank {rank} failed (exit code 2); its message is above and in {name}/error.txt" in proc.stderr, output
    assert f"`amemctl run --resume {name}` continues the run" in proc.stderr and "Traceback" not in output, output
    assert "run interrupted" not in output and f"; what finished is in {name}" in proc.stdout, output
    record = read_record(run_dir)
    assert record["status"] == "failed" and record["ended"] is not None, record
    assert f"rank {rank} fails on purpose" in record["error"]["message"], record
    if rank == 1:  # the launcher's correction names the rank and its exit code
        assert record["error"]["message"].startswith("rank 1 failed (exit code 2): ") and record["error"]["type"] == "RankFailed", record
        assert "crashed" not in proc.stderr and "please report it" not in proc.stderr, output  # rank 0's broken collective, an echo, is not told
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


def test_a_crash_on_rank_1_names_rank_0s_folder_and_keeps_the_traceback_there(tmp_path):
    """Rank 1's own run folder is scratch, deleted when it ends: its message names rank 0's folder for the traceback and the resume, and the traceback is in rank 0's error.txt."""
    from amemctl.engine.records import read_record

    sweep = RUNS_SWEEP.replace("  - report: {count: 3}\n", "").replace("  - evaluate:", "  - fail_rank: {rank: 1, call: 1, crash: true}\n  - evaluate:")
    (tmp_path / "small.yaml").write_text(sweep)
    command = [sys.executable, "-m", "amemctl", "run", "small.yaml", "--nproc", "2", "--quiet", "--device", "cpu", "--out", "runs"]
    proc = subprocess.run(command, env=_fail_rank_env(tmp_path), cwd=tmp_path, capture_output=True, text=True, timeout=180)
    output = proc.stdout + proc.stderr
    (run_dir,) = (tmp_path / "runs" / "small").iterdir()
    assert proc.returncode == 2 and "(rank 1) stage 'fail_rank' (package failrank) crashed" in proc.stderr, output
    assert "the traceback is in error.txt of rank 0's run folder" in proc.stderr and tempfile.gettempdir() + "/tmp" not in output, output
    record = read_record(run_dir)
    assert record["status"] == "failed" and record["error"]["message"].startswith("rank 1 failed (exit code 1): "), record  # a crash's code
    written = (run_dir / "error.txt").read_text()
    assert "Traceback" in written and "ValueError: rank 1 crashes on purpose" in written, written


@pytest.mark.parametrize("signum, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_an_interrupted_nproc_run_is_recorded_interrupted_and_resumes(tmp_path, signum, code):
    """Ctrl-C or SIGTERM reaches the launcher alone (torch starts each rank in a session of its own);
    it passes the signal on, rank 0 records the run interrupted and the command exits as a
    one-process run does: 128 + the signal, one line saying how to resume, no traceback."""
    from click.testing import CliRunner

    from amemctl.cli import main
    from amemctl.engine.records import read_record

    (tmp_path / "small.yaml").write_text(SWEEP)
    env = child_env()
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
    assert "death signal" not in err and "closing signal" not in err, err  # torch's launcher, made quiet (launch.QUIET_TORCH_LOGGERS)
    assert record["status"] == "interrupted" and record["error"]["type"] == "Interrupted", record
    done = record["points_done"]
    resumed = CliRunner().invoke(main, ["run", "--resume", str(run_dir), "--quiet"])
    assert resumed.exit_code == 0, resumed.output
    record = read_record(run_dir)
    assert record["status"] == "finished" and record["points_done"] == 16 and record["points_reused"] == done
    assert record["attempts"][0]["status"] == "interrupted"


def _wait_for(paths: list[Path], child: subprocess.Popen, timeout: float = 180) -> None:
    """Wait until every file in `paths` exists (or the launcher ended): no fixed sleep racing the run."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and child.poll() is None and not all(p.exists() for p in paths):
        time.sleep(0.05)
    if not all(p.exists() for p in paths):
        child.kill()
        child.wait()
        folder = paths[0].parent
        pytest.fail(f"{paths} never appeared; the launcher ended with {child.returncode}:\n" + "".join((folder / name).read_text() for name in ("stdout", "stderr")))


def _start(tmp_path: Path, env: dict[str, str], nproc: int = 2) -> subprocess.Popen:
    """`amemctl run small.yaml --nproc N` in tmp_path, its output in tmp_path/stdout and tmp_path/stderr."""
    command = [sys.executable, "-m", "amemctl", "run", "small.yaml", "--nproc", str(nproc), "--quiet", "--device", "cpu", "--out", "runs"]
    with open(tmp_path / "stdout", "w") as stdout, open(tmp_path / "stderr", "w") as stderr:
        return subprocess.Popen(command, env=env, cwd=tmp_path, stdout=stdout, stderr=stderr)


def _outputs(tmp_path: Path) -> tuple[str, str]:
    return (tmp_path / "stdout").read_text(), (tmp_path / "stderr").read_text()


def test_a_rank_failing_while_rank_0_is_stopped_is_told_as_one_failure(tmp_path):
    """Rank 1 fails at its third point while rank 0 waits there, out of any collective: the launcher stops rank 0,
    which records an interruption. The user hears one account, the launcher's: the run failed, rank 1 failed,
    its message is above and in error.txt, how to resume; rank 0 says nothing of an interruption, and its
    record, metrics.json and report.md say failed."""
    from amemctl.engine.records import json_object, read_record

    sweep = RUNS_SWEEP.replace("  - report: {count: 3}\n", "").replace("  - evaluate:", "  - fail_rank: {rank: 1, call: 3, hold: true}\n  - evaluate:")
    (tmp_path / "small.yaml").write_text(sweep)
    child = _start(tmp_path, _fail_rank_env(tmp_path))
    child.wait(timeout=180)
    out, err = _outputs(tmp_path)
    (run_dir,) = (tmp_path / "runs" / "small").iterdir()
    name = f"runs/small/{run_dir.name}"
    assert child.returncode == 2, out + err
    assert "run interrupted" not in out + err and "--resume" not in out, out + err
    assert out.rstrip().endswith(f"run stopped after 2 of 8 points; what finished is in {name}"), out
    assert "error: small.yaml:12:5: (rank 1) stage 'fail_rank' failed" in err, err
    assert f"error: the distributed run failed: rank 1 failed (exit code 2); its message is above and in {name}/error.txt" in err, err
    assert f"once that is fixed, `amemctl run --resume {name}` continues the run (in one process)" in err, err
    assert "closing signal" not in err and "failed (exitcode" not in err and "Traceback" not in err, err  # torch's launcher, made quiet
    record = read_record(run_dir)
    assert record["status"] == "failed" and record["error"]["message"].startswith("rank 1 failed (exit code 2): "), record
    assert json_object(run_dir / "metrics.json")["status"] == "failed"
    assert "- status: failed (2 of 8 sweep points)" in (run_dir / "report.md").read_text()


def test_a_signal_to_one_rank_interrupts_the_run_and_says_so(tmp_path):
    """A user stops one rank (its pid, not the launcher's): the run is interrupted, not failed.

    Rank 1 waits before its first point's retrieval, rank 0 goes on into that retrieval's
    collective; rank 1 gets SIGTERM and leaves. Rank 0's collective breaks (an echo, not told)
    or the launcher stops it: either way the run was stopped by a signal to rank 1, exit 143,
    with one line saying so and how to resume, and the record says interrupted.
    """
    from amemctl.engine.records import json_object, read_record

    sweep = RUNS_SWEEP.replace("  - report: {count: 3}\n", "").replace("  - score:", "  - hold_rank: {rank: 1, call: 1, marker: held}\n  - score:")
    (tmp_path / "small.yaml").write_text(sweep)
    child = _start(tmp_path, _fail_rank_env(tmp_path))
    _wait_for([tmp_path / "held"], child)
    os.kill(int((tmp_path / "held").read_text()), signal.SIGTERM)
    child.wait(timeout=120)
    out, err = _outputs(tmp_path)
    (run_dir,) = (tmp_path / "runs" / "small").iterdir()
    name = f"runs/small/{run_dir.name}"
    assert child.returncode == 143, out + err
    assert out.rstrip().endswith(f"run interrupted after 0 of 8 points: rank 1 was stopped by SIGTERM; continue it with `amemctl run --resume {name}`"), out + err
    assert "error" not in err and "Traceback" not in err and "exitcode" not in err, err
    record = read_record(run_dir)
    assert record["status"] == "interrupted" and record["error"]["message"] == "stopped by signal SIGTERM sent to rank 1", record
    assert json_object(run_dir / "metrics.json")["status"] == "interrupted"


@pytest.mark.parametrize("signum, code, nproc", [(signal.SIGINT, 130, 2), (signal.SIGTERM, 143, 2), (signal.SIGTERM, 143, 1)])
def test_a_run_stopped_while_it_starts_says_it_never_started(tmp_path, signum, code, nproc):
    """A stop while the ranks start (they load the pipeline's plugins before anything is recorded): no run
    folder, one line saying the run stopped before it started with nothing to resume, 128 + the signal;
    no click "Aborted!", no traceback. A one-process run says the same (SIGTERM would kill it silently)."""
    (tmp_path / "small.yaml").write_text(RUNS_SWEEP)
    env = {**_fail_rank_env(tmp_path), "AMEMCTL_TEST_HOLD": str(tmp_path), **({"AMEMCTL_TEST_HOLD_MAIN": "1"} if nproc == 1 else {})}
    child = _start(tmp_path, env, nproc)
    _wait_for([tmp_path / f"start-{rank}" for rank in (range(nproc) if nproc > 1 else ["main"])], child)
    child.send_signal(signum)
    child.wait(timeout=120)
    out, err = _outputs(tmp_path)
    assert child.returncode == code, out + err
    assert out == f"run stopped by {signum.name} before it started: no run was recorded, so there is nothing to resume\n", out + err
    assert "Aborted!" not in err and "Traceback" not in err and "death signal" not in err, err
    assert not (tmp_path / "runs").exists()


def test_torch_launcher_loggers_are_quiet_while_launching_unless_loglevel_asks(monkeypatch):
    """launch._quiet_torch: the loggers of torch's launcher are raised for the launch and restored; LOGLEVEL (torch's own setting) keeps them as they are."""
    import logging

    loggers = [logging.getLogger(name) for name in launch.QUIET_TORCH_LOGGERS]
    before = [logger.level for logger in loggers]
    monkeypatch.delenv("LOGLEVEL", raising=False)
    with launch._quiet_torch():
        assert not any(logger.isEnabledFor(logging.WARNING) for logger in loggers)
        assert logging.getLogger("torch.distributed.elastic.multiprocessing.api").level == logging.CRITICAL
    assert [logger.level for logger in loggers] == before
    monkeypatch.setenv("LOGLEVEL", "INFO")
    with launch._quiet_torch():
        assert [logger.level for logger in loggers] == before


def test_how_each_rank_ended_decides_how_the_run_ended(tmp_path):
    """launch.ending_of and decisive: the first failure (past ranks the launcher stopped, echoes of a peer that
    left, and those that left no time), else the first stop (its note, stopped-RANK.json), else the first echo."""

    def failure(code, at=None, echo=False, message="boom"):
        return SimpleNamespace(exitcode=code, message={"message": message, "extraInfo": {"failed_at": at, "echo": echo}} if at is not None else "")

    def first(*failures, stops=None):
        for path in tmp_path.glob("stopped-*.json"):
            path.unlink()
        for rank, (signum, at) in (stops or {}).items():
            (tmp_path / f"stopped-{rank}.json").write_text(json.dumps({"signal": int(signum), "at": at}))
        ending = launch.decisive([launch.ending_of(rank, f, tmp_path) for rank, f in enumerate(failures)])
        return ending.rank, ending.how

    assert first(failure(2, at=5.0), failure(2, at=4.0)) == (1, "failed")  # rank 0's error echoes rank 1's
    assert first(failure(2, at=4.0, echo=True), failure(2, at=5.0)) == (1, "failed")  # an echo comes after any failure
    assert first(failure(143), failure(1)) == (1, "failed")  # no error file: still the failure
    assert first(failure(2, at=4.0), failure(-15)) == (0, "failed")
    assert first(failure(143), failure(-9)) == (1, "failed")  # SIGKILL: the kernel's OOM killer, not a stop request
    assert first(failure(-15, at=4.0), failure(2, at=5.0)) == (0, "failed")  # killed while it ended on its own error: still its failure
    assert first(failure(143), failure(-15)) == (0, "stopped")  # every rank stopped, none noted when: the lowest
    assert first(failure(143), failure(-2)) == (0, "stopped")
    assert first(failure(2, at=4.0, echo=True), failure(143), stops={1: (signal.SIGTERM, 3.0)}) == (1, "stopped")  # a user stopped rank 1
    assert first(failure(143), failure(143), stops={0: (signal.SIGTERM, 5.0), 1: (signal.SIGTERM, 3.0)}) == (1, "stopped")
    assert first(failure(143), failure(2, at=4.0), stops={0: (signal.SIGTERM, 5.0)}) == (1, "failed")  # the launcher stopped rank 0
    # rank 1's own collective call failed (an error from inside torch.distributed) and the launcher then stopped rank 0
    assert first(failure(143), failure(1, at=4.0, echo=True), stops={0: (signal.SIGTERM, 5.0)}) == (1, "echo")
    assert first(failure(143), failure(1, at=4.0, echo=True)) == (0, "stopped")  # a stop of unknown time may have caused the echo
    assert launch.decisive([]) is None
    assert launch.ending_of(1, failure(2, at=1.0, message="bad")).record_text() == ("rank 1 failed (exit code 2): bad", "")
    assert launch.ending_of(1, failure(-9)).record_text() == ("rank 1 was killed by SIGKILL (exit code -9)", "")
    assert launch.ending_of(1, failure(143)).said() == "rank 1 was stopped by SIGTERM"


def test_an_error_whose_causes_loop_back_is_told_apart_from_an_echo():
    """runner.lost_peer walked `__cause__` without end: an exception re-raised from one raised from it
    (a cause chain that loops back) hung the failing rank instead of reporting its error."""
    code = (
        "from amemctl.engine.runner import lost_peer\n"
        "first, second = ValueError('first'), RuntimeError('second')\n"
        "first.__cause__, second.__cause__ = second, first\n"
        "print(lost_peer(first))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=child_env())
    assert out.stdout.strip() == "False", out.stderr


def test_a_stop_is_noted_with_its_time_on_a_full_disk(tmp_path, monkeypatch):
    """note_stop writes in the note the launcher reserved: a full /tmp cannot leave the stop's time unknown,
    which would put it before an echo and make a run that failed read as interrupted."""
    from tests.fakedisk import FakeDisk

    launch.reserve_stop_notes(tmp_path, 1)  # rank 0's only
    assert launch.ending_of(0, SimpleNamespace(exitcode=143, message=""), tmp_path).at == math.inf  # the blank reads as no note
    FakeDisk(tmp_path, monkeypatch, free=0)
    monkeypatch.setenv(launch.LAUNCH_DIR_ENV, str(tmp_path))
    monkeypatch.setenv("RANK", "0")
    before = time.time()
    launch.note_stop(signal.SIGTERM)
    stopped = launch.ending_of(0, SimpleNamespace(exitcode=143, message=""), tmp_path)
    assert stopped.how == "stopped" and stopped.signum == signal.SIGTERM and before <= stopped.at <= time.time()
    echo = SimpleNamespace(exitcode=1, message={"message": "Connection closed by peer", "extraInfo": {"failed_at": before - 1, "echo": True}})
    assert launch.decisive([stopped, launch.ending_of(1, echo, tmp_path)]).how == "echo"  # the launcher stopped rank 0 after rank 1's own failure
    monkeypatch.setenv("RANK", "1")
    # not reserved: the note needs a new file, which the full disk refuses, and nothing is raised
    launch.note_stop(signal.SIGTERM)
    assert not (tmp_path / "stopped-1.json").exists()


def test_the_launchers_account_survives_a_full_disk(tmp_path, monkeypatch, capsys):
    """The disk the run filled refuses the corrected record: the failing rank's error and the closing lines are still told, with a warning."""
    from amemctl.engine.records import RunRecord, read_record
    from tests.fakedisk import FakeDisk

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    record = RunRecord.start(run_dir, pipeline="p", file="p.yaml", overrides=[], command=["amemctl"], points=4, headline=None)
    record.finish(RuntimeError("Connection closed by peer"))  # rank 0 recorded its broken collective, an echo
    folder = tmp_path / "launch"
    folder.mkdir()
    (folder / launch.RUN_FOLDER).write_text(json.dumps({"path": str(run_dir), "shown": "runs/p/1"}))
    failed = SimpleNamespace(exitcode=2, message={"message": "(rank 1) stage 'x' failed: boom", "extraInfo": {"failed_at": 1.0}})
    FakeDisk(run_dir, monkeypatch, free=0)
    error = launch.tell_failed(folder, launch.ending_of(1, failed))
    assert error.message.startswith("the distributed run failed: rank 1 failed (exit code 2)") and "--resume runs/p/1" in error.hint
    assert "error.txt" not in error.message  # it could not be written: the message is the rank's own output above
    launch.tell_interrupted(folder, signal.SIGTERM, launch.ending_of(1, SimpleNamespace(exitcode=143, message="")))
    out = capsys.readouterr().out
    assert out.count("could not be corrected (No space left on device)") == 2, out
    assert "run stopped after 0 of 4 points" in out and "run interrupted after 0 of 4 points: rank 1 was stopped by SIGTERM" in out
    assert read_record(run_dir)["status"] == "failed" and "boom" not in (run_dir / "error.txt").read_text()


def test_the_launcher_corrects_rank_0s_record_but_never_a_finished_one(tmp_path, capsys):
    """tell_failed and tell_interrupted make rank 0's record say how the run ended; fail_elsewhere spares a finished run."""
    from amemctl.engine.records import RunRecord, read_record

    def started(name):
        run_dir = tmp_path / name
        run_dir.mkdir()
        record = RunRecord.start(run_dir, pipeline="p", file="p.yaml", overrides=[], command=["amemctl"], points=4, headline=None)
        folder = tmp_path / f"{name}-launch"
        folder.mkdir()
        (folder / launch.RUN_FOLDER).write_text(json.dumps({"path": str(run_dir), "shown": name}))
        return record, folder

    failed = SimpleNamespace(exitcode=2, message={"message": "bad", "extraInfo": {"failed_at": 1.0}})
    record, folder = started("finished")
    record.finish()
    launch.tell_failed(folder, launch.ending_of(1, failed))
    assert read_record(record.run_dir)["status"] == "finished" and not (record.run_dir / "error.txt").exists()

    record, folder = started("echo")  # rank 0 recorded a crash of its collective: rank 1 was stopped by a user
    record.progress(1, 0)
    record.finish(RuntimeError("Connection closed by peer"))
    launch.tell_interrupted(folder, signal.SIGTERM, launch.ending_of(1, SimpleNamespace(exitcode=143, message="")))
    data = read_record(record.run_dir)
    assert data["status"] == "interrupted" and data["error"]["message"] == "stopped by signal SIGTERM sent to rank 1", data
    assert "Connection closed by peer" in (record.run_dir / "error.txt").read_text()
    assert capsys.readouterr().out == "run interrupted after 1 of 4 points: rank 1 was stopped by SIGTERM; continue it with `amemctl run --resume echo`\n"

    error = launch.tell_failed(tmp_path / "no-launch-folder", launch.ending_of(1, failed))  # rank 0 made no run folder
    assert "rank 1 failed (exit code 2); its message is above" in error.message and "nothing to resume" in error.hint


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


def test_a_rank_names_where_its_traceback_is_by_who_launched_it(monkeypatch):
    """Under `--nproc` the launcher copies a rank's error into rank 0's error.txt; under torchrun only torchrun's summary shows it."""
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv(launch.LAUNCH_DIR_ENV, "/somewhere")
    assert launch.elsewhere().traceback == "error.txt of rank 0's run folder (the launcher names it below)"
    monkeypatch.delenv(launch.LAUNCH_DIR_ENV)
    assert launch.elsewhere().traceback.startswith("torchrun's failure summary") and "rank 0 names it" in launch.elsewhere().folder
