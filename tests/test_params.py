"""Parameter declarations: inclusive and exclusive bounds."""

from __future__ import annotations

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
