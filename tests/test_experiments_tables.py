"""tools/experiments_tables.py: docs tables regenerated from a run's report.md, not typed."""

from __future__ import annotations

import importlib.util
import json

from tests.conftest import ROOT

spec = importlib.util.spec_from_file_location("experiments_tables", ROOT / "tools" / "experiments_tables.py")
tool = importlib.util.module_from_spec(spec)
spec.loader.exec_module(tool)

REPORT = """# p

## wrongly retrieved (%)

| corruption | similarity \\ beta | 1 | 10 |
|---|---|---:|---:|
| gaussian | dot | 91.4 | 90.0 |
| gaussian | cosine | 30.4 | 30.3 |
| mask | dot | 95.3 | 95.0 |

## Time per step (s, median over sweep points)

| step | median | runs |
|---|---:|---:|
| load | 2.1 | 4 |
"""


def _run(tmp_path, status="finished"):
    run_dir = tmp_path / "runs" / "p" / "20260101-000000"
    run_dir.mkdir(parents=True)
    (run_dir / "run.json").write_text(json.dumps({"format": "amemctl-run", "pipeline": "p", "status": status}))  # as amemctl writes it, less what the tool does not read
    (run_dir / "resolved.yaml").write_text("seed: 3\n")
    (run_dir / "report.md").write_text(REPORT)
    return run_dir


def test_marked_tables_are_replaced_by_the_runs_table_and_others_are_kept(tmp_path):
    run_dir = _run(tmp_path)
    doc = tmp_path / "doc.md"
    doc.write_text("text\n<!-- table p: wrongly retrieved -->\n| old | typed |\n<!-- /table -->\n<!-- table q: other -->\nkept\n<!-- /table -->\n")
    assert tool.main([str(run_dir), "--write", str(doc)]) == 0
    text = doc.read_text()
    assert "| old | typed |" not in text and "<!-- table q: other -->\nkept\n" in text
    assert "| gaussian | dot | 91.4 | 90.0 |\n| | cosine | 30.4 | 30.3 |\n| mask | dot | 95.3 | 95.0 |" in text  # repeats blanked
    assert "from the run p/20260101-000000, seed 3" in text and "median" not in text


def test_an_unfinished_run_is_refused(tmp_path, capsys):
    run_dir = _run(tmp_path, status="interrupted")
    assert tool.main([str(run_dir)]) == 2
    assert "did not finish" in capsys.readouterr().err
