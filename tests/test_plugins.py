"""Plugin loading: built-ins through the hooks, entry points, and every way a plugin can break."""

from __future__ import annotations

import importlib
import importlib.metadata
import inspect
import sys
import textwrap

import pytest

from amemctl import hookspecs
from amemctl.errors import PluginError
from amemctl.plugins import BUILTIN_PLUGINS, build_registry, stage_class
from tests.conftest import ROOT


@pytest.fixture
def install(tmp_path, monkeypatch):
    """Install a one-module plugin distribution (dist-info + entry point) onto sys.path."""

    def make(dist: str, module: str, source: str, entry: str | None = None) -> None:
        (tmp_path / f"{module}.py").write_text(textwrap.dedent(source))
        info = tmp_path / f"{dist.replace('-', '_')}-0.1.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n")
        (info / "entry_points.txt").write_text(f"[amemctl]\n{entry or module} = {module}\n")
        monkeypatch.syspath_prepend(str(tmp_path))
        importlib.invalidate_caches()
        monkeypatch.delitem(sys.modules, module, raising=False)

    return make


def test_builtins_come_through_the_same_hooks():
    registry = build_registry(entry_points=False)
    assert {"load", "corrupt", "score", "separate", "project", "evaluate", "report"} <= set(registry.stages)
    assert all(registry.package_of("stages", name) == "amemctl" for name in registry.stages)
    assert "manhattan" in registry.similarities and "digits" in registry.datasets


def test_every_hook_is_documented_and_implemented_by_a_builtin():
    guide = (ROOT / "docs" / "plugins.md").read_text()
    implemented = set()
    for module in BUILTIN_PLUGINS:
        implemented |= {n for n, _ in inspect.getmembers(importlib.import_module(module)) if n.startswith("amemctl_")}
    for name, fn in inspect.getmembers(hookspecs, inspect.isfunction):
        if name.startswith("amemctl_"):
            assert fn.__doc__ and name in guide, f"{name} is not documented in docs/plugins.md"
            assert name in implemented, f"no built-in implements {name}"


def test_the_example_plugin_is_installed_from_the_repository():
    from importlib.metadata import distribution

    dist = distribution("amemctl-example")  # make test installs plugins/amemctl-example
    assert [ep.value for ep in dist.entry_points if ep.group == "amemctl"] == ["amemctl_example.plugin"]
    assert stage_class("pca").__module__ == "amemctl_example.pca"


def test_a_plugin_that_fails_to_import_is_named_and_the_rest_load(install):
    install("broken-plugin", "broken_mod", "raise ImportError('needs the moon')\n")
    registry = build_registry()
    (failure,) = [f for f in registry.failures if f.plugin == "broken_mod"]
    assert failure.package == "broken-plugin" and "ImportError: needs the moon" in failure.reason
    assert "score" in registry.stages and "pca" in registry.stages
    with pytest.raises(PluginError, match="unknown stage 'whiten' \\(plugin 'broken_mod' \\(package broken-plugin\\) is disabled: ImportError"):
        stage_class("whiten", registry)


def test_a_misspelt_hook_disables_that_plugin_with_a_did_you_mean(install):
    install("typo-plugin", "typo_mod", "from amemctl import hookimpl\n\n@hookimpl\ndef amemctl_register_stage():\n    return []\n")
    registry = build_registry()
    (failure,) = [f for f in registry.failures if f.plugin == "typo_mod"]
    assert "'amemctl_register_stage'" in failure.reason and failure.package == "typo-plugin"
    assert "did you mean 'amemctl_register_stages'?" in failure.hint
    assert "pca" in registry.stages  # the other plugins still load


def test_a_hook_that_raises_is_reported(install):
    install("raising-plugin", "raising_mod", "from amemctl import hookimpl\n\n@hookimpl\ndef amemctl_register_stages():\n    raise RuntimeError('boom')\n")
    registry = build_registry()
    (failure,) = [f for f in registry.failures if f.plugin == "raising_mod"]
    assert "RuntimeError: boom (at " in failure.reason and failure.reason.endswith("raising_mod.py:5)")  # where, in the plugin


CLASH = """\
    from amemctl import Similarity, Stage, hookimpl

    class Score(Stage):
        '''Another score.'''
        name = "score"

    class Fine(Stage):
        '''A stage of the clashing plugin that does not clash itself.'''
        name = "fine_but_disabled"

    @hookimpl
    def amemctl_register_stages():
        return [Fine, Score]

    @hookimpl
    def amemctl_register_similarities():
        return [Similarity("clash_similarity", lambda q, k: q @ k.T)]
    """


def test_a_name_collision_disables_that_plugin_whole_and_names_both_packages(install):
    install("clash-plugin", "clash_mod", CLASH)
    registry = build_registry()
    (failure,) = [f for f in registry.failures if f.plugin == "clash_mod"]
    assert failure.package == "clash-plugin" and "the stage 'score', which package amemctl provides already" in failure.reason
    assert registry.package_of("stages", "score") == "amemctl"
    # nothing of the disabled plugin is half-registered
    assert "fine_but_disabled" not in registry.stages and "clash_similarity" not in registry.similarities
    assert "pca" in registry.stages


def test_the_cli_still_works_and_warns_when_a_plugin_collides(install):
    from click.testing import CliRunner

    from amemctl.cli import main
    from amemctl.plugins import get_registry

    install("clash-plugin", "clash_mod", CLASH)
    get_registry.cache_clear()
    try:
        result = CliRunner().invoke(main, ["stages"])
    finally:
        get_registry.cache_clear()
    assert result.exit_code == 0, result.output
    assert "plugin 'clash_mod' (package clash-plugin) is disabled" in result.output
    assert "score" in result.output and "pca" in result.output and "Traceback" not in result.output


@pytest.mark.parametrize("how", ["env", "option", "package"])
def test_plugins_can_be_disabled_by_name(install, monkeypatch, how):
    from click.testing import CliRunner

    from amemctl.cli import main
    from amemctl.plugins import DISABLE_ENV, get_registry

    install("clash-plugin", "clash_mod", CLASH)
    monkeypatch.delenv(DISABLE_ENV, raising=False)
    args = ["stages"]
    if how == "env":
        monkeypatch.setenv(DISABLE_ENV, "other,clash_mod")
    elif how == "option":
        args = ["--no-plugin", "clash_mod", "stages"]
    else:
        monkeypatch.setenv(DISABLE_ENV, "clash-plugin")
    get_registry.cache_clear()
    try:
        result = CliRunner().invoke(main, args)
        registry = get_registry()
    finally:
        get_registry.cache_clear()
        monkeypatch.delenv(DISABLE_ENV, raising=False)
    assert result.exit_code == 0 and "is disabled" not in result.output
    assert not registry.failures and registry.disabled == ["clash_mod (clash-plugin)"]
    assert "pca" in registry.stages


def test_disabling_a_plugin_that_is_not_installed_is_an_error(install):
    from click.testing import CliRunner

    from amemctl.cli import main

    install("clash-plugin", "clash_mod", CLASH)
    result = CliRunner().invoke(main, ["--no-plugin", "clash_mdo", "stages"])
    assert result.exit_code == 2 and "--no-plugin clash_mdo: no plugin of that name is installed (did you mean 'clash_mod'?)" in result.output


CRASHING = """\
    from amemctl import Input, Output, Stage, hookimpl

    class Crash(Stage):
        '''A stage with a bug.'''
        name = "crash"
        input = Input("patterns")
        output = Output("crashed")

        def run(self, ctx):
            return ctx[self.input].no_such_method()

    @hookimpl
    def amemctl_register_stages():
        return [Crash]
    """


def test_a_crash_inside_a_plugin_stage_is_one_message_with_the_traceback_in_the_run_folder(install, tmp_path):
    import json

    from click.testing import CliRunner

    from amemctl.cli import main
    from amemctl.plugins import get_registry

    install("crash-plugin", "crash_mod", CRASHING)
    pipeline = tmp_path / "crash.yaml"
    pipeline.write_text("name: crash\ndata: {dataset: digits, limit: 10}\nstages:\n  - crash: {}\n")
    get_registry.cache_clear()
    try:
        result = CliRunner().invoke(main, ["run", str(pipeline), "--out", str(tmp_path / "runs"), "--quiet", "--device", "cpu"])
    finally:
        get_registry.cache_clear()
    assert result.exit_code == 1
    assert f"{pipeline}:4:5: stage 'crash' (package crash-plugin) crashed (run): AttributeError" in result.output
    assert "Traceback (most recent call last)" not in result.output and result.output.count("\n") <= 8
    (run_dir,) = (tmp_path / "runs" / "crash").iterdir()
    assert "ctx[self.input].no_such_method()" in (run_dir / "error.txt").read_text()
    assert str(run_dir / "error.txt") in result.output
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["status"] == "failed" and "stage 'crash' (package crash-plugin) crashed" in metrics["error"]


def test_listing_stages_does_not_load_matplotlib():
    """`amemctl stages` and `data ls` start without matplotlib: figures import it when they draw."""
    import subprocess

    code = "import sys; from amemctl.plugins import get_registry; get_registry(); print('matplotlib' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False", out.stderr


BUGGY_FUNCTIONS = """\
    from amemctl import Corruption, Elementwise, Param, SeparationFunction, Similarity, hookimpl

    def kernel(queries, keys):
        raise ValueError("kernel bug")

    def make(power):
        raise ValueError("make bug")

    def transposed(queries, keys):
        return (queries @ keys.T).T

    def apply(images, generator, p):
        raise ValueError("corruption bug")

    @hookimpl
    def amemctl_register_similarities():
        return [Similarity("buggy_similarity", kernel), Similarity("transposed", transposed)]

    @hookimpl
    def amemctl_register_separations():
        return [SeparationFunction("buggy_separation", make, {"power": Param(int, 2, "a power")})]

    @hookimpl
    def amemctl_register_corruptions():
        return [Corruption("buggy_corruption", "raises", apply, {"p": Param(float, 0.5, "a probability")})]
    """

RETRIEVAL = "seed: 0\ndata: {dataset: digits, limit: 20}\nstages:\n  - corrupt: {kind: %s}\n  - score: {similarity: %s}\n  - separate: {function: %s}\n  - project: {}\n"


@pytest.mark.parametrize(
    "corruption, similarity, separation, line, bug",
    [
        ("gaussian", "buggy_similarity", "max", 5, "kernel bug"),
        ("buggy_corruption", "euclidean", "max", 4, "corruption bug"),
    ],
)
def test_a_plugin_function_that_raises_inside_a_builtin_stage_is_blamed_on_the_plugin(install, tmp_path, corruption, similarity, separation, line, bug):
    from amemctl.dsl.pipeline import parse_text
    from amemctl.engine.runner import run_pipeline
    from amemctl.errors import StageCrash

    install("buggy-plugin", "buggy_mod", BUGGY_FUNCTIONS)
    pipeline = parse_text(RETRIEVAL % (corruption, similarity, separation), "p.yaml", registry=build_registry())
    with pytest.raises(StageCrash) as info:
        run_pipeline(pipeline, out_root=tmp_path, device="cpu", progress=False)
    message = str(info.value)
    assert message.startswith(f"p.yaml:{line}:5: stage ") and f"ValueError: {bug}" in message
    assert "a bug in the plugin package buggy-plugin (at " in message and "buggy_mod.py:" in message
    assert "please report it" not in message


def test_a_separation_that_cannot_be_made_is_refused_before_anything_runs(install):
    """`separate` makes its separation while its parameters are checked: `amemctl validate` finds it, not
    the sweep point that reaches it hours into a run; blamed on the plugin, at the `separate` line."""
    from amemctl.dsl.pipeline import parse_text
    from amemctl.errors import StageCrash

    install("buggy-plugin", "buggy_mod", BUGGY_FUNCTIONS)
    install("breaker-plugin", "breaker_mod", CONTRACT_BREAKERS)
    sweep = "sweep:\n  function: [max, softmax, %s]\n" + RETRIEVAL.replace("{function: %s}", "{function: \"${function}\"}") % ("gaussian", "euclidean")
    for separation, bug, whose in [("buggy_separation", "ValueError: make bug", "a bug in the package buggy-plugin at "), ("forgetful", "TypeError: Can't instantiate abstract class Forgetful", "a bug in the package breaker-plugin (its separation 'forgetful')")]:
        with pytest.raises(StageCrash) as info:
            parse_text(sweep % separation, "p.yaml", registry=build_registry())
        assert info.value.render().startswith(f"p.yaml:8:5: stage 'separate' crashed while checking its parameters: {bug}"), info.value.render()
        assert info.value.hint.startswith(whose) and "not a mistake in the pipeline" in info.value.hint


UNSTREAMED = """\
    import torch

    from amemctl import Param, Separation, SeparationFunction, hookimpl

    class Floored(Separation):
        # weights() only, but needs_full_rows forgotten: retrieval has no reducer to stream it with
        name = "floored"

        def __init__(self, beta):
            self.beta = beta

        def weights(self, scores):
            return torch.softmax(self.beta * scores, dim=1)

    @hookimpl
    def amemctl_register_separations():
        return [SeparationFunction("floored", Floored, {"beta": Param(float, 1.0, "inverse temperature")})]
    """


def test_a_separation_that_neither_streams_nor_needs_full_rows_is_refused_before_anything_runs(install):
    """reducer() stopped being abstract (a needs_full_rows separation defines weights() only), so a class
    defining neither it nor needs_full_rows could be made: `validate` passed it, and the run crashed at
    its first retrieval, after every stage before it had run."""
    from amemctl.dsl.pipeline import parse_text
    from amemctl.errors import StageCrash

    install("unstreamed-plugin", "unstreamed_mod", UNSTREAMED)
    with pytest.raises(StageCrash) as info:
        parse_text(RETRIEVAL % ("gaussian", "euclidean", "floored"), "p.yaml", registry=build_registry())
    assert info.value.render().startswith("p.yaml:6:5: stage 'separate' crashed while checking its parameters: TypeError: separation 'floored' (Floored) defines no reducer()")
    assert info.value.hint.startswith("a bug in the package unstreamed-plugin (its separation 'floored'), not a mistake in the pipeline")


def test_a_kernel_of_the_wrong_shape_is_blamed_on_its_plugin_though_amemctl_raised(install, tmp_path):
    # The kernel returned normally; amemctl's shape check raises, so no plugin frame is in the
    # traceback: the check knows whose kernel it was, and says so rather than "a bug in amemctl".
    from amemctl.dsl.pipeline import parse_text
    from amemctl.engine.runner import run_pipeline
    from amemctl.errors import StageCrash

    install("buggy-plugin", "buggy_mod", BUGGY_FUNCTIONS)
    text = RETRIEVAL.replace("{kind: %s}", "{kind: gaussian, count: 5}") % ("transposed", "max")
    with pytest.raises(StageCrash) as info:
        run_pipeline(parse_text(text, "p.yaml", registry=build_registry()), out_root=tmp_path, device="cpu", progress=False)
    assert info.value.render().startswith("p.yaml:5:5: stage 'score' (package amemctl) crashed")
    assert "returned scores of shape (20, 5) for 5 queries and 20 keys" in info.value.message
    assert info.value.hint.startswith("a bug in the plugin package buggy-plugin (its similarity 'transposed'), not a mistake in the pipeline;")
    assert "please report it" not in info.value.hint


CONTRACT_BREAKERS = """\
    import torch

    from amemctl import Corruption, Param, Separation, SeparationFunction, hookimpl

    class Forgetful(Separation):
        # a separation without weights(): Python refuses to make it, in amemctl's call
        name = "forgetful"
        needs_full_rows = True

        def __init__(self, beta):
            self.beta = beta

        def wieghts(self, scores):
            return torch.softmax(self.beta * scores, dim=1)

    def crop_one_row(images, generator, p):
        return images[..., 1:, :]

    @hookimpl
    def amemctl_register_separations():
        return [SeparationFunction("forgetful", Forgetful, {"beta": Param(float, 1.0, "inverse temperature")})]

    @hookimpl
    def amemctl_register_corruptions():
        return [Corruption("crop_one_row", "one row too few", crop_one_row, {"p": Param(float, 0.5, "unused")})]
    """


@pytest.mark.parametrize(
    "corruption, separation, line, stage, bug",
    [
        # before: refused later at `score`, as a wiring mistake of the pipeline's
        ("{kind: crop_one_row}", "max", 4, "corrupt", "its corruption 'crop_one_row'"),
        ("{kind: compose, steps: [{kind: gaussian}, {kind: crop_one_row}]}", "max", 4, "corrupt", "its corruption 'crop_one_row'"),
    ],
)
def test_a_plugin_function_breaking_its_contract_is_blamed_on_the_plugin_at_its_stage(install, tmp_path, corruption, separation, line, stage, bug):
    from amemctl.dsl.pipeline import parse_text
    from amemctl.engine.runner import run_pipeline
    from amemctl.errors import StageCrash

    install("breaker-plugin", "breaker_mod", CONTRACT_BREAKERS)
    text = RETRIEVAL.replace("{kind: %s}", "%s") % (corruption, "euclidean", separation)
    with pytest.raises(StageCrash) as info:
        run_pipeline(parse_text(text, "p.yaml", registry=build_registry()), out_root=tmp_path, device="cpu", progress=False)
    assert info.value.render().startswith(f"p.yaml:{line}:5: stage {stage!r} (package amemctl) crashed")
    assert info.value.hint.startswith(f"a bug in the plugin package breaker-plugin ({bug}), not a mistake in the pipeline;")
    if stage == "corrupt":
        assert "corruption 'crop_one_row' returned shape (20, 1, 7, 8) for images of shape (20, 1, 8, 8)" in info.value.message


PAIRED = """\
    from amemctl import Elementwise, Separation, SeparationFunction, Similarity, hookimpl

    def dot(queries, keys):
        return queries @ keys.T

    def broken_kernel(queries, keys):
        raise ValueError("kernel bug")

    def spike(scores):
        raise ValueError("elementwise bug")

    class Ranked(Separation):
        name = "ranked"
        needs_full_rows = True

        def weights(self, scores):
            raise ValueError("weights bug")

    @hookimpl
    def amemctl_register_similarities():
        return [Similarity("pair_dot", dot), Similarity("pair_broken", broken_kernel)]

    @hookimpl
    def amemctl_register_separations():
        return [SeparationFunction("spiky", lambda: Elementwise("spiky", spike)), SeparationFunction("ranked", Ranked)]
    """


@pytest.mark.parametrize(
    "similarity, separation, line, bug",
    [
        ("pair_dot", "spiky", 6, "elementwise bug"),  # streamed: raised in the reducer's update
        ("pair_dot", "ranked", 6, "weights bug"),  # full rows: raised in the reducer's finish
        ("pair_broken", "spiky", 5, "kernel bug"),
    ],
)
def test_a_crash_in_one_of_two_functions_of_one_plugin_is_placed_at_the_stage_that_chose_the_one_that_raised(install, tmp_path, similarity, separation, line, bug):
    """One package providing both the similarity and the separation of a fused retrieval: the crash was
    placed at the first stage whose chosen function was that package's, `score`, whichever of the two raised."""
    from amemctl.dsl.pipeline import parse_text
    from amemctl.engine.runner import run_pipeline
    from amemctl.errors import StageCrash

    install("pair-plugin", "pair_mod", PAIRED)
    pipeline = parse_text(RETRIEVAL % ("gaussian", similarity, separation), "p.yaml", registry=build_registry())
    with pytest.raises(StageCrash) as info:
        run_pipeline(pipeline, out_root=tmp_path, device="cpu", progress=False)
    stage = {5: "score", 6: "separate"}[line]
    assert info.value.render().startswith(f"p.yaml:{line}:5: stage {stage!r} (package amemctl) crashed (run): ValueError: {bug}"), info.value.render()
    assert info.value.hint.startswith("a bug in the plugin package pair-plugin (at ") and "pair_mod.py:" in info.value.hint



MISNAMED = """\
    import torch

    from amemctl import Elementwise, Separation, SeparationFunction, Similarity, hookimpl

    def dot(queries, keys):
        return queries @ keys.T

    def spike(scores):
        raise ValueError("elementwise bug")

    class Ranked(Separation):
        name = "ranked_v2"  # not the name it is registered under
        needs_full_rows = True

        def weights(self, scores):
            raise ValueError("weights bug")

    class Unstreamed(Separation):
        name = "plain"  # nor this: and neither a reducer nor needs_full_rows

        def weights(self, scores):
            return torch.softmax(scores, dim=1)

    @hookimpl
    def amemctl_register_similarities():
        return [Similarity("misnamed_dot", dot)]

    @hookimpl
    def amemctl_register_separations():
        return [
            SeparationFunction("spiky", lambda: Elementwise("spike", spike)),
            SeparationFunction("ranked", Ranked),
            SeparationFunction("unstreamed", Unstreamed),
        ]
    """


@pytest.mark.parametrize("separation, bug", [("spiky", "elementwise bug"), ("ranked", "weights bug")])
def test_a_crash_in_a_separation_named_otherwise_than_registered_is_placed_at_the_stage_that_chose_it(install, tmp_path, separation, bug):
    """Retrieval marked the crash with the separation object's own `name` ('spike', 'ranked_v2'), which no
    stage chose: placement fell back to the package, which also provides the similarity, so `score`."""
    from amemctl.dsl.pipeline import parse_text
    from amemctl.engine.runner import run_pipeline
    from amemctl.errors import StageCrash

    install("misnamed-plugin", "misnamed_mod", MISNAMED)
    pipeline = parse_text(RETRIEVAL % ("gaussian", "misnamed_dot", separation), "p.yaml", registry=build_registry())
    with pytest.raises(StageCrash) as info:
        run_pipeline(pipeline, out_root=tmp_path, device="cpu", progress=False)
    assert info.value.render().startswith(f"p.yaml:6:5: stage 'separate' (package amemctl) crashed (run): ValueError: {bug}"), info.value.render()
    assert info.value.hint.startswith("a bug in the plugin package misnamed-plugin (at ") and "misnamed_mod.py:" in info.value.hint


def test_a_separation_named_otherwise_that_cannot_stream_is_blamed_on_its_plugin_by_its_registered_name(install):
    """The mark of a separation class retrieval cannot run (no reducer, no full rows) named the object ('plain'),
    which no plugin registers: the crash, raised by amemctl's check, was blamed on amemctl's package."""
    from amemctl.dsl.pipeline import parse_text
    from amemctl.errors import StageCrash

    install("misnamed-plugin", "misnamed_mod", MISNAMED)
    with pytest.raises(StageCrash) as info:
        parse_text(RETRIEVAL % ("gaussian", "misnamed_dot", "unstreamed"), "p.yaml", registry=build_registry())
    assert info.value.render().startswith("p.yaml:6:5: stage 'separate' crashed while checking its parameters: TypeError: separation 'unstreamed' (Unstreamed) defines no reducer()"), info.value.render()
    assert info.value.hint.startswith("a bug in the package misnamed-plugin (its separation 'unstreamed'), not a mistake in the pipeline"), info.value.hint


def test_a_separation_is_tagged_with_the_name_it_was_registered_under():
    """`recall` marks a separation's crash with its registered name; one made outside the registry keeps its own."""
    from dataclasses import dataclass

    import torch

    from amemctl import Elementwise, Separation, SeparationFunction, Softmax, recall
    from amemctl.errors import blamed_function, maker_of

    made = SeparationFunction("a", lambda: Elementwise("b", lambda s: s))()
    assert maker_of(made, "separation") == ("separation", "a") and made.name == "b"
    assert maker_of(Softmax(beta=2.0), "separation") == ("separation", "softmax")

    @dataclass(frozen=True)
    class Frozen(Separation):  # a frozen plugin class is tagged too
        name: str = "frozen"

        def weights(self, scores):
            return scores

    assert maker_of(SeparationFunction("cold", Frozen)(), "separation") == ("separation", "cold")

    def boom(scores):
        raise ValueError("boom")

    with pytest.raises(ValueError) as info:
        recall(torch.rand(3, 4), torch.rand(5, 4), separation=SeparationFunction("a", lambda: Elementwise("b", boom))())
    assert blamed_function(info.value) == ("separation", "a")


def test_a_kernel_returning_the_wrong_shape_is_named_with_the_shape_it_owes():
    import torch

    from amemctl import Similarity

    transposed = Similarity("transposed", lambda q, k: (q @ k.T).T)
    with pytest.raises(ValueError, match=r"similarity 'transposed' returned scores of shape \(5, 3\) for 3 queries and 5 keys; a kernel maps"):
        transposed(torch.rand(3, 4), torch.rand(5, 4))


CHECK_RAISES = """\
    from amemctl import Param, Stage, hookimpl

    class Picky(Stage):
        '''A stage whose check() has a bug.'''
        name = "picky"
        level = Param(int, 1, "a level")

        def check(self):
            return 1 / (self.level - 1)

    @hookimpl
    def amemctl_register_stages():
        return [Picky]
    """


def test_a_check_that_raises_a_non_amemctl_error_is_one_message_at_the_stage_line(install):
    from amemctl.dsl.pipeline import parse_text
    from amemctl.errors import StageCrash

    install("picky-plugin", "picky_mod", CHECK_RAISES)
    with pytest.raises(StageCrash) as info:
        parse_text("data: {dataset: digits}\nstages:\n  - picky: {level: 1}\n", "p.yaml", registry=build_registry())
    error = info.value
    assert error.exit_code == 1
    assert error.render().startswith("p.yaml:3:5: stage 'picky' crashed while checking its parameters: ZeroDivisionError")
    assert "a bug in the package picky-plugin at " in error.hint and "picky_mod.py:9 in check" in error.hint


def test_a_pipeline_checked_against_a_registry_looks_its_functions_up_there():
    # The example plugin is installed, so the process's registry knows `cubic`; this one does not.
    from amemctl.dsl.pipeline import parse_text

    registry = build_registry(entry_points=False)
    with pytest.raises(Exception, match="unknown separation 'cubic'"):
        parse_text("stages:\n  - load: {dataset: digits}\n  - corrupt: {}\n  - score: {}\n  - separate: {function: cubic}\n", "p.yaml", registry=registry)
    pipeline = parse_text("stages:\n  - load: {dataset: digits}\n", "p.yaml", registry=registry)
    assert all(planned.stage.registry is registry for planned in pipeline.plans[0].stages)


TWIN = """\
    from amemctl import Stage, hookimpl

    class Twin(Stage):
        '''One of two stages of the same name.'''
        name = "twin"

    @hookimpl
    def amemctl_register_stages():
        return [Twin]
    """


def test_two_plugins_providing_one_name_are_both_disabled_whatever_their_order(install):
    # Which entry point loads first follows the file system's listing order: keeping the
    # first would swap implementations silently from one machine to another.
    install("twin-a", "twin_a", TWIN)
    install("twin-b", "twin_b", TWIN)
    registry = build_registry()
    failures = {f.plugin: f for f in registry.failures}
    assert "twin" not in registry.stages and "pca" in registry.stages
    assert "the stage 'twin', which package twin-b provides too (both are disabled)" in failures["twin_a"].reason
    assert "the stage 'twin', which package twin-a provides too (both are disabled)" in failures["twin_b"].reason
    assert failures["twin_a"].hint.endswith("set AMEMCTL_DISABLE_PLUGINS=twin_a or pass --no-plugin twin_a to use the other")


def test_a_name_of_a_plugin_skipped_on_request_says_so(install, monkeypatch):
    from amemctl.plugins import DISABLE_ENV

    install("twin-a", "twin_a", TWIN)
    monkeypatch.setenv(DISABLE_ENV, "twin_a")
    registry = build_registry()
    with pytest.raises(PluginError, match=r"unknown stage 'twin' \(plugins skipped on request \(AMEMCTL_DISABLE_PLUGINS or --no-plugin\): twin_a \(twin-a\)\)"):
        stage_class("twin", registry)


def test_a_pipeline_parsed_from_text_runs_into_a_plain_folder(tmp_path):
    # parse_text is how docs/plugins.md tells plugin authors to test; runs/<pipeline>/ was its folder
    from amemctl.dsl.pipeline import parse_text
    from amemctl.engine.runner import run_pipeline

    run = run_pipeline(parse_text("data: {dataset: digits, limit: 4}\nstages:\n  - corrupt: {}\n"), out_root=tmp_path, device="cpu", progress=False)
    assert run.run_dir.parent == tmp_path / "pipeline"


def test_a_hook_that_takes_arguments_is_named_at_its_line_with_the_fix(install):
    # pluggy's own message ("Argument(s) {'registry'} are declared in the hookimpl but can not
    # be found in the hookspec") named neither the file nor what to write instead.
    install("args-plugin", "args_mod", "from amemctl import hookimpl\n\n\n@hookimpl\ndef amemctl_register_stages(registry):\n    return []\n")
    registry = build_registry()
    (failure,) = [f for f in registry.failures if f.plugin == "args_mod"]
    assert failure.reason.startswith("its hook(s) amemctl_register_stages(registry) at ") and "args_mod.py:4 take arguments" in failure.reason
    assert failure.hint.startswith("define them without arguments: `def amemctl_register_stages():`")
    assert "pca" in registry.stages


TWIN_AND_SOLO = TWIN.replace("return [Twin]", "return [Twin, Solo]").replace(
    "    @hookimpl", "    class Solo(Stage):\n        '''A stage only this plugin provides.'''\n        name = \"solo\"\n\n    @hookimpl"
)


def test_a_clash_is_told_only_about_the_names_each_clashing_plugin_provides(install):
    # Every unknown name used to carry every disabled plugin's note, and "did you mean" a
    # built-in: a pipeline using four names of a clashing plugin printed eight notes.
    install("twin-a", "twin_a", TWIN_AND_SOLO)
    install("twin-b", "twin_b", TWIN)
    registry = build_registry()
    with pytest.raises(PluginError) as twin:
        stage_class("twin", registry)
    assert "plugin 'twin_a' (package twin-a) is disabled" in twin.value.message and "plugin 'twin_b' (package twin-b) is disabled" in twin.value.message
    assert twin.value.hint == "packages twin-a, twin-b all provide 'twin': rename it in all but one, or choose one (--no-plugin twin_b keeps twin-a's, --no-plugin twin_a keeps twin-b's; or AMEMCTL_DISABLE_PLUGINS)"
    with pytest.raises(PluginError) as solo:
        stage_class("solo", registry)
    assert "plugin 'twin_a' (package twin-a) is disabled" in solo.value.message and "twin_b" not in solo.value.message
    assert "--no-plugin twin_a" in solo.value.hint
    with pytest.raises(PluginError) as other:
        stage_class("whiten", registry)
    assert "twin" not in other.value.message and other.value.hint == "run `amemctl stages` to list them"


def test_a_plugin_installed_without_an_entry_point_is_named(install, tmp_path):
    # The author's usual first mistake: the package is installed, amemctl never looks at it,
    # and `unknown similarity 'negdot'` said only "did you mean 'dot'?".
    info = tmp_path / "forgotten_plugin-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: forgotten-plugin\nVersion: 0.1\nRequires-Dist: amemctl>=0.1\nRequires-Dist: pytest; extra == 'test'\n")
    install("other-plugin", "other_mod", "")  # puts tmp_path on sys.path
    registry = build_registry()
    with pytest.raises(PluginError, match=r"unknown stage 'whiten' \(.*package forgotten-plugin requires amemctl but declares no `amemctl` entry point: if it is a plugin, amemctl never loads it"):
        stage_class("whiten", registry)
    damaged = tmp_path / "damaged_plugin-0.1.dist-info"  # METADATA that is not UTF-8 (importlib.metadata raises): skipped, the note still told
    damaged.mkdir()
    (damaged / "METADATA").write_bytes(b"Metadata-Version: 2.1\nName: dam\xff\xfeaged\nVersion: 0.1\nRequires-Dist: amemctl\n")
    importlib.invalidate_caches()
    with pytest.raises(PluginError, match=r"package forgotten-plugin requires amemctl but declares no"):
        stage_class("whiten", build_registry())  # a new registry: each reads the installed packages once


def _installed(site, dist: str, files: dict[str, str], record: list[str]) -> None:
    """A distribution that requires amemctl and declares no entry point, its `files` written under `site` and `record` its RECORD."""
    for path, text in files.items():
        (site / path).parent.mkdir(parents=True, exist_ok=True)
        (site / path).write_text(textwrap.dedent(text))
    info = site / f"{dist.replace('-', '_')}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\nRequires-Dist: amemctl>=0.1\n")
    (info / "RECORD").write_text("".join(f"{path},,\n" for path in [*record, f"{info.name}/METADATA", f"{info.name}/RECORD"]))


def test_a_package_that_only_uses_amemctl_is_not_named_as_a_plugin_without_its_entry_point(install, tmp_path):
    """The note on a forgotten entry point named every installed package requiring amemctl, an application
    that imports it as a library too, as a plugin 'never loaded'. Only one whose modules define a hook is
    named as a plugin; one whose modules cannot be read (an editable install's) is named as perhaps one."""
    from amemctl.plugins import without_entry_point

    install("other-plugin", "other_mod", "")  # puts tmp_path on sys.path
    app = {"hopfield_app/__init__.py": "", "hopfield_app/main.py": "from amemctl import retrieve\n\ndef main():\n    return retrieve\n"}
    _installed(tmp_path, "hopfield-app", app, list(app))
    hooks = "from amemctl import Similarity, hookimpl\n\n@hookimpl\ndef amemctl_register_similarities():\n    return [Similarity('negdot', lambda q, k: -(q @ k.T))]\n"
    _installed(tmp_path, "negdot-plugin", {"negdot/__init__.py": "", "negdot/plugin.py": hooks}, ["negdot/__init__.py", "negdot/plugin.py"])
    src = tmp_path / "checkout" / "src"  # an editable install: its RECORD lists a .pth naming its source folder
    _installed(tmp_path, "editable-plugin", {"checkout/src/edited/__init__.py": hooks, "_editable_plugin.pth": f"{src}\n"}, ["_editable_plugin.pth"])
    _installed(tmp_path, "editable-app", {"app_checkout/src/tool/__init__.py": app["hopfield_app/main.py"], "_editable_app.pth": f"{tmp_path / 'app_checkout' / 'src'}\n"}, ["_editable_app.pth"])
    importlib.invalidate_caches()
    assert dict(without_entry_point()) == {"negdot-plugin": True, "editable-plugin": True}
    with pytest.raises(PluginError) as info:
        stage_class("whiten", build_registry())
    assert "package negdot-plugin defines amemctl hooks but declares no `amemctl` entry point, so amemctl never loads it" in info.value.message
    assert "hopfield-app" not in info.value.message and "editable-app" not in info.value.message


def test_an_unknown_name_in_every_sweep_point_reads_the_installed_packages_once(monkeypatch):
    """The note on packages without an entry point scans every installed distribution (30 ms for 70);
    it was made again for each sweep point refusing the name: 6 s to refuse a typo in a 200-point sweep."""
    from amemctl.dsl.pipeline import parse_text
    from amemctl.errors import AmemctlError

    registry = build_registry(entry_points=False)
    scans = []
    real = importlib.metadata.distributions
    monkeypatch.setattr(importlib.metadata, "distributions", lambda *a, **k: scans.append(1) or real(*a, **k))
    text = f"sweep:\n  beta: {list(range(1, 51))}\n" + RETRIEVAL % ("gausian", "euclidean", 'softmax, beta: "${beta}"')
    with pytest.raises(AmemctlError, match="unknown corruption 'gausian'"):
        parse_text(text, "p.yaml", registry=registry)
    assert len(scans) == 1


def test_stages_name_tells_a_skipped_plugin_once(install, monkeypatch):
    from click.testing import CliRunner

    from amemctl.cli import main
    from amemctl.plugins import DISABLE_ENV, get_registry

    install("twin-a", "twin_a", TWIN)
    monkeypatch.setenv(DISABLE_ENV, "twin_a")
    get_registry.cache_clear()
    try:
        result = CliRunner().invoke(main, ["stages", "twin"])
    finally:
        get_registry.cache_clear()
    assert result.exit_code == 2
    assert result.output.count("twin_a (twin-a)") == 1, result.output


def test_corrupt_preview_blames_a_plugin_corruption_in_one_message(install, tmp_path):
    from click.testing import CliRunner

    from amemctl.cli import main
    from amemctl.plugins import get_registry

    install("breaker-plugin", "breaker_mod", CONTRACT_BREAKERS)
    get_registry.cache_clear()
    try:
        result = CliRunner().invoke(main, ["corrupt", "preview", "--dataset", "digits", "--kinds", "gaussian,crop_one_row", "-o", str(tmp_path / "c.png")])
    finally:
        get_registry.cache_clear()
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "corruption 'crop_one_row' (package breaker-plugin) crashed: ValueError: corruption 'crop_one_row' returned shape" in result.output
    assert "a bug in the plugin package breaker-plugin (its corruption 'crop_one_row'); leave it out with --kinds" in result.output


UNDECLARED = """\
    from amemctl import Input, Stage, hookimpl

    class Rmse(Stage):
        '''Records rmse, but forgets to declare it in metrics().'''
        name = "rmse_metric"
        retrieved = Input("retrieved")

        def run(self, ctx):
            ctx.metric("rmse", 0.0)

    @hookimpl
    def amemctl_register_stages():
        return [Rmse]
    """


def test_a_report_metric_nobody_declares_points_at_plugin_stages_without_metrics(install):
    from amemctl.dsl.pipeline import parse_text
    from amemctl.errors import PipelineError

    install("rmse-plugin", "rmse_mod", UNDECLARED)
    text = RETRIEVAL % ("gaussian", "euclidean", "max") + "  - rmse_metric: {}\nreport:\n  tables: [{metric: rmse}]\n"
    with pytest.raises(PipelineError) as info:
        parse_text(text, "p.yaml", registry=build_registry())
    assert "p.yaml:10:" in str(info.value) and "no stage records the metric 'rmse'" in str(info.value)
    assert "plugin stage(s) 'rmse_metric' declare no metrics: a stage lists what it records in `metrics(self)`" in str(info.value)


DROPPER = """\
    from amemctl import Input, Output, Stage, hookimpl

    class DropLast(Stage):
        \"\"\"A post-processing stage with an off-by-one: it loses the last retrieval.\"\"\"

        name = "drop-last"
        source = Input("retrieved", "the retrievals")
        out = Output("retrieved", "the retrievals, post-processed")

        def run(self, ctx):
            ctx[self.out] = ctx[self.source][:-1]

    @hookimpl
    def amemctl_register_stages():
        return [DropLast]
"""


def test_data_a_plugin_stage_wrote_wrong_is_refused_where_read_and_traced_to_where_it_was_made(install, tmp_path):
    """evaluate refuses 19 retrievals for 20 targets; the hint names the plugin stage that wrote them, at its line."""
    from amemctl.dsl.pipeline import parse_text
    from amemctl.engine.runner import run_pipeline
    from amemctl.errors import StageError

    install("dropper-plugin", "dropper_mod", DROPPER)
    text = RETRIEVAL % ("gaussian", "euclidean", "max") + "  - drop-last: {}\n  - evaluate: {}\n"
    with pytest.raises(StageError) as info:
        run_pipeline(parse_text(text, "p.yaml", registry=build_registry()), out_root=tmp_path, device="cpu", progress=False)
    assert info.value.render().startswith("p.yaml:9:5: stage 'evaluate' failed") and "19 retrievals but 20 targets" in info.value.message
    assert info.value.hint.endswith("; 'retrieved' comes from the plugin stage 'drop-last' (package dropper-plugin) at p.yaml:8:5: check what it writes")
    # amemctl's own stages wrote every input: no such note
    with pytest.raises(StageError) as info:
        run_pipeline(parse_text(text.replace("  - drop-last: {}\n", "  - evaluate: {targets: patterns}\n"), "p.yaml", registry=build_registry()), out_root=tmp_path, device="cpu", progress=False)
    assert "comes from" not in (info.value.hint or "") and "targets ('patterns') must be row numbers of the stored values, a vector of integers; it is float32 shaped (20, 1, 8, 8)" in info.value.message


NEEDY = """\
    from amemctl import Corruption, Param, hookimpl

    def shift(images, generator, amount):
        return (images + amount).clamp(0, 1)

    @hookimpl
    def amemctl_register_corruptions():
        return [Corruption("shift", "adds amount", shift, {"amount": Param(float, doc="how much")})]
    """


@pytest.mark.parametrize("kinds, code", [("all", 0), ("shift", 2)])
def test_corrupt_preview_of_a_corruption_needing_a_parameter_is_no_bug_in_amemctl(install, tmp_path, kinds, code):
    """A preview gives no parameters: a corruption that needs one raised ParamError, reported as
    'crashed ... a bug in amemctl (please report it)', exit 1, and --kinds all stopped there."""
    from click.testing import CliRunner

    from amemctl.cli import main
    from amemctl.plugins import get_registry

    install("needy-plugin", "needy_mod", NEEDY)
    get_registry.cache_clear()
    try:
        result = CliRunner().invoke(main, ["corrupt", "preview", "--dataset", "digits", "--kinds", kinds, "-o", str(tmp_path / "c.png")])
    finally:
        get_registry.cache_clear()
    assert result.exit_code == code, result.output
    assert "please report it" not in result.output and "crashed" not in result.output
    assert "corruption 'shift' needs parameter 'amount'" in result.output
    if kinds == "all":
        assert "skipped what does not apply to digits: " in result.output and (tmp_path / "c.png").is_file()


def test_a_function_raising_an_exception_that_takes_no_attributes_raises_it_unchanged():
    """Marking whose function raised set an attribute on the exception: a frozen dataclass's refused,
    and its FrozenInstanceError replaced the function's own exception (an `except Refused` missed it)."""
    from dataclasses import dataclass

    import torch

    from amemctl import Corruption, SeparationFunction

    @dataclass(frozen=True)
    class Refused(Exception):
        reason: str

    def refuse(*args, **kwargs):
        raise Refused("no")

    with pytest.raises(Refused):
        SeparationFunction("refusing", refuse)()
    with pytest.raises(Refused):
        Corruption("refusing", "refuses", refuse)(torch.rand(2, 3))


def test_a_plugin_function_is_not_blamed_through_a_context_that_raise_from_none_suppressed():
    """blamed_function walked `__cause__ or __context__`: past `raise ... from None`, which says the error
    it handled is no part of the new one (Python's traceback does not print it), so code that replaced a
    plugin function's error with its own was blamed on the plugin. A cause (`from exc`), and the error a
    new one was raised while handling, are still followed, as the traceback prints them."""
    from amemctl.errors import blame_function, blamed_function

    def replaced(how: str) -> BaseException:
        try:
            try:
                raise blame_function(ValueError("the function's"), "similarity", "theirs")
            except ValueError as exc:
                if how == "from None":
                    raise RuntimeError("my own") from None
                if how == "from exc":
                    raise RuntimeError("because of it") from exc
                raise RuntimeError("while handling it")  # noqa: B904 (what is tested: the implicit context)
        except RuntimeError as error:
            return error

    assert blamed_function(replaced("from None")) is None
    assert blamed_function(replaced("from exc")) == ("similarity", "theirs")
    assert blamed_function(replaced("while handling")) == ("similarity", "theirs")


KEEPER = """\
    from amemctl import Input, Output, Stage, hookimpl

    class Keep(Stage):
        \"\"\"Passes the patterns on unchanged.\"\"\"

        name = "keep"
        source = Input("patterns", "the patterns")
        out = Output("patterns", "the same patterns")

        def run(self, ctx):
            ctx[self.out] = ctx[self.source]

    @hookimpl
    def amemctl_register_stages():
        return [Keep]
"""


def test_an_error_that_is_not_about_the_data_does_not_point_at_the_plugin_stage_that_wrote_it(install, tmp_path):
    """Only a stage refusing its data (StageError) names the plugin stage that wrote it: persist refusing
    a store that already exists said "'patterns' comes from the plugin stage 'keep': check what it writes"."""
    from amemctl.dsl.pipeline import parse_text
    from amemctl.engine.runner import run_pipeline
    from amemctl.errors import StoreError

    install("keeper-plugin", "keeper_mod", KEEPER)
    text = f"seed: 0\ndata: {{dataset: digits, limit: 20}}\nstages:\n  - keep: {{}}\n  - persist: {{store: {tmp_path / 's.zarr'}}}\n"
    run_pipeline(parse_text(text, "p.yaml", registry=build_registry()), out_root=tmp_path / "runs", device="cpu", progress=False)
    with pytest.raises(StoreError) as info:
        run_pipeline(parse_text(text, "p.yaml", registry=build_registry()), out_root=tmp_path / "runs", device="cpu", progress=False)
    assert "already exists" in info.value.message
    assert "comes from" not in (info.value.hint or "")


MUTATORS = """\
    from amemctl import Input, Output, Param, Stage, hookimpl

    class Brighten(Stage):
        '''Brighten the queries: in place (the bug), through a view, or into a new tensor.'''
        name = "brighten"
        how = Param(str, "in_place", "in_place, view or new")
        queries = Input("queries", "the queries")
        output = Output("queries", "the brightened queries")

        def run(self, ctx):
            q = ctx[self.queries]
            if self.how == "in_place":
                q.mul_(2)
            elif self.how == "view":
                q[:3] = 0.0
            else:
                q = q * 2
                q.add_(1)  # its own new tensor: changing that is fine
            ctx[self.output] = q

    @hookimpl
    def amemctl_register_stages():
        return [Brighten]
"""


def test_a_stage_that_changes_a_tensor_it_was_given_in_place_is_blamed_for_it(install, tmp_path):
    """Sweep points share the tensors of their common prefix: a stage that changed one in place
    handed every later point its changed copy (here the second beta's queries, brightened twice)."""
    from amemctl.dsl.pipeline import parse_text
    from amemctl.engine.runner import run_pipeline
    from amemctl.errors import StageCrash

    install("bright-plugin", "bright_mod", MUTATORS)
    text = ("seed: 0\ndata: {dataset: digits, limit: 20}\nsweep:\n  beta: [1, 10]\nstages:\n  - corrupt: {kind: gaussian}\n"
            "  - brighten: {how: %s}\n  - score: {}\n  - separate: {function: softmax, beta: '${beta}'}\n  - project: {}\n")
    for how, changed in (("in_place", "'queries'"), ("view", "'queries'")):
        pipeline = parse_text(text % how, "p.yaml", registry=build_registry())
        with pytest.raises(StageCrash) as info:
            run_pipeline(pipeline, out_root=tmp_path, device="cpu", progress=False)
        message = str(info.value)
        assert message.startswith("p.yaml:7:5: stage 'brighten' (package bright-plugin) crashed") and f"modified the context tensor {changed} in place" in message, message
        assert "a bug in the plugin package bright-plugin" in message
    run = run_pipeline(parse_text(text % "new", "p.yaml", registry=build_registry()), out_root=tmp_path, device="cpu", progress=False)
    assert len(run.points) == 2
