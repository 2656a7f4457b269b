"""Run records, `amemctl runs`, typed results and `run --resume`."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from amemctl import Stage, results
from amemctl.cli import main
from amemctl.dsl.pipeline import parse_text
from amemctl.engine.records import read_record, status_of
from amemctl.engine.runner import run_pipeline
from amemctl.plugins import build_registry
from tests.conftest import child_env

ROOT = Path(__file__).resolve().parent.parent

SWEEP = """\
name: small
seed: 0
data: {dataset: digits, limit: 200}
sweep:
  beta: [1, 10, 100, 1000]
  corruption: [{kind: gaussian, variance: 0.1}, {kind: mask_zero, fraction: 0.5}]
stages:
  - corrupt: ${corruption}
  - score: {similarity: manhattan}
  - separate: {function: softmax, beta: "${beta}"}
  - project: {}
  - evaluate: {threshold: 1.0}
  - report: {count: 3}
report:
  tables: [{metric: error_index, rows: [corruption], columns: beta}]
"""


class Tick(Stage):
    """Count the points it runs in; with `stop_at` armed, Ctrl-C at that call."""

    name = "tick"
    calls = 0
    stop_at: int | None = None

    def run(self, ctx):
        type(self).calls += 1
        if type(self).calls == type(self).stop_at:
            raise KeyboardInterrupt


def _invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def _metrics(run_dir: Path) -> list[tuple]:
    doc = json.loads((run_dir / "metrics.json").read_text())
    return [(p["index"], {k: v for k, v in p["metrics"].items() if not k.startswith("seconds.")}) for p in doc["points"]]


def test_a_run_records_its_command_overrides_times_and_status(tmp_path):
    (tmp_path / "small.yaml").write_text(SWEEP)
    result = _invoke("run", tmp_path / "small.yaml", "--set", "seed=2", "--set", "sweep.beta=[1, 10]", "--out", tmp_path / "runs", "--quiet")
    assert result.exit_code == 0, result.output
    (run_dir,) = (tmp_path / "runs" / "small").iterdir()
    record = read_record(run_dir)
    assert record["status"] == "finished" and status_of(record) == "finished"
    assert record["overrides"] == ["seed=2", "sweep.beta=[1, 10]"] and record["command"][:2] == ["amemctl", "run"]
    assert record["started"] <= record["ended"] and record["points_done"] == record["points_total"] == 4
    assert record["pid"] == os.getpid() and record["error"] is None and record["headline"]["metric"] == "error_index"


def test_a_failed_run_records_its_error_and_traceback(run_text, tmp_path):
    text = "name: small\ndata: {dataset: digits, limit: 200}\nsweep: {n: [10, 20, 5000]}\nstages:\n  - corrupt: {kind: gaussian, count: '${n}'}\n"
    with pytest.raises(Exception, match="count=5000"):
        run_text(text)
    (run_dir,) = (tmp_path / "runs" / "small").iterdir()
    record = read_record(run_dir)
    assert record["status"] == "failed" and "count=5000 queries asked of 200 stored patterns" in record["error"]["message"]
    assert "Traceback" in (run_dir / record["error"]["traceback"]).read_text()
    assert record["points_done"] == 2 and record["ended"] is not None


def test_a_failed_run_stops_writing_its_figure_formats(run_text, tmp_path):
    from amemctl import figures

    text = "name: small\ndata: {dataset: digits, limit: 200}\nsweep: {n: [10, 5000]}\nstages:\n  - corrupt: {kind: gaussian, count: '${n}'}\nreport: {formats: [svg]}\n"
    with pytest.raises(Exception, match="count=5000"):
        run_text(text)
    figures.image_grid([("after", torch.rand(2, 1, 8, 8))], tmp_path / "after.png")
    assert (tmp_path / "after.png").is_file() and not (tmp_path / "after.svg").exists()  # the run's svg ended with it


def test_results_are_typed_with_seeds_in_json_csv_and_rows(run_text):
    run = run_text(SWEEP.replace("seed: 0", "seed: 4\nrepeats: 2").replace("beta: [1, 10, 100, 1000]", "beta: [1, 100]"))
    doc = json.loads((run.run_dir / "metrics.json").read_text())
    first = doc["points"][0]
    assert first["sweep"] == {"beta": "1", "corruption": "gaussian variance=0.1"}
    assert first["values"] == {"beta": 1, "corruption": {"kind": "gaussian", "variance": 0.1}} and first["seeds"] == [4, 5]
    rows = results(run.run_dir)
    assert len(rows) == 4 * 2 and rows == results(run)
    assert rows[0]["beta"] == 1 and rows[0]["corruption.variance"] == 0.1 and rows[0]["corruption.fraction"] is None
    assert [(r["point"], r["repeat"], r["seed"]) for r in rows[:2]] == [(0, 0, 4), (0, 1, 5)]
    assert (rows[0]["error_index"] + rows[1]["error_index"]) / 2 == pytest.approx(first["metrics"]["error_index"])
    with open(run.run_dir / "metrics.csv", newline="") as f:
        table = list(csv.DictReader(f))
    assert len(table) == 8 and float(table[1]["error_index"]) == pytest.approx(rows[1]["error_index"]) and table[1]["seed"] == "5"
    pandas = pytest.importorskip("pandas")
    frame = pandas.DataFrame(rows)
    assert frame.groupby("beta")["error_index"].mean().index.tolist() == [1, 100]


def test_an_interrupted_sweep_resumes_recomputing_nothing_finished(tmp_path):
    registry = build_registry()
    registry.stages["tick"] = Tick
    text = SWEEP.replace("  - report: {count: 3}\n", "  - report: {count: 3}\n  - tick: {}\n")
    Tick.calls, Tick.stop_at = 0, None
    whole = run_pipeline(parse_text(text, "t.yaml", registry=registry), out_root=tmp_path / "whole", device="cpu", progress=False)
    assert Tick.calls == 8
    Tick.calls, Tick.stop_at = 0, 4
    with pytest.raises(KeyboardInterrupt):
        run_pipeline(parse_text(text, "t.yaml", registry=registry), out_root=tmp_path / "runs", device="cpu", progress=False)
    (run_dir,) = (tmp_path / "runs" / "small").iterdir()
    record = read_record(run_dir)
    assert record["status"] == "interrupted" and record["points_done"] == 3 and record["error"]["type"] == "KeyboardInterrupt"
    Tick.calls, Tick.stop_at = 0, None
    resumed = run_pipeline(parse_text(text, "t.yaml", registry=registry), device="cpu", progress=False, resume=run_dir)
    assert Tick.calls == 5  # the 3 finished points were not run again
    assert _metrics(run_dir) == _metrics(whole.run_dir)
    record = read_record(run_dir)
    assert record["status"] == "finished" and record["points_reused"] == 3 and record["attempts"][0]["status"] == "interrupted"
    assert resumed.run_dir == run_dir and len(list((run_dir / "figures").glob("retrievals*.png"))) >= 2


class Stop(Stage):
    """At its `at`-th call, the process gets `signum` as from outside (a scheduler's SIGTERM, Ctrl-C's SIGINT)."""

    name = "stop"
    calls = 0
    at = 0
    signum = signal.SIGTERM

    def run(self, ctx):
        type(self).calls += 1
        if type(self).calls == type(self).at:
            os.kill(os.getpid(), type(self).signum)
            time.sleep(10)  # the signal's handler raises in here


def _stop_registry():
    registry = build_registry()
    registry.stages["stop"] = Stop
    return registry


STOPPING = SWEEP.replace("beta: [1, 10, 100, 1000]", "beta: [1, 100]").replace("seed: 0", "seed: 0\nrepeats: 2").replace("  - report: {count: 3}\n", "  - report: {count: 3}\n  - stop: {}\n")


@pytest.mark.parametrize("mode", ["create", "append"])
def test_a_resumed_run_does_not_persist_again_what_it_persisted_before_it_stopped(tmp_path, mode):
    """Stopped after its persist, resumed: `create` failed on the store the run itself had made (the
    run could never be finished), `append` stored every row a second time."""
    from amemctl import MemoryStore
    from amemctl.errors import StoreError

    registry = build_registry()
    registry.stages["tick"] = Tick

    def text(store):
        return SWEEP.replace("stages:\n", f"stages:\n  - persist: {{store: {store}, mode: {mode}}}\n", 1).replace("  - report: {count: 3}\n", "  - report: {count: 3}\n  - tick: {}\n")

    Tick.calls, Tick.stop_at = 0, None
    whole = run_pipeline(parse_text(text(tmp_path / "whole.zarr"), "t.yaml", registry=registry), out_root=tmp_path / "whole", device="cpu", progress=False)
    Tick.calls, Tick.stop_at = 0, 2  # in the second point: the persist (shared by every point) is done
    with pytest.raises(KeyboardInterrupt):
        run_pipeline(parse_text(text(tmp_path / "cut.zarr"), "t.yaml", registry=registry), out_root=tmp_path / "runs", device="cpu", progress=False)
    (run_dir,) = (tmp_path / "runs" / "small").iterdir()
    Tick.calls, Tick.stop_at = 0, None
    run_pipeline(parse_text(text(tmp_path / "cut.zarr"), "t.yaml", registry=registry), device="cpu", progress=False, resume=run_dir)
    assert read_record(run_dir)["status"] == "finished"
    assert len(MemoryStore.open(tmp_path / "cut.zarr")) == len(MemoryStore.open(tmp_path / "whole.zarr")) == 200
    assert len(MemoryStore.open(tmp_path / "cut.zarr").attrs["provenance"]) == 1
    same = [[(i, {k: v for k, v in m.items() if k != "store_bytes"}) for i, m in _metrics(d)] for d in (run_dir, whole.run_dir)]
    assert same[0] == same[1] and all(m["persisted"] == 200 for _, m in _metrics(run_dir))
    if mode == "create":  # another run still finds the store there
        with pytest.raises(StoreError, match="already exists"):
            run_pipeline(parse_text(text(tmp_path / "cut.zarr"), "t.yaml", registry=registry), out_root=tmp_path / "again", device="cpu", progress=False)


def test_sigterm_in_a_stage_records_the_run_interrupted_not_a_crash(tmp_path):
    """A scheduler's SIGTERM arrives while a stage runs: not the stage's bug, and the run can be resumed."""
    from amemctl.engine.records import Interrupted

    Stop.calls, Stop.at, Stop.signum = 0, 3, signal.SIGTERM
    with pytest.raises(Interrupted, match="SIGTERM"):
        run_pipeline(parse_text(STOPPING, "t.yaml", registry=_stop_registry()), out_root=tmp_path / "runs", device="cpu", progress=False)
    (run_dir,) = (tmp_path / "runs" / "small").iterdir()
    record = read_record(run_dir)
    assert record["status"] == "interrupted" and record["error"]["type"] == "Interrupted" and record["points_done"] == 2
    assert "crashed" not in record["error"]["message"] and "please report" not in (run_dir / "error.txt").read_text()


def test_a_second_stop_while_the_first_is_handled_leaves_report_and_record_agreeing(tmp_path, monkeypatch):
    """Ctrl-C pressed again while the runner handles a scheduler's SIGTERM: report.md and run.json both say interrupted."""
    from amemctl.engine import runner

    def second_stop():
        raise KeyboardInterrupt  # lands in the runner's except, before it has settled the run's status

    monkeypatch.setattr(runner, "stopping_once", second_stop)
    Stop.calls, Stop.at, Stop.signum = 0, 3, signal.SIGTERM
    with pytest.raises(KeyboardInterrupt):
        run_pipeline(parse_text(STOPPING, "t.yaml", registry=_stop_registry()), out_root=tmp_path / "runs", device="cpu", progress=False)
    (run_dir,) = (tmp_path / "runs" / "small").iterdir()
    assert read_record(run_dir)["status"] == "interrupted"
    assert "- status: interrupted (" in (run_dir / "report.md").read_text()


@pytest.mark.parametrize("signum, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_an_interrupted_run_says_how_far_it_got_and_how_to_resume(tmp_path, monkeypatch, signum, code):
    """One line, in the unit `runs ls` counts (point runs: points x repeats), with the --resume command; 128 + the signal."""
    monkeypatch.setattr("amemctl.dsl.pipeline.get_registry", _stop_registry)
    (tmp_path / "small.yaml").write_text(STOPPING)
    Stop.calls, Stop.at, Stop.signum = 0, 3, signum
    result = _invoke("run", tmp_path / "small.yaml", "--out", tmp_path / "runs", "--quiet")
    (run_dir,) = (tmp_path / "runs" / "small").iterdir()
    assert result.exit_code == code, result.output
    assert f"run interrupted after 2 of 8 point runs (4 points x 2 repeats); continue it with `amemctl run --resume {run_dir}`" in result.output
    assert "Aborted!" not in result.output and "crashed" not in result.output and "Traceback" not in result.output
    assert read_record(run_dir)["status"] == "interrupted"
    listing = _invoke("runs", "ls", "--root", tmp_path / "runs")
    assert "2/8" in listing.output
    shown = _invoke("runs", "show", run_dir, "--root", tmp_path / "runs")
    assert "2 of 8 point runs (4 points x 2 repeats)" in shown.output, shown.output


def test_resume_refuses_a_run_that_is_still_running(tmp_path, run_text):
    run = run_text(SWEEP.replace("beta: [1, 10, 100, 1000]", "beta: [1]"))
    record = json.loads((run.run_dir / "run.json").read_text())
    record.update(status="running", pid=os.getpid())
    (run.run_dir / "run.json").write_text(json.dumps(record))
    result = _invoke("run", "--resume", run.run_dir)
    assert result.exit_code == 2 and "is still running" in result.output


def test_resume_refuses_a_run_another_process_is_resuming(tmp_path, run_text):
    """Two `--resume`s started together both read a record that was not running and both ran the run into
    one folder (the later record lost the earlier attempt): the process running a run holds its .run.lock."""
    import filelock

    run = run_text(SWEEP.replace("beta: [1, 10, 100, 1000]", "beta: [1]"))
    before = (run.run_dir / "run.json").read_text()
    other = filelock.FileLock(run.run_dir / ".run.lock", thread_local=False)
    other.acquire(timeout=0)  # flock: another open file, as another process's, conflicts
    try:
        result = _invoke("run", "--resume", run.run_dir, "--quiet")
        assert result.exit_code == 2, result.output
        assert f"run {run.run_dir} is being run by another process" in result.output
        assert "Traceback" not in result.output and (run.run_dir / "run.json").read_text() == before
    finally:
        other.release()
    assert _invoke("run", "--resume", run.run_dir, "--quiet").exit_code == 0  # once it has ended
    assert read_record(run.run_dir)["status"] == "finished" and len(read_record(run.run_dir)["attempts"]) == 1


def test_a_killed_run_reads_dead_and_resumes_to_the_same_metrics(tmp_path):
    """SIGKILL in the middle of a sweep (a run that cannot write its end), then `run --resume`."""
    text = SWEEP.replace("limit: 200", "limit: 600").replace("beta: [1, 10, 100, 1000]", "beta: [1, 3, 10, 30, 100, 300, 1000, 3000]")
    pipeline = tmp_path / "small.yaml"
    pipeline.write_text(text)
    env = child_env()
    # on the CPU like `whole` below, whose metrics it must equal to the bit (with CUDA present, auto ran it on the GPU)
    child = subprocess.Popen([sys.executable, "-m", "amemctl", "run", str(pipeline), "--out", str(tmp_path / "runs"), "--quiet", "--device", "cpu"], env=env, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and len(list((tmp_path / "runs").glob("small/*/points/*.pt"))) < 2 and child.poll() is None:
        time.sleep(0.05)
    child.send_signal(signal.SIGKILL)
    child.wait()
    (run_dir,) = (tmp_path / "runs" / "small").iterdir()
    finished = len(list((run_dir / "points").glob("*.pt")))
    assert 2 <= finished < 16, "the child finished before it was killed: make the sweep longer"
    assert status_of(read_record(run_dir)) == "dead"
    assert not (run_dir / "metrics.json").exists() and not (run_dir / "report.md").exists()  # as docs/pipelines.md says: resuming writes them
    listing = _invoke("runs", "ls", "--root", tmp_path / "runs")
    assert "dead" in listing.output
    result = _invoke("run", "--resume", "small", "--out", tmp_path / "runs", "--quiet", "--device", "cpu")
    assert result.exit_code == 0, result.output
    record = read_record(run_dir)
    assert (run_dir / "metrics.json").is_file() and (run_dir / "report.md").is_file()
    assert record["status"] == "finished" and record["points_reused"] == finished and record["attempts"][0]["status"] == "running"
    whole = run_pipeline(parse_text(text, str(pipeline)), out_root=tmp_path / "whole", device="cpu", progress=False)
    assert _metrics(run_dir) == _metrics(whole.run_dir)


STORES = """\
name: use
sweep:
  store: [stores/a.zarr, stores/b.zarr]
stages:
  - open_store: {store: "${store}"}
  - persist: {store: stores/copy.zarr, mode: replace}
  - corrupt: {kind: gaussian, variance: 0.05, count: 10}
  - score: {similarity: manhattan}
  - separate: {function: max}
  - project: {}
  - evaluate: {}
"""


def _stores(folder: Path, rows: int, names: tuple[str, ...] = ("a", "b"), seed: int = 0) -> None:
    from amemctl import MemoryStore

    for n, name in enumerate(names):
        images = torch.rand(rows, 1, 8, 8, generator=torch.Generator().manual_seed(seed + n))
        MemoryStore.write_new(folder / "stores" / f"{name}.zarr", lambda s, x=images: s.append(patterns=x, labels=torch.arange(len(x))), replace=True)


def _point_file(folder: Path, run_dir: Path, index: int) -> Path:
    """points/<key>.pt of sweep point `index` of the run of STORES (pipeline file use.yaml in `folder`)."""
    from amemctl.dsl.pipeline import load_pipeline
    from amemctl.engine.plan import plan_steps
    from amemctl.engine.runner import point_key

    pipeline = load_pipeline(folder / "use.yaml")
    return run_dir / "points" / f"{point_key(pipeline.seed, plan_steps(pipeline.plans[index].stages))}.pt"


def _started(folder: Path) -> Path:
    """Run STORES from `folder` with the CLI, as a user does; its run folder."""
    (folder / "use.yaml").write_text(STORES)
    result = _invoke("run", "use.yaml", "--quiet", "--device", "cpu")
    assert result.exit_code == 0, result.output
    (run_dir,) = (folder / "runs" / "use").iterdir()
    return run_dir


def test_a_run_resumed_from_another_directory_reads_and_writes_the_files_of_the_one_it_started_in(tmp_path, monkeypatch):
    """`--resume` from elsewhere read `stores/a.zarr` there (another store of the same name, or none) and wrote
    `stores/copy.zarr` there: the points it computed mixed another memory into the run's table."""
    start, elsewhere = tmp_path / "project", tmp_path / "elsewhere"
    _stores(start, 200)
    _stores(elsewhere, 50, seed=7)  # stores of the same names, which a resumption must not read
    monkeypatch.chdir(start)
    run_dir = _started(start)

    def metrics() -> list:
        return [(i, {k: v for k, v in m.items() if k != "store_bytes"}) for i, m in _metrics(run_dir)]  # zarr's metadata holds times

    before = metrics()
    assert [m["stored"] for _, m in before] == [200, 200]
    for point in (run_dir / "points").iterdir():  # as if stopped before any point finished
        point.unlink()
    (start / "stores" / "copy.zarr").rename(start / "copy-before.zarr")
    monkeypatch.chdir(elsewhere)
    result = _invoke("run", "--resume", run_dir, "--quiet", "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert metrics() == before  # computed again from the project's stores
    assert (start / "stores" / "copy.zarr").is_dir() and not (elsewhere / "stores" / "copy.zarr").exists()
    record = read_record(run_dir)
    assert record["cwd"] == str(start) and record["file"] == "use.yaml" and record["attempts"][0]["status"] == "finished"
    assert Path.cwd() == elsewhere  # the command came back to where it was started
    assert f"directory  {start}" in _invoke("runs", "show", run_dir).output  # where its relative paths point


def test_resume_refuses_a_run_whose_start_directory_is_gone(tmp_path, monkeypatch):
    start = tmp_path / "project"
    start.mkdir()
    monkeypatch.chdir(start)
    (start / "small.yaml").write_text(SWEEP.replace("beta: [1, 10, 100, 1000]", "beta: [1]"))
    assert _invoke("run", "small.yaml", "--quiet", "--device", "cpu").exit_code == 0
    monkeypatch.chdir(tmp_path)
    start.rename(tmp_path / "moved")
    (run_dir,) = (tmp_path / "moved" / "runs" / "small").iterdir()
    before = (run_dir / "run.json").read_text()
    result = _invoke("run", "--resume", run_dir, "--quiet")
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert f"run {run_dir} was started in {start}, which no longer exists: its pipeline's relative paths (data, stores, checkpoints) are read from there" in result.output
    assert f"hint: make {start} again (or a link of that name" in result.output
    assert (run_dir / "run.json").read_text() == before


def test_resume_refuses_to_reuse_points_computed_from_a_store_rewritten_since(tmp_path, monkeypatch):
    """A resumed run reused its finished points by their configuration alone: after the store they read was
    rewritten, their results sat in one table beside points computed from the new rows, without a word."""
    monkeypatch.chdir(tmp_path)
    _stores(tmp_path, 100)
    run_dir = _started(tmp_path)
    _point_file(tmp_path, run_dir, 1).unlink()  # point 1 (stores/b.zarr) did not finish
    _stores(tmp_path, 60, names=("b",), seed=3)  # read only by the unfinished point: no finished result to mix
    result = _invoke("run", "--resume", run_dir, "--quiet", "--device", "cpu")
    assert result.exit_code == 0, result.output
    record = read_record(run_dir)
    assert [m["stored"] for _, m in _metrics(run_dir)] == [100, 60] and record["points_reused"] == 1
    assert record["inputs"][str(tmp_path / "stores" / "b.zarr")]["rows"] == 60  # what the finished point read, now
    from amemctl import MemoryStore

    MemoryStore.open("stores/a.zarr", mode="a").forget(ids=[3])  # what the finished point 0 read
    _point_file(tmp_path, run_dir, 1).unlink()
    before = (run_dir / "run.json").read_text()
    result = _invoke("run", "--resume", run_dir, "--quiet", "--device", "cpu")
    assert result.exit_code == 2 and "Traceback" not in result.output
    told = " ".join(result.output.split())
    assert f"cannot resume {run_dir}: what it reads has changed since its finished points were computed: {tmp_path / 'stores' / 'a.zarr'} (alive 100 -> 99), which 1 finished point run(s) read" in told
    assert "hint: put it back as it was, then resume; or start a new run, which computes every point from what is there now: `amemctl run use.yaml`" in told
    assert (run_dir / "run.json").read_text() == before and not _point_file(tmp_path, run_dir, 1).exists()  # left as it was


def test_a_dead_runs_duration_ends_where_it_last_recorded_progress(tmp_path, run_text):
    """A run killed two hours ago, one minute in, was listed as having run for two hours (and counting)."""
    from datetime import datetime, timedelta, timezone

    run = run_text(SWEEP.replace("beta: [1, 10, 100, 1000]", "beta: [1]"))
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True).stdout.strip()
    started = (datetime.now(timezone.utc) - timedelta(hours=2)).replace(microsecond=0)  # as run.json writes it
    record = json.loads((run.run_dir / "run.json").read_text())
    record.update(status="running", ended=None, pid=int(gone), started=started.isoformat(timespec="seconds"))
    (run.run_dir / "run.json").write_text(json.dumps(record))
    last = (started + timedelta(seconds=61)).timestamp()
    os.utime(run.run_dir / "run.json", (last, last))
    listing = _invoke("runs", "ls", "--root", tmp_path / "runs").output
    assert "dead" in listing and "1m01s" in listing and "2h" not in listing, listing
    assert "1m01s" in _invoke("runs", "show", run.run_dir, "--root", tmp_path / "runs").output


def test_runs_ls_show_and_compare(tmp_path):
    (tmp_path / "small.yaml").write_text(SWEEP.replace("beta: [1, 10, 100, 1000]", "beta: [1, 100]"))
    for seed in (0, 1):
        assert _invoke("run", tmp_path / "small.yaml", "--set", f"seed={seed}", "--out", tmp_path / "runs", "--quiet").exit_code == 0
        time.sleep(1.1)  # run folders are named by the second they started
    first, second = sorted((tmp_path / "runs" / "small").iterdir())
    listing = _invoke("runs", "ls", "--root", tmp_path / "runs")
    assert listing.exit_code == 0 and f"small/{first.name}" in listing.output and "seed=1" in listing.output
    shown = _invoke("runs", "show", "small", "--root", tmp_path / "runs")
    assert shown.exit_code == 0 and second.name in shown.output and "seed=1" in shown.output and "finished" in shown.output
    compared = _invoke("runs", "compare", first, second, "--root", tmp_path / "runs", "--json")
    assert compared.exit_code == 0, compared.output
    table = json.loads(compared.output)
    a, b = (json.loads((d / "metrics.json").read_text())["points"] for d in (first, second))
    assert table["rows"][0]["values"] == [a[0]["metrics"]["error_index"], b[0]["metrics"]["error_index"]]
    assert len(table["rows"]) == 4 and table["rows"][0]["point"] == "beta=1, corruption=gaussian variance=0.1"
    text = _invoke("runs", "compare", first, second, "--root", tmp_path / "runs").output
    assert "run 1" in text and "run 2" in text and f"{100 * a[0]['metrics']['error_index']:.1f} %" in text
    rows = [line for line in shown.output.splitlines() if "beta=1," in line or "beta=100," in line]
    cells = {cell.strip() for line in rows for cell in line.split("│")}
    assert f"{100 * b[0]['metrics']['error_index']:.1f}" in cells and f"{b[0]['metrics']['mse']:.4g}" in cells  # error rates in percent, as ls, compare and report.md read
    misspelt = _invoke("runs", "compare", first, second, "--root", tmp_path / "runs", "--metric", "error_idx")
    assert misspelt.exit_code == 2 and "none of the runs holds a metric 'error_idx'" in misspelt.output and "did you mean 'error_index'?" in misspelt.output
    unknown = _invoke("runs", "compare", first, second, "--root", tmp_path / "runs", "--metric", "zzz")
    assert unknown.exit_code == 2 and "their metrics: " in unknown.output and "error_pixels" in unknown.output and "seconds." not in unknown.output
    named = _invoke("runs", "compare", first, second, "--root", tmp_path / "runs", "--metric", "mse", "--json")
    assert named.exit_code == 0 and {row["metric"] for row in json.loads(named.output)["rows"]} == {"mse"}
    missing = _invoke("runs", "show", "nothing", "--root", tmp_path / "runs")
    assert missing.exit_code == 2 and "no run 'nothing'" in missing.output and "small" in missing.output


def test_runs_show_names_the_metrics_its_table_has_no_room_for(tmp_path):
    # Only the first 8 metrics fit the table; the rest (a plugin's, which come last) were dropped silently.
    evaluations = "".join(f"  - evaluate: {{prefix: {p}_}}\n" for p in "abc")
    text = f"name: many\ndata: {{dataset: digits, limit: 30}}\nstages:\n  - corrupt: {{count: 5}}\n  - score: {{}}\n  - separate: {{function: max}}\n  - project: {{}}\n{evaluations}"
    (tmp_path / "many.yaml").write_text(text)
    assert _invoke("run", tmp_path / "many.yaml", "--out", tmp_path / "runs", "--quiet").exit_code == 0
    shown = _invoke("runs", "show", "many", "--root", tmp_path / "runs")
    assert shown.exit_code == 0 and "not shown: c_error_pixels, c_mse (amemctl runs compare" in shown.output, shown.output


class Clocked(Stage):
    """Records two durations in seconds and a loss, as a plugin's training stage might."""

    name = "clocked"

    def metrics(self):
        return ["fit_seconds", "warmup_seconds", "loss"]

    def run(self, ctx):
        ctx.metric("fit_seconds", 1.5)
        ctx.metric("warmup_seconds", 0.125)
        ctx.metric("loss", 0.25)


def test_runs_show_ls_and_compare_give_seconds_their_unit(tmp_path):
    """`runs show` headed error rates "(%)" but seconds with nothing (fit_seconds read 1.5, a number of
    what?), and ls and compare printed "22.2 %" beside a bare 1.500: seconds now read "(s)" in headers
    and "1.500 s" in cells, as report.md's tables ("(s)") do; a metric named in seconds is formatted as them."""
    registry = build_registry()
    registry.stages["clocked"] = Clocked
    text = "name: timed\ndata: {dataset: digits, limit: 10}\nstages:\n  - clocked: {}\nreport:\n  tables: [{metric: fit_seconds}]\n"
    for _ in range(2):
        run_pipeline(parse_text(text, "t.yaml", registry=registry), out_root=tmp_path / "runs", device="cpu", progress=False)
        time.sleep(1.1)  # run folders are named by the second they started
    first, second = sorted((tmp_path / "runs" / "timed").iterdir())
    shown = _invoke("runs", "show", "timed", "--root", tmp_path / "runs").output
    assert "fit_seconds 1.500 s (mean over points)" in shown, shown
    assert "fit_seconds (s)" in shown and "warmup_seconds (s)" in shown and "loss (s)" not in shown, shown
    cells = {cell.strip() for line in shown.splitlines() if line.startswith("│ run") for cell in line.split("│")}
    assert {"1.500", "0.125", "0.25"} <= cells, shown
    assert "1.500 s" in _invoke("runs", "ls", "--root", tmp_path / "runs").output
    assert "1.500 s" in _invoke("runs", "compare", first, second, "--root", tmp_path / "runs").output
    assert "## fit_seconds (s)" in (second / "report.md").read_text()


TRAINING = {
    "train-hetero-encoder": """\
name: stories
data: {dataset: digits, limit: 40}
stages:
  - associate: {}
  - train-hetero-encoder: {code: 16, epochs: 6, batch_size: 10, noise: 0.01}
  - chain-recall: {model: network, network: hetero_encoder, steps: 4, stories: 0}
""",
    "train-dam": """\
name: dam
stages:
  - load: {dataset: digits, split: test, limit: 50, output: test_images, labels: test_labels}
  - load: {dataset: digits, split: train, limit: 200}
  - train-dam: {n: 3, memories: 10, epochs: 6, batch_size: 50, test: test_images, test_labels: test_labels, shown: 0}
""",
    "train-autoencoder": """\
name: ae
data: {dataset: digits, limit: 100}
stages:
  - train-autoencoder: {hidden: [16], code: 4, epochs: 6, batch_size: 25, checkpoint: AE}
""",
}


@pytest.mark.parametrize("stage", list(TRAINING))
def test_an_interrupted_training_resumes_from_its_checkpoint(stage, tmp_path, monkeypatch):
    """Ctrl-C after epoch 3 of 6, then --resume: epochs 4-6 alone are trained, to the same numbers."""
    from amemctl.engine.context import Context
    from amemctl.training import checkpoints

    monkeypatch.setattr(checkpoints, "CHECKPOINT_SECONDS", 0.0)
    epochs: list[int] = []
    stop = {"at": None}

    def spy(self, epoch, loss):
        epochs.append(epoch)
        if epoch == stop["at"]:
            raise KeyboardInterrupt

    monkeypatch.setattr(Context, "epoch_done", spy)

    def run(name, **options):
        monkeypatch.setenv("AMEMCTL_CHECKPOINTS", str(tmp_path / name / "checkpoints"))
        text = TRAINING[stage].replace("AE", str(tmp_path / name / "ae.pt"))
        return run_pipeline(parse_text(text, "t.yaml"), out_root=tmp_path / name / "runs", device="cpu", progress=False, **options)

    whole = run("whole")
    assert epochs == [1, 2, 3, 4, 5, 6]
    epochs.clear()
    stop["at"] = 3
    with pytest.raises(KeyboardInterrupt):
        run("cut")
    (run_dir,) = (tmp_path / "cut" / "runs").glob("*/*")
    assert read_record(run_dir)["status"] == "interrupted"
    epochs.clear()
    stop["at"] = None
    run("cut", resume=run_dir)
    assert epochs == [4, 5, 6]
    assert _metrics(run_dir) == _metrics(whole.run_dir)
    epochs.clear()
    run("cut")  # a finished training is reused as it is
    assert epochs == []


@pytest.mark.parametrize(
    "stage",
    [
        "train-autoencoder: {hidden: [16], code: 4, epochs: 1, batch_size: 25}",
        "train-simclr: {arch: small, epochs: 1, batch_size: 16}",
    ],
)
def test_a_training_without_a_checkpoint_path_saves_under_amemctl_checkpoints(stage, tmp_path, monkeypatch):
    """$AMEMCTL_CHECKPOINTS is where every training stage's default checkpoints go: not checkpoints/ in the working folder."""
    folder = tmp_path / "elsewhere"
    monkeypatch.setenv("AMEMCTL_CHECKPOINTS", str(folder))
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    data = "{dataset: patches32, limit: 32}" if "simclr" in stage else "{dataset: digits, limit: 50}"
    run_pipeline(parse_text(f"name: t\ndata: {data}\nstages:\n  - {stage}\n", "t.yaml"), out_root=tmp_path / "runs", device="cpu", progress=False)
    assert not (work / "checkpoints").exists()
    assert any(folder.iterdir())


def test_checkpoints_are_saved_at_most_every_checkpoint_seconds_and_after_the_last_epoch(monkeypatch):
    from functools import partial
    from types import SimpleNamespace

    from amemctl.training import checkpoints

    now = [100.0]
    monkeypatch.setattr(checkpoints, "time", SimpleNamespace(monotonic=lambda: now[0]))
    monkeypatch.setattr(checkpoints, "CHECKPOINT_SECONDS", 30.0)
    throttle, saved = checkpoints.Throttle(), []
    for epoch, at in enumerate([110.0, 131.0, 140.0, 165.0, 170.0], 1):
        now[0] = at
        throttle(partial(saved.append, epoch), last=epoch == 5)
    assert saved == [2, 4, 5]


def test_example_grids_split_per_condition_fit_a_screen_and_mark_wrong_retrievals(run_text, monkeypatch):
    import matplotlib.pyplot as plt

    from amemctl import figures

    pages = []
    draw = figures.image_grid
    monkeypatch.setattr(figures, "image_grid", lambda rows, path, title="": pages.append([r[0] for r in rows]) or draw(rows, path, title))
    text = SWEEP.replace("  - corrupt: ${corruption}", "  - corrupt: {count: 24, kind: '${corruption.kind}'}").replace("report: {count: 3}", "report: {count: 24}")
    text = text.replace("corruption: [{kind: gaussian, variance: 0.1}, {kind: mask_zero, fraction: 0.5}]", "corruption: [{kind: gaussian}, {kind: mask_zero}]")
    run = run_text(text + "  formats: [png, svg]\n")
    pngs = sorted((run.run_dir / "figures").glob("retrievals*.png"))
    assert len(pngs) >= 2, "1 original + 2 query rows + 8 retrieval rows must not be one figure"
    for png in pngs:
        height, width = plt.imread(png).shape[:2]
        assert height <= 100 * (figures.MAX_ROWS + 1.5) and png.with_suffix(".svg").is_file(), png
    assert any("corruption=gaussian" in p.name for p in pngs) or any("beta=" in p.name for p in pngs)
    # every part of a condition starts with its originals and its queries, then 2 of its 4 retrievals
    assert len(pages) == 4 and all(labels[:2] == ["original", "queries"] and len(labels) == 4 for labels in pages), pages
    for point in run.points:
        (retrieved,) = [row for row in point.examples["retrievals"] if row[0] == "retrieved"]
        assert retrieved[2].float().mean().item() == pytest.approx(point.metrics["error_index"])


def test_a_rewritten_report_removes_its_earlier_pages_and_keeps_other_figures(run_text):
    import io

    from rich.console import Console

    from amemctl.engine import results

    run = run_text(SWEEP)
    folder = run.run_dir / "figures"
    written = {p.name for p in folder.glob("retrievals*")}
    stale = [folder / "retrievals-07-corruption=old.png", folder / "retrievals-12.svg"]  # pages of an earlier paging
    mine = [folder / "retrievals_by_hand.png", folder / "curve-retrievals.png", folder / "notes.txt"]
    for path in stale + mine:
        path.write_bytes(b"x")
    results.write_outputs(run, Console(file=io.StringIO()))
    assert {p.name for p in folder.glob("retrievals*")} == written | {"retrievals_by_hand.png"}
    assert all(path.is_file() for path in mine)


def test_long_rows_wrap_so_a_grid_fits_one_screen(tmp_path):
    import matplotlib.pyplot as plt

    from amemctl import figures

    rows = [(f"n={n}", torch.rand(24, 1, 8, 8), torch.arange(24) % 5 == 0) for n in (2, 3, 20, 30)]  # digits_dam's memories
    path = figures.image_grid(rows, tmp_path / "memories.png", title="digits_dam: memories")
    height, width = plt.imread(path).shape[:2]
    assert width <= 1600 and height <= 1000, (width, height)
    assert figures.lines_per_row(24) == 2 and figures.lines_per_row(14) == 1


def test_curve_bands_stay_within_the_metric_bounds(tmp_path, monkeypatch):
    import matplotlib.axes

    from amemctl import figures

    seen = []
    original = matplotlib.axes.Axes.fill_between

    def spy(self, x, low, high, **kw):
        seen.append((list(low), list(high)))
        return original(self, x, low, high, **kw)

    monkeypatch.setattr(matplotlib.axes.Axes, "fill_between", spy)
    figures.curves({"a": ([1, 2, 3], [0.02, 0.5, 0.97], [0.1, 0.1, 0.1])}, tmp_path / "c.png", title="t", xlabel="x", ylabel="y", percent=True, bounds=(0.0, 1.0))
    (low, high), = seen
    assert low == pytest.approx([0, 40, 87]) and high == pytest.approx([12, 60, 100])


def test_curves_read_the_metrics_their_stages_declare(tmp_path, monkeypatch):
    """A curve is titled, labelled and bounded by the Metric its stage declares (evaluate's prefix leads its words);
    a metric no stage describes is shown by its name."""
    from amemctl import figures

    drawn = {}
    monkeypatch.setattr(figures, "curves", lambda series, path, **kw: drawn.setdefault(kw["ylabel"], kw) and path)
    text = (
        "name: c\ndata: {dataset: digits, subset: 30}\nsweep: {v: [0.1, 0.5]}\nstages:\n"
        "  - corrupt: {kind: gaussian, variance: '${v}'}\n  - score: {}\n  - separate: {function: max}\n  - project: {}\n"
        "  - evaluate: {prefix: semantic_}\n"
        "report:\n  curves:\n    - {metric: semantic_error_index, x: v}\n    - {metric: semantic_mse, x: v}\n    - {metric: seconds.evaluate, x: v}\n"
    )
    run_pipeline(parse_text(text, "c.yaml"), out_root=tmp_path, device="cpu", progress=False)
    error = drawn["semantic: wrongly retrieved"]
    assert error["title"] == "semantic: wrongly retrieved (nearest stored pattern is not the original)"
    assert error["percent"] and error["bounds"] == (0.0, 1.0)
    mse = drawn["semantic: mean squared error"]
    assert not mse["percent"] and mse["bounds"] == (0.0, None)
    assert drawn["seconds.evaluate"]["title"] == "seconds.evaluate"  # a timing: no stage declares it


def test_a_metric_is_declared_by_name_or_as_a_metric():
    from amemctl import Metric

    assert Metric.of("rmse") == Metric("rmse") and Metric("rmse").title == "rmse" == Metric("rmse").label
    words = Metric("mse", "mean squared error per value", "mean squared error", 0.0).prefixed("pass1 - ")
    assert (words.name, words.title, words.label, words.low) == ("pass1 - mse", "pass1: mean squared error per value", "pass1: mean squared error", 0.0)
    with pytest.raises(TypeError, match=r"metrics\(\) listed 3: a stage lists the metrics it records as names or amemctl.Metric"):
        Metric.of(3)


def test_validate_warns_about_absent_data_and_tables_name_the_column_variable(tmp_path, monkeypatch, run_text):
    monkeypatch.setenv("AMEMCTL_DATA", str(tmp_path / "empty"))
    result = CliRunner().invoke(main, ["validate", str(ROOT / "pipelines" / "mnist_dam.yaml"), str(ROOT / "pipelines" / "quickstart.yaml")])
    assert result.exit_code == 0
    assert "dataset 'mnist' (split train) is not in" in result.stderr and "amemctl data download mnist" in result.stderr
    assert "quickstart" not in result.stderr  # bundled data: nothing to warn about
    run = run_text(SWEEP.replace("beta: [1, 10, 100, 1000]", "beta: [1]"))
    assert "| corruption \\ beta | 1 |" in (run.run_dir / "report.md").read_text()


def test_the_default_column_says_what_an_unset_parameter_means():
    from amemctl.plugins import build_registry

    stages = build_registry(entry_points=False).stages
    assert stages["train-dam"].params["temperature"].default_text() == "the 99th percentile of the initial inputs"
    assert stages["train-dam"].params["n"].default_text() == "3"
    assert stages["load"].params["dataset"].default_text() == "required"
    assert stages["chain-recall"].params["network"].default_text() == "none"


def test_a_training_in_a_log_prints_progress_lines_with_its_loss(tmp_path, monkeypatch):
    """Without a terminal a long training still says how far it is: count, loss, time each, ETA."""
    import re

    from amemctl import context

    monkeypatch.setattr(context, "LOG_SECONDS", 0.0)  # a line after every epoch
    monkeypatch.setenv("AMEMCTL_CHECKPOINTS", str(tmp_path / "checkpoints"))
    (tmp_path / "dam.yaml").write_text(TRAINING["train-dam"])
    result = _invoke("run", tmp_path / "dam.yaml", "--out", tmp_path / "runs", "--device", "cpu")
    assert result.exit_code == 0, result.output
    lines = [line for line in result.output.splitlines() if re.match(r"^    \S.*: \d+/6, loss [-+.\de]+; [.\d]+ s each, ETA \d:\d\d:\d\d$", line)]
    assert [line.split(": ")[1].split(",")[0] for line in lines] == [f"{k}/6" for k in range(1, 7)], result.output
    assert lines[-1].endswith("ETA 0:00:00")


def test_a_points_saved_examples_hold_the_shown_rows_not_the_whole_batch(tmp_path, run_text):
    """report shows the first 4 of 1,000 queries: each point file keeps those 4 rows, not the 1,000 they were cut from."""
    text = """\
data: {dataset: patches32, subset: 1000}
stages:
  - corrupt: {kind: gaussian, std: 0.1}
  - score: {similarity: dot}
  - separate: {function: max}
  - project: {}
  - report: {images: [queries, retrieved], count: 4}
"""
    run = run_text(text)
    (saved,) = (run.run_dir / "points").glob("*.pt")
    assert saved.stat().st_size < 3 * 4 * 3072 * 4 + 2**16  # three rows (originals, queries, retrievals) of 4 images of 3,072 floats, and the rest
    shown = [row[1] for rows in run.points[0].examples.values() for row in rows]
    assert shown and all(t.untyped_storage().nbytes() == t.numel() * t.element_size() for t in shown)


def test_a_run_outside_git_records_the_commit_that_amemctl_git_commit_names(tmp_path, monkeypatch):
    """The GPU machine runs a copy of the working tree without .git: AMEMCTL_GIT_COMMIT says
    which commit it is, so run.json (and a model card made from it) names the code that ran."""
    pipeline = tmp_path / "small.yaml"
    pipeline.write_text(SWEEP)

    def recorded_git():
        run_dir = run_pipeline(parse_text(SWEEP, str(pipeline)), out_root=tmp_path / "runs", device="cpu", progress=False).run_dir
        return read_record(run_dir)["git"]

    monkeypatch.delenv("AMEMCTL_GIT_COMMIT", raising=False)
    assert recorded_git() is None  # tmp_path is not in a checkout, and nothing declares one
    monkeypatch.setenv("AMEMCTL_GIT_COMMIT", "3621536abcdef0123456789abcdef0123456789a-dirty")
    assert recorded_git() == {"commit": "3621536abcdef0123456789abcdef0123456789a", "dirty": True}
    monkeypatch.setenv("AMEMCTL_GIT_COMMIT", "3621536")
    assert recorded_git() == {"commit": "3621536", "dirty": False}
    monkeypatch.setenv("AMEMCTL_GIT_COMMIT", "not a commit; rm -rf /")
    assert recorded_git() is None  # what is not a commit is not recorded as one
    inside = ROOT / "pipelines" / "quickstart.yaml"  # in this checkout git wins over the variable
    monkeypatch.setenv("AMEMCTL_GIT_COMMIT", "0000000")
    from amemctl.engine.records import git_state

    if (ROOT / ".git").exists():  # the GPU machine's copy of the tree has none
        assert git_state(inside)["commit"] != "0000000"
