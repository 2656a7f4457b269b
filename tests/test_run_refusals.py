"""A disk that fills up (or fails) under a run folder, a stage's own files or a command's output.

Every file the run folder had is kept whole, no temporary file is left, the run stops with
one message naming the folder and the fix (exit 2, no traceback) and `--resume` finishes it
with the same metrics once there is room. A stage whose file the disk refuses is no crash; a
store error is not hidden by the report that no longer fits either.
"""

from __future__ import annotations

import errno
import json
import math
import os
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from amemctl.cli import main
from amemctl.dsl.pipeline import parse_text
from amemctl.engine import records
from amemctl.engine.records import read_record
from amemctl.engine.runner import run_pipeline
from amemctl.errors import AmemctlError
from tests.fakedisk import BLOCK, FakeDisk
from tests.test_store_refusals import _store, _unfinished

SMALL = """\
name: small
seed: 0
data: {dataset: digits, limit: 100}
sweep:
  beta: [1, 1000]
stages:
  - corrupt: {kind: gaussian, variance: 0.1}
  - score: {similarity: manhattan}
  - separate: {function: softmax, beta: "${beta}"}
  - project: {}
  - evaluate: {threshold: 1.0}
  - report: {count: 3}
report:
  tables: [{metric: error_index, rows: [beta]}]
"""


def _invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def _metrics(run_dir: Path) -> list:
    doc = json.loads((run_dir / "metrics.json").read_text())
    return [{k: v for k, v in p["metrics"].items() if not k.startswith("seconds.")} for p in doc["points"]]


def test_a_run_whose_folder_fills_up_stops_with_one_message_and_resumes(tmp_path, monkeypatch):
    """At blocks from the first file to the report: exit 2 naming the run folder and the fix, no temporary files left; resumed, the same metrics."""
    (tmp_path / "small.yaml").write_text(SMALL)
    clean = _invoke("run", tmp_path / "small.yaml", "--out", tmp_path / "clean", "--quiet")
    assert clean.exit_code == 0, clean.output
    (clean_dir,) = (tmp_path / "clean" / "small").iterdir()
    blocks = sum(math.ceil(p.stat().st_size / BLOCK) for p in clean_dir.rglob("*") if p.is_file())
    for free in sorted({0, 2 * BLOCK, 6 * BLOCK, (blocks - 3) * BLOCK, (blocks - 1) * BLOCK}):
        out = tmp_path / f"free-{free}"
        out.mkdir()
        with monkeypatch.context() as patch:
            FakeDisk(out, patch, free=free)
            result = _invoke("run", tmp_path / "small.yaml", "--out", out, "--quiet")
        assert result.exit_code == 2 and "Traceback" not in result.output and not isinstance(result.exception, OSError), (free, result.output)
        assert "No space left on device" in result.output and "free space on its disk" in result.output, (free, result.output)
        assert _unfinished(out) == [], free
        runs = list((out / "small").iterdir())
        if not runs:  # the disk filled before run.json: the new folder is gone, and the message said so
            assert "the folder is removed again, as the run had not started" in result.output and "then run it again" in result.output
            continue
        (run_dir,) = runs
        assert f"cannot write to the run folder {run_dir}" in result.output and f"amemctl run --resume {run_dir}" in result.output, result.output
        with monkeypatch.context() as patch:
            patch.setattr(records, "_alive", lambda pid: False)  # the failed run's process has ended (here it is this one)
            resumed = _invoke("run", "--resume", run_dir, "--quiet")
        assert resumed.exit_code == 0, (free, resumed.output)
        assert read_record(run_dir)["status"] == "finished" and _metrics(run_dir) == _metrics(clean_dir), free


def test_a_resume_on_a_full_disk_keeps_every_file_the_run_had(tmp_path, monkeypatch):
    """pipeline.yaml (what --resume runs), report.md and the rest are replaced whole or not at all."""
    (tmp_path / "small.yaml").write_text(SMALL)
    assert _invoke("run", tmp_path / "small.yaml", "--out", tmp_path / "runs", "--quiet").exit_code == 0
    (run_dir,) = (tmp_path / "runs" / "small").iterdir()
    before = {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}
    with monkeypatch.context() as patch:
        FakeDisk(tmp_path, patch, free=0, code=errno.EIO)
        result = _invoke("run", "--resume", run_dir, "--quiet")
    assert result.exit_code == 2 and f"cannot write to the run folder {run_dir}: {os.strerror(errno.EIO)}" in result.output, result.output
    assert {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()} == before


def test_a_stage_store_and_run_folder_on_one_full_disk_tell_the_store_error(tmp_path, monkeypatch):
    """The report and run.json cannot be written either: warned of, while the error told is the persist's, not a traceback."""
    from amemctl.stages.store import Persist

    store = tmp_path / "s.zarr"
    text = f"name: persist\ndata: {{dataset: digits, limit: 50}}\nstages:\n  - persist: {{store: {store}}}\n"
    (tmp_path / "p.yaml").write_text(text)
    real = Persist.run
    disk = FakeDisk(tmp_path, monkeypatch)

    def disk_fills(self, ctx):
        disk.free = 0
        real(self, ctx)

    monkeypatch.setattr(Persist, "run", disk_fills)
    result = _invoke("run", tmp_path / "p.yaml", "--out", tmp_path / "runs", "--quiet")
    assert result.exit_code == 2 and "Traceback" not in result.output and not isinstance(result.exception, OSError), result.output
    assert f"stage 'persist' failed (run): cannot write to the store {store}: No space left on device" in result.output
    assert "warning: the report of this run could not be written" in result.output and not store.exists()


def test_a_stage_whose_file_the_disk_refuses_is_no_crash(tmp_path, monkeypatch):
    """A training checkpoint (torch.save, which says only `RuntimeError: ... unexpected pos`) on a full disk: exit 2 with the fix, not a bug report."""
    from amemctl.models.encoders import save_atomically
    from amemctl.plugins import build_registry
    from amemctl.stage import Stage

    class Checkpoint(Stage):
        name = "checkpoint"

        def run(self, ctx):
            save_atomically({"state": torch.rand(100_000)}, tmp_path / "checkpoints" / "c.pt")

    registry = build_registry()
    registry.stages["checkpoint"] = Checkpoint
    pipeline = parse_text("name: ckpt\ndata: {dataset: digits, limit: 20}\nstages:\n  - checkpoint: {}\n", "c.yaml", registry=registry)
    with monkeypatch.context() as patch:
        FakeDisk(tmp_path / "checkpoints", patch, free=BLOCK)
        with pytest.raises(AmemctlError) as failed:
            run_pipeline(pipeline, out_root=tmp_path / "runs", device="cpu", progress=False)
    error = failed.value
    assert error.exit_code == 2 and error.message == f"stage 'checkpoint' failed (run): {tmp_path / 'checkpoints' / 'c.pt'}: No space left on device"
    assert "free space on its disk" in error.hint and "amemctl run --resume" in error.hint
    assert list((tmp_path / "checkpoints").iterdir()) == []


def test_a_stop_while_a_checkpoint_is_written_interrupts_the_run(tmp_path, monkeypatch):
    """Ctrl-C inside torch.save's writes (which torch's writer turns into `RuntimeError: unexpected pos`): the run is interrupted, not crashed, and no partial file stays."""
    from amemctl.engine.records import Interrupted
    from amemctl.models import encoders
    from amemctl.plugins import build_registry
    from amemctl.stage import Stage

    class Checkpoint(Stage):
        name = "checkpoint"

        def run(self, ctx):
            encoders.save_atomically({"state": torch.rand(1_000_000)}, tmp_path / "checkpoints" / "c.pt")

    class Stopping:
        """A file whose third write is cut short by a stop signal."""

        def __init__(self, file):
            self.file, self.writes = file, 0

        def write(self, data):
            self.writes += 1
            if self.writes == 3:
                raise Interrupted(2)
            return self.file.write(data)

        def flush(self):
            self.file.flush()

    real = encoders._Sink.__init__
    monkeypatch.setattr(encoders._Sink, "__init__", lambda self, file: real(self, Stopping(file)))
    registry = build_registry()
    registry.stages["checkpoint"] = Checkpoint
    pipeline = parse_text("name: ckpt\ndata: {dataset: digits, limit: 20}\nstages:\n  - checkpoint: {}\n", "c.yaml", registry=registry)
    with pytest.raises(Interrupted):
        run_pipeline(pipeline, out_root=tmp_path / "runs", device="cpu", progress=False)
    (run_dir,) = (tmp_path / "runs" / "ckpt").iterdir()
    assert read_record(run_dir)["status"] == "interrupted"
    assert list((tmp_path / "checkpoints").iterdir()) == []


def test_a_figure_the_disk_refuses_is_one_message_and_keeps_the_one_there(tmp_path, monkeypatch):
    path = _store(tmp_path / "s.zarr")
    png = tmp_path / "figs" / "grid.png"
    png.parent.mkdir()
    png.write_bytes(b"an earlier figure")
    with monkeypatch.context() as patch:
        FakeDisk(png.parent, patch, free=0)
        result = _invoke("store", "show", path, "-o", png)
    assert result.exit_code == 2 and "Traceback" not in result.output and f"error: {png}: No space left on device" in result.output, result.output
    assert png.read_bytes() == b"an earlier figure" and _unfinished(tmp_path) == []


def test_a_refusal_that_names_no_file_is_not_blamed_on_the_run_folder(tmp_path):
    """The standard output on a full disk (an OSError naming no file) is not the run folder's: no `df -h` of a wrong disk, no `None`."""
    from amemctl.engine.runner import run_refusal

    run_dir = tmp_path / "runs" / "small" / "1"
    unnamed = run_refusal(OSError(errno.ENOSPC, "No space left on device"), run_dir)
    assert unnamed.message == "a file it did not name: No space left on device"
    assert "None" not in unnamed.hint and "the standard output" in unnamed.hint and f"amemctl run --resume {run_dir}" in unnamed.hint
    elsewhere = run_refusal(OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "stores" / "s.zarr")), run_dir)
    assert "run folder" not in elsewhere.message and f"df -h {tmp_path}" in elsewhere.hint
    inside = run_refusal(OSError(errno.ENOSPC, "No space left on device", str(run_dir / "metrics.json")), run_dir)
    assert inside.message.startswith(f"cannot write to the run folder {run_dir}")


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full (Linux)")
def test_a_command_whose_output_the_disk_refuses_says_so_without_a_traceback(tmp_path):
    import subprocess
    import sys

    for command in (["runs", "ls", str(tmp_path)], ["--help"]):  # --help prints while click parses, before the command runs
        with open("/dev/full", "w") as full:
            done = subprocess.run([sys.executable, "-m", "amemctl", *command], stdout=full, stderr=subprocess.PIPE, text=True, timeout=120)
        assert done.returncode == 2 and "Traceback" not in done.stderr, (command, done.stderr)
        assert "error: a file it did not name: No space left on device" in done.stderr and "the standard output" in done.stderr, done.stderr
    (tmp_path / "small.yaml").write_text(SMALL)  # a run whose progress lines (not a terminal) go to a full disk from its first
    with open("/dev/full", "w") as full:
        done = subprocess.run([sys.executable, "-m", "amemctl", "run", "small.yaml", "--out", "runs"], cwd=tmp_path, stdout=full, stderr=subprocess.PIPE, text=True, timeout=300)
    (run_dir,) = (tmp_path / "runs" / "small").iterdir()
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert f"amemctl run --resume {Path('runs/small') / run_dir.name}" in done.stderr and read_record(run_dir)["status"] == "failed", done.stderr


def test_a_run_stopped_on_a_full_disk_still_says_how_to_resume_it(tmp_path, monkeypatch):
    """Ctrl-C once the disk is full: the report no longer fits (a warning), but the run's last line, with the --resume command, is still printed."""
    import signal

    from amemctl.engine import runner

    (tmp_path / "small.yaml").write_text(SMALL)
    out = tmp_path / "runs"
    out.mkdir()
    disk = FakeDisk(out, monkeypatch)
    real = runner.save_point

    def save_point(*args, **kwargs):
        real(*args, **kwargs)
        disk.free = 0  # the disk is now full, and the user presses Ctrl-C
        os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(runner, "save_point", save_point)
    result = _invoke("run", tmp_path / "small.yaml", "--out", out, "--quiet")
    (run_dir,) = (out / "small").iterdir()
    assert result.exit_code == 130 and "the report of this run could not be written" in result.output, result.output
    assert f"run interrupted after 0 of 2 points; continue it with `amemctl run --resume {run_dir}`" in result.output, result.output  # stopped as it saved the first


def test_a_resume_stopped_before_it_resumes_leaves_the_run_as_it_was_and_says_so(tmp_path, monkeypatch):
    """Ctrl-C while `--resume` writes its inputs: not "nothing to resume", but the run as it was and the command that continues it."""
    from amemctl.engine import runner
    from amemctl.engine.records import Interrupted

    (tmp_path / "small.yaml").write_text(SMALL)
    real = runner.save_point

    def save_point(*args, **kwargs):
        real(*args, **kwargs)
        raise Interrupted(2)

    with monkeypatch.context() as patch:
        patch.setattr(runner, "save_point", save_point)
        assert _invoke("run", tmp_path / "small.yaml", "--out", tmp_path / "runs", "--quiet").exit_code == 130
    (run_dir,) = (tmp_path / "runs" / "small").iterdir()

    def environment(device):
        raise Interrupted(2)

    monkeypatch.setattr("amemctl.engine.results.environment", environment)  # written first, and slow: where a stop most likely lands
    result = _invoke("run", "--resume", run_dir, "--quiet")
    assert result.exit_code == 130, result.output
    assert f"run stopped by SIGINT before it resumed: {run_dir} is as it was; continue it with `amemctl run --resume {run_dir}`" in result.output, result.output
    assert read_record(run_dir)["status"] == "interrupted" and list((run_dir / "points").iterdir())
