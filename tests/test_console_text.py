"""What amemctl prints of the user's text (paths, overrides, messages, docs) reads as written.

rich reads `[dot, cosine]` as a markup tag and drops it, raises on a stray closing tag such as
`[/x]`, and turns `:x:` into an emoji: `runs show` printed the command of a run without its
`--set 'sweep.similarity=[dot, cosine]'` values, and crashed with a traceback on a run whose
error named a path holding `[/x]`.
"""

from __future__ import annotations

import io
import threading

from click.testing import CliRunner

from amemctl import MemoryStore
from amemctl.cli import main
from amemctl.console import console
from amemctl.dsl.pipeline import parse_text
from amemctl.engine.runner import run_pipeline

ODD = "a[/x][bold]b[/bold]:x:"


def _invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_runs_ls_show_and_compare_print_overrides_paths_and_errors_as_written(tmp_path):
    pipeline = tmp_path / "p.yaml"
    pipeline.write_text("name: p\nstages:\n  - open_store: {store: nowhere.zarr}\n  - corrupt: {count: 5}\n")
    store = tmp_path / f"{ODD}.zarr"
    MemoryStore.create(store)  # there, so the run starts (engine.files checks that first), but empty: the run fails naming it
    runs = tmp_path / "runs"
    override = f"stages.open_store.store={store}"
    for _ in range(2):
        failed = _invoke("run", pipeline, "--set", override, "--set", "description=x [dot, cosine]", "--out", runs, "--quiet")
        assert failed.exit_code == 2, failed.output
    first, second = sorted((runs / "p").iterdir())
    for args in (("runs", "ls", "--root", runs), ("runs", "show", second, "--root", runs), ("runs", "compare", first, second, "--root", runs)):
        result = CliRunner().invoke(main, [str(a) for a in args], env={"COLUMNS": "1000"})
        assert result.exit_code == 0, result.output
        assert "description=x [dot, cosine]" in result.output and ODD in result.output, result.output
    shown = CliRunner().invoke(main, ["runs", "show", str(second), "--root", str(runs)], env={"COLUMNS": "1000"}).output
    assert f"{store} holds no rows" in shown, shown  # the error's message, whole


def test_store_inspect_and_ls_print_a_path_as_written(tmp_path):
    pipeline = tmp_path / "p.yaml"
    store = tmp_path / "stores" / f"{ODD}.zarr"
    pipeline.write_text(f"name: p\ndata: {{dataset: digits, limit: 10}}\nstages:\n  - persist: {{store: '{store}'}}\n")
    assert _invoke("run", pipeline, "--out", tmp_path / "runs", "--quiet").exit_code == 0
    for args in (("store", "inspect", store), ("store", "ls", tmp_path / "stores")):
        result = CliRunner().invoke(main, [str(a) for a in args], env={"COLUMNS": "1000"})
        assert result.exit_code == 0 and ODD in result.output, result.output


def test_an_error_message_keeps_a_colon_pair_as_written(tmp_path):
    (tmp_path / "p.yaml").write_text("stages:\n  - load: {dataset: digits}\n")
    result = _invoke("validate", "--set", "device=cuda:x", tmp_path / "p.yaml")
    assert "unknown device 'cuda:x'" in result.output and "❌" not in result.output, result.output


def test_a_parameter_doc_keeps_its_brackets():
    assert "[low, high]: range of the fraction" in CliRunner().invoke(main, ["stages", "crop"], env={"COLUMNS": "1000"}).output


def test_progress_bars_show_paths_and_sweep_values_as_written(tmp_path, monkeypatch):
    """A bar's description is a point's label and a stage's path: a `[/x]` in it made rich's refresh thread raise at every refresh."""
    raised: list[BaseException] = []
    monkeypatch.setattr(threading, "excepthook", lambda args: raised.append(args.exc_value))
    stores = [str(tmp_path / f"{ODD}{n}.zarr") for n in range(2)]
    text = (
        f"name: t\ndata: {{dataset: digits, limit: 300}}\nsweep:\n  store: {stores}\nstages:\n"
        "  - persist: {store: '${store}', mode: replace}\n  - corrupt: {kind: gaussian}\n"
        "  - score: {}\n  - separate: {function: max}\n  - project: {}\n"
    )
    out = io.StringIO()
    run_pipeline(parse_text(text, "t.yaml"), out_root=tmp_path / "runs", device="cpu", progress=True, console=console(file=out, force_terminal=True, width=300))
    assert not raised, raised
