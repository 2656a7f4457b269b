"""Folders named as runs that are not amemctl's, or whose files were edited: one clear error naming
the file (exit 2), or for a point file a recomputed point; never a traceback, never a user's file
written over."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from rich.console import Console

from amemctl import results
from amemctl.cli import main
from amemctl.dsl.pipeline import parse_text
from amemctl.engine.runner import run_pipeline
from amemctl.errors import AmemctlError
from tests.test_runs import SWEEP

SMALL = SWEEP  # the sweep of tests/test_runs.py


def _invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def _run(tmp_path: Path, text: str = SMALL) -> Path:
    tmp_path.mkdir(exist_ok=True)
    pipeline = tmp_path / "small.yaml"
    pipeline.write_text(text)
    return run_pipeline(parse_text(text, str(pipeline)), out_root=tmp_path / "runs", device="cpu", progress=False).run_dir


def _metrics(run_dir: Path) -> list:
    doc = json.loads((run_dir / "metrics.json").read_text())
    return [{k: v for k, v in p["metrics"].items() if not k.startswith("seconds.")} for p in doc["points"]]


def test_resume_refuses_a_folder_that_is_not_a_run_and_leaves_its_files_alone(tmp_path):
    """A project folder with its own pipeline.yaml, report.md and metrics.csv is not a run folder."""
    project = tmp_path / "proj"
    project.mkdir()
    (project / "pipeline.yaml").write_text(SMALL)
    (project / "report.md").write_text("my own report\n")
    (project / "metrics.csv").write_text("my,own\n1,2\n")
    for args in (("run", "--resume", project), ("runs", "show", project), ("runs", "compare", project, project)):
        result = _invoke(*args)
        assert result.exit_code == 2, (args, result.output)
        assert f"{project} is not an amemctl run folder: it has no run.json" in result.output and "Traceback" not in result.output
        assert f"amemctl run {project / 'pipeline.yaml'}" in result.output  # the hint says how to run the pipeline in it
    (project / "run.json").write_text(json.dumps({"format": "my-tool", "pipeline": "small"}))
    result = _invoke("run", "--resume", project)
    assert result.exit_code == 2 and "was not written by amemctl (its `format` is 'my-tool'" in result.output
    assert (project / "report.md").read_text() == "my own report\n" and (project / "metrics.csv").read_text() == "my,own\n1,2\n"
    assert sorted(p.name for p in project.iterdir()) == ["metrics.csv", "pipeline.yaml", "report.md", "run.json"]


@pytest.mark.parametrize(
    "edit, expected",
    [
        (lambda r: "[" * 100_000, "run.json is damaged: it nests too deep"),
        (lambda r: "{\"format\": \xff}", "run.json is damaged: it is not JSON"),
        (lambda r: "[1, 2]", "run.json is damaged: it holds a JSON list, not an object"),
        (lambda r: {**r, "file": 5}, "run.json is damaged: field 'file' should be a string, not 5"),
        (lambda r: {**r, "overrides": "seed=3"}, "run.json is damaged: field 'overrides' should be a list of strings, not 'seed=3'"),
        (lambda r: {**r, "git": {"commit": 7}}, "run.json is damaged: field git.commit should be a string, not 7"),
        (lambda r: {**r, "pid": 10**30, "status": "running"}, None),  # a pid no process has: read as dead, not an OverflowError
    ],
)
def test_a_tampered_run_json_is_one_error_naming_it(tmp_path, edit, expected):
    run_dir = _run(tmp_path, SMALL.replace("beta: [1, 10, 100, 1000]", "beta: [1]"))
    other = _run(tmp_path / "other", SMALL.replace("beta: [1, 10, 100, 1000]", "beta: [1]"))
    record = json.loads((run_dir / "run.json").read_text())
    edited = edit(record)
    (run_dir / "run.json").write_bytes(edited.encode("latin-1") if isinstance(edited, str) else json.dumps(edited).encode())
    listing = _invoke("runs", "ls", "--root", tmp_path / "runs")
    assert listing.exit_code == 0 and "Traceback" not in listing.output, listing.output
    for args in (("run", "--resume", run_dir, "--quiet"), ("runs", "show", run_dir), ("runs", "compare", run_dir, other)):
        result = _invoke(*args)
        assert "Traceback" not in result.output and not isinstance(result.exception, Exception), (args, result.output, result.exception)
        if expected is None:
            assert result.exit_code == 0, (args, result.output)
        else:
            assert result.exit_code == 2 and f"{run_dir / 'run.json'}" in result.output and expected in result.output, (args, result.output)
    if expected is not None:
        assert "damaged" in listing.output


def test_a_run_without_its_pipeline_copy_is_listed_and_refused_for_resume(tmp_path):
    run_dir = _run(tmp_path, SMALL.replace("beta: [1, 10, 100, 1000]", "beta: [1]"))
    (run_dir / "pipeline.yaml").unlink()
    assert run_dir.name in _invoke("runs", "ls", "--root", tmp_path / "runs").output
    result = _invoke("run", "--resume", run_dir)
    assert result.exit_code == 2 and f"{run_dir} has no pipeline.yaml" in result.output


def test_a_recorded_pipeline_file_that_is_binary_or_not_a_path_resumes_from_the_copy(tmp_path):
    run_dir = _run(tmp_path, SMALL.replace("beta: [1, 10, 100, 1000]", "beta: [1]"))
    record = json.loads((run_dir / "run.json").read_text())
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(b"\xff\xfe\x00\x01" * 100)
    for file in (str(binary), str(tmp_path)):
        (run_dir / "run.json").write_text(json.dumps({**record, "file": file}))
        result = _invoke("run", "--resume", run_dir, "--quiet")
        assert result.exit_code == 0, result.output


def test_a_damaged_metrics_json_leaves_ls_show_and_compare_working(tmp_path):
    run_dir = _run(tmp_path, SMALL.replace("beta: [1, 10, 100, 1000]", "beta: [1]"))
    other = _run(tmp_path / "other", SMALL.replace("beta: [1, 10, 100, 1000]", "beta: [1]"))
    (run_dir / "metrics.json").write_text("[" * 100_000)
    with pytest.raises(AmemctlError, match="nests too deep"):
        results(run_dir)
    for text in ("[" * 100_000, json.dumps({"points": [{"sweep": 5, "metrics": [1]}, "x", {"sweep": {"a": [1]}, "metrics": {"error_index": "abc"}}]}), json.dumps({"points": "x", "pipeline": [1]})):
        (run_dir / "metrics.json").write_text(text)
        for args in (("runs", "ls", "--root", tmp_path / "runs"), ("runs", "show", run_dir), ("runs", "compare", run_dir, other, "--json")):
            result = _invoke(*args)
            assert result.exit_code == 0 and "Traceback" not in result.output, (args, result.output)


#: edits of a point file whose format and key stay right: each makes its point unusable
EDITS = {
    "no examples": lambda p: p.pop("examples"),
    "examples a list": lambda p: p.update(examples=[1, 2]),
    "metrics a list": lambda p: p.update(metrics=[0.5]),
    "a metric a string": lambda p: p.update(metrics={**p["metrics"], "error_index": "abc"}),
    "seed a string": lambda p: p.update(seed="abc"),
    "notes nested": lambda p: p.update(notes=[[1, 2, 3]]),
    "figure outside": lambda p: p.update(figures=["/etc/passwd"]),
    "1-D images": lambda p: p.update(examples={"retrievals": [("queries", torch.zeros(5))]}),
}


def test_a_tampered_point_file_is_recomputed_with_a_warning(tmp_path):
    """Each of 8 point files edited one way: --resume warns about each, recomputes it, and ends with the same metrics."""
    pipeline = parse_text(SMALL, str(tmp_path / "small.yaml"))
    whole = run_pipeline(pipeline, out_root=tmp_path / "runs", device="cpu", progress=False)
    files = sorted((whole.run_dir / "points").glob("*.pt"))
    assert len(files) == len(EDITS)
    for path, edit in zip(files, EDITS.values()):
        payload = torch.load(path, weights_only=True)
        edit(payload)
        torch.save(payload, path)
    out = io.StringIO()
    run_pipeline(parse_text(SMALL, str(tmp_path / "small.yaml")), device="cpu", progress=False, resume=whole.run_dir, console=Console(file=out, width=400))
    warnings = [line for line in out.getvalue().splitlines() if line.startswith("warning: ")]
    assert len(warnings) == len(EDITS) and all("is not usable" in w and w.endswith("computing that point again") for w in warnings), out.getvalue()
    assert _metrics(whole.run_dir) == [{k: v for k, v in p.metrics.items() if not k.startswith("seconds.")} for p in whole.points]
    assert all(torch.load(path, weights_only=True)["seed"] == 0 for path in files)  # rewritten whole


def test_restate_rewrites_the_status_line_of_the_report_not_a_description_line(tmp_path):
    """The --nproc launcher's correction of report.md and metrics.json (results.restate): the header's status, not a look-alike in the pipeline's description."""
    import json

    from amemctl.engine.results import restate

    (tmp_path / "report.md").write_text("# p\n\n- status: ok is what a description may say\n\n- pipeline: `p.yaml`\n- status: interrupted (1 of 4 sweep points)\n")
    (tmp_path / "metrics.json").write_text(json.dumps({"status": "interrupted", "points": []}))
    restate(tmp_path, "failed", "rank 1 failed (exit code 2): boom")
    assert (tmp_path / "report.md").read_text() == "# p\n\n- status: ok is what a description may say\n\n- pipeline: `p.yaml`\n- status: failed (1 of 4 sweep points)\n"
    assert json.loads((tmp_path / "metrics.json").read_text()) == {"status": "failed", "points": [], "error": "rank 1 failed (exit code 2): boom"}
