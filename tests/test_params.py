"""Parameter declarations: inclusive and exclusive bounds, and every parameter error of a stage told at once."""

from __future__ import annotations

import re

import pytest
import torch
from click.testing import CliRunner

from amemctl import Param, ParamError
from amemctl.cli import main
from amemctl.dsl.pipeline import parse_text
from tests.conftest import error_of

LOADED = "data: {dataset: digits, limit: 40}\nstages:\n"


def _lines(message: str) -> list[str]:
    """The located lines of a rendered error: `bad.yaml:LINE:COLUMN: message`."""
    return [line for line in message.splitlines() if line.startswith("bad.yaml:")]


# ---------------------------------------------------------------------------------------
# exclusive bounds


def _param(**bounds: float) -> Param:
    param = Param(float, 0.5, "", **bounds)
    param.name = "p"
    return param


@pytest.mark.parametrize(
    "bounds,refused,accepted",
    [
        ({"above": 0}, [0, -1e-300], [1e-300, 7]),
        ({"below": 1}, [1, 2], [0.999999, -5]),
        ({"above": 0, "below": 1}, [0, 1], [1e-9, 1 - 1e-9]),
        ({"min": 0, "max": 1}, [-1e-9, 1 + 1e-9], [0, 1]),  # inclusive bounds keep their edges
        ({"min": 0, "below": 1}, [-1e-9, 1], [0, 0.5]),
    ],
)
def test_exclusive_bounds_refuse_their_edge_and_inclusive_ones_keep_it(bounds, refused, accepted):
    param = _param(**bounds)
    for value in accepted:
        assert param.coerce(value) == value
    for value in refused:
        with pytest.raises(ParamError, match=r"parameter 'p' is .*, out of range"):
            param.coerce(value)


def test_an_integer_parameter_beyond_64_bits_is_refused_when_checked():
    """`steps: 99999999999999999999999` passed validation, then crashed the run as amemctl's bug (OverflowError in torch)."""
    param = Param(int, 1, "", min=1)
    param.name = "steps"
    assert param.coerce(2**63 - 1) == 2**63 - 1
    for value in (2**63, 10**23, 1e30):
        with pytest.raises(ParamError, match=r"parameter 'steps' is \d+, too large for a 64-bit integer"):
            param.coerce(value)
    assert "parameter 'steps' is 99999999999999999999999, too large" in error_of(LOADED + "  - corrupt: {}\n  - score: {}\n  - separate: {}\n  - project: {steps: 99999999999999999999999}\n")


def test_the_hint_and_the_type_say_which_bound_is_exclusive():
    assert _param(above=0).type_text() == "number > 0"
    assert _param(min=0, below=1).type_text() == "number >= 0 and < 1"
    with pytest.raises(ParamError) as info:
        _param(above=0, max=1).coerce(0)
    assert info.value.hint == "p takes a number > 0 and <= 1"
    assert Param(int, 3, "").type_text() == "integer"  # no bounds, nothing added


def test_a_declaration_with_two_bounds_on_a_side_or_a_refused_default_fails_where_it_is_written():
    with pytest.raises(TypeError, match="min .* or above .*, not both"):
        Param(float, 1.0, "", min=0, above=0)
    with pytest.raises(TypeError, match="max .* or below .*, not both"):
        Param(float, 0.5, "", max=1, below=1)
    with pytest.raises(TypeError, match="the default 0.0 is not > 0"):
        Param(float, 0.0, "a temperature", above=0)  # omitted it would pass, written out it would be refused
    assert Param(float, None, "", above=0).default is None  # an unset default is not a number to bound


def test_a_dam_temperature_of_zero_is_refused_before_the_run_not_divided_by():
    # min=0 let temperature_final: 0 through validation; the run then crashed on 1 / 0, blamed on amemctl
    text = LOADED + "  - train-dam: {temperature_final: 0, ramp: 1, epochs: 1}\n"
    assert "bad.yaml:3:36: parameter 'temperature_final' is 0.0, out of range\n  hint: temperature_final takes a number > 0" in error_of(text)
    # temperature: 0 was silently read as "unset" (the 99th percentile)
    assert "parameter 'temperature' is 0.0, out of range" in error_of(LOADED + "  - train-dam: {temperature: 0}\n")


def test_a_divergence_eps_of_zero_is_refused_before_it_makes_nan_scores():
    text = LOADED + "  - corrupt: {}\n  - score: {similarity: kl, eps: 0}\n"
    assert "parameter 'eps' is 0.0, out of range\n  hint: eps takes a number > 0" in error_of(text)
    assert parse_text(text.replace("eps: 0", "eps: 1e-12"))  # any positive eps keeps zeros finite


def test_inpaint_takes_any_fraction_under_one_and_keeps_the_centre():
    from amemctl.corruptions import corrupt

    # max=0.99 stood for "< 1": 0.995 was refused though it keeps the centre like any fraction under 1
    out = corrupt(torch.ones(1, 1, 32, 32), "inpaint", fraction=0.995)
    assert out[0, 0, 15:17, 15:17].eq(1).all() and out.sum() == 4
    assert "parameter 'fraction' is 1.0, out of range\n  hint: fraction takes a number >= 0 and < 1" in error_of(
        LOADED + "  - corrupt: {kind: inpaint, fraction: 1}\n"
    )


@pytest.mark.parametrize("name,shown", [("inpaint", "number >= 0 and < 1"), ("train-simclr", "number > 0"), ("knn-accuracy", "number > 0"), ("load", "integer >= 1")])
def test_amemctl_stages_shows_the_bounds(name, shown):
    result = CliRunner().invoke(main, ["stages", name], terminal_width=200)
    assert result.exit_code == 0 and shown in result.output, result.output


# ---------------------------------------------------------------------------------------
# every parameter error of a stage at once


def test_every_parameter_error_of_a_stage_is_reported_at_once_each_at_its_line():
    text = LOADED + "  - corrupt: {count: 2.5, outptu: q, kind: gaussian, variance: -1, std: x, p: 0.2}\n"
    message = error_of(text)
    assert _lines(message) == [
        "bad.yaml:3:22: parameter 'count' must be an integer, got 2.5",
        "bad.yaml:3:27: corruption 'gaussian' takes no parameter 'outptu'",
        "bad.yaml:3:64: parameter 'variance' is -1.0, out of range",
        "bad.yaml:3:73: parameter 'std' must be a number, got 'x'",
        "bad.yaml:3:76: corruption 'gaussian' takes no parameter 'p'",
    ], message
    # each with its fix (a name the stage does not take may be its chosen function's: the function is named)
    for hint in ("count takes an integer >= 1", "did you mean 'output'?", "variance takes a number >= 0", "std takes a number >= 0", "gaussian accepts mean, variance, std, abs"):
        assert f"  hint: {hint}" in message, hint


def test_a_stage_without_dispatch_reports_every_unknown_name_and_bad_value():
    message = error_of("stages:\n  - load: {dataset: digits, limt: 3, sise: 8, subset: 0}\n")
    assert _lines(message) == [
        "bad.yaml:2:29: stage 'load' has no parameter 'limt'",
        "bad.yaml:2:38: stage 'load' has no parameter 'sise'",
        "bad.yaml:2:55: parameter 'subset' is 0, out of range",
    ], message


def test_the_cross_parameter_check_waits_until_each_parameter_fits():
    # gaussian's check refuses variance and std together; with std itself wrong that would be a second, misleading error
    message = error_of(LOADED + "  - corrupt: {kind: gaussian, variance: 0.1, std: -1}\n")
    assert _lines(message) == ["bad.yaml:3:51: parameter 'std' is -1.0, out of range"] and "not both" not in message


def test_an_unknown_function_leaves_the_parameters_beside_it_unjudged():
    # which function `bta` was meant for is not known: only the name and the stage's own mistakes are told
    message = error_of(LOADED + "  - corrupt: {}\n  - score: {}\n  - separate: {function: sofmax, bta: 1, output: 3}\n")
    assert _lines(message) == [
        "bad.yaml:5:26: unknown separation 'sofmax'",
        "bad.yaml:5:50: parameter 'output' must be a string, got 3",
    ], message


def test_an_unknown_function_leaves_the_other_chosen_function_checked():
    # chain-recall chooses a similarity and a separation: a misspelt one does not hide the other's mistakes
    message = error_of("stages:\n  - load: {dataset: digits, limit: 10}\n  - chain-recall: {similarity: eucldean, separation: topk, k: 0, bogus: 1}\n")
    assert _lines(message) == ["bad.yaml:3:32: unknown similarity 'eucldean'", "bad.yaml:3:63: parameter 'k' is 0, out of range"], message


def test_errors_from_sweep_values_are_told_once_each_at_the_value():
    text = LOADED.replace("stages:", "sweep:\n  beta: [1, high, 10]\nstages:") + "  - corrupt: {}\n  - score: {}\n  - separate: {function: softmax, beta: '${beta}', bta: 2, input: [s]}\n"
    message = error_of(text)
    assert _lines(message) == [
        "bad.yaml:3:13: parameter 'beta' must be a number, got 'high' (from sweep variable 'beta', value 2)",
        "bad.yaml:7:52: separation 'softmax' takes no parameter 'bta'",  # in every point, told once
        "bad.yaml:7:67: parameter 'input' must be a string, got ['s']",
    ], message


def test_errors_inside_a_swept_mapping_point_at_each_parameter_in_it():
    text = LOADED.replace("stages:", "sweep:\n  sep:\n    - {function: max}\n    - function: topk\n      k: 0\n      weighting: soft\nstages:")
    message = error_of(text + "  - corrupt: {}\n  - score: {}\n  - separate: ${sep}\n")
    assert _lines(message) == [
        "bad.yaml:6:10: parameter 'k' is 0, out of range (from sweep variable 'sep', value 2)",
        "bad.yaml:7:18: 'soft' is not a valid 'weighting' (from sweep variable 'sep', value 2)",
    ], message


def test_every_step_of_compose_is_checked():
    steps = "[{kind: crop, scale: [0.5, 2]}, {kind: gaussian, variance: -1, p: 1}]"
    message = error_of(LOADED + f"  - corrupt: {{kind: compose, steps: {steps}}}\n")
    assert [line.split(": ", 1)[1] for line in _lines(message)] == [
        "step 1 of compose: scale = [0.5, 2.0] is out of range",
        "step 2 of compose: corruption 'gaussian' takes no parameter 'p'",
        "step 2 of compose: parameter 'variance' is -1.0, out of range",
    ], message


def test_in_python_a_stage_or_function_raises_one_error_listing_each():
    from amemctl.corruptions import corrupt
    from amemctl.plugins import stage_class

    with pytest.raises(ParamError) as info:
        stage_class("load")(None, dataset="digits", limit=0, size="big")
    assert [problem.param for problem in info.value.problems] == ["limit", "size"]
    assert info.value.render() == (
        "stage 'load' has 2 parameter errors:\n"
        "  parameter 'limit' is 0, out of range\n    hint: limit takes an integer >= 1\n"
        "  parameter 'size' must be an integer, got 'big'\n    hint: size takes an integer >= 1"
    )
    with pytest.raises(ParamError, match="corruption 'gaussian' has 2 parameter errors"):
        corrupt(torch.rand(2, 1, 4, 4), "gaussian", variance=-1, mean=5)


def test_one_error_is_told_as_it_always_was():
    single = ParamError("parameter 'k' is 0, out of range", hint="k takes an integer >= 1", param="k")
    assert ParamError.together([single], "stage 'separate'") is single and single.each() == [single]
    both = ParamError.together([single, ParamError.together([single, single])])  # gathered ones are flattened
    assert len(both.problems) == 3 and both.message == "3 parameter errors"
    with pytest.raises(ValueError):
        ParamError.together([])


@pytest.mark.parametrize("command", ["validate", "run"])
def test_the_cli_prints_them_all_in_one_message_and_exits_2(tmp_path, command):
    path = tmp_path / "bad.yaml"
    path.write_text(LOADED + "  - corrupt: {kind: gaussian, variance: -1, std: x}\n  - score: {similarity: kl, eps: 0}\n")
    result = CliRunner().invoke(main, [command, str(path), "--out", str(tmp_path / "runs")] if command == "run" else [command, str(path)])
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output and not (tmp_path / "runs").exists()
    located = re.findall(r"bad\.yaml:(\d+):(\d+): ", result.output)
    assert located == [("3", "41"), ("3", "50"), ("4", "34")], result.output
    assert result.output.count("error:") == 1 and result.output.count("hint:") == 3


def test_a_check_raising_several_problems_together_has_each_told_at_its_line():
    """docs/plugins.md: a check() that finds several problems raises them with ParamError.together."""
    from amemctl import Stage
    from amemctl.plugins import build_registry

    class Window(Stage):
        """Keep a window of features."""

        name = "window"
        start = Param(int, 0, "first feature kept", min=0)
        stop = Param(int, 8, "feature after the last kept", min=1)
        step = Param(int, 1, "stride", min=1)

        def check(self) -> None:
            problems = []
            if self.stop <= self.start:
                problems.append(ParamError(f"stop {self.stop} is not after start {self.start}", param="stop"))
            if self.step > self.stop - self.start:
                problems.append(ParamError(f"step {self.step} is wider than the window", param="step"))
            if problems:
                raise ParamError.together(problems, "stage 'window'")

    registry = build_registry(entry_points=False)
    registry.stages["window"] = Window
    message = error_of("stages:\n  - load: {dataset: digits, limit: 10}\n  - window: {start: 4, stop: 2, step: 3}\n", registry)
    assert _lines(message) == ["bad.yaml:3:30: stop 2 is not after start 4", "bad.yaml:3:39: step 3 is wider than the window"], message
