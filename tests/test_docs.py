"""The documentation says what the code does."""

from __future__ import annotations

import pytest

from amemctl.dsl.pipeline import TOP_LEVEL
from amemctl.plugins import build_registry
from amemctl.stage_docs import stage_reference
from tests.conftest import ROOT


def test_the_stage_reference_is_regenerated_from_the_code():
    expected = stage_reference(build_registry(entry_points=False))
    assert (ROOT / "docs" / "stages.md").read_text() == expected, "run: amemctl stages --markdown > docs/stages.md"


def test_every_top_level_key_is_documented():
    text = (ROOT / "docs" / "pipelines.md").read_text()
    for key in TOP_LEVEL:
        assert f"| `{key}` |" in text, key


def test_the_readme_names_the_two_commands_ci_uses():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    assert "make demo" in readme and "make test" in readme and "make test" in ci


def test_the_plugin_guides_say_that_each_ctx_rng_call_gives_the_next_stream():
    # A plugin author calling ctx.rng() per draw gets independent streams (two noise masks
    # that differ), reproduced when the stage starts again; both guides must say so, as long
    # as the code does it.
    from pathlib import Path

    import torch

    from amemctl.context import Context

    ctx = Context(torch.device("cpu"), 0, 2**20, Path("."))
    ctx.begin_stage(7)
    first, second = (torch.rand(5, generator=ctx.rng()) for _ in range(2))
    assert not torch.equal(first, second)
    assert torch.equal(first, torch.rand(5, generator=torch.Generator().manual_seed(7)))  # the stage's seed first: documented numbers stand
    ctx.begin_stage(7)
    assert torch.equal(torch.rand(5, generator=ctx.rng()), first) and torch.equal(torch.rand(5, generator=ctx.rng()), second)
    for guide in ("docs/plugins.md", "plugins/amemctl-example/README.md"):
        text = " ".join((ROOT / guide).read_text().split())
        assert "two calls never draw the same numbers" in text, guide




def _guide_example(heading: str) -> dict:
    """Run the Python example in the section `heading` of docs/plugins.md; the names it defines."""
    section = (ROOT / "docs" / "plugins.md").read_text().split(heading + "\n", 1)[1].split("\n### ", 1)[0]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    names: dict = {}
    exec(compile(code, "docs/plugins.md", "exec"), names)
    return names


def test_the_guides_separation_example_reuses_softmax_and_its_reducer(run_text):
    import torch

    from amemctl import Softmax, StageError
    from amemctl.core.rows import TensorRows
    from amemctl.core.separation import make_separation
    from tests.conftest import error_of

    functions = {f.name: f for f in _guide_example("### `amemctl_register_separations`")["amemctl_register_separations"]()}
    scores = torch.rand(5, 40, generator=torch.Generator().manual_seed(0)) * 9 + 1  # float32 in [1, 10]
    power = functions["stable_power"](n=100)
    expected = torch.softmax(100 * scores.double().log(), 1)  # s^100 / sum s^100, in float64 and log space
    torch.testing.assert_close(power.weights(scores).double(), expected, rtol=1e-4, atol=1e-6)
    assert make_separation("polynomial", n=100).weights(scores).isnan().any()  # what it is for: s^100 overflows float32
    # streamed chunk by chunk through the wrapped softmax reducer, it gives the full-row answer
    values = torch.randn(40, 3, generator=torch.Generator().manual_seed(1))
    reducer = power.reducer(5, 3, scores)
    for offset in range(0, 40, 7):
        reducer.update(scores[:, offset : offset + 7], offset, values[offset : offset + 7] if reducer.reads_values else None)
    torch.testing.assert_close(reducer.finish(TensorRows(values)), power.weights(scores) @ values)
    # tempered makes a Softmax itself (what retrieval's fast routes recognise), its temperature bounded above 0
    tempered = functions["tempered"](temperature=0.01)
    assert type(tempered) is Softmax and tempered.beta == 100

    registry = build_registry(entry_points=False)
    registry.separations.update(functions)
    text = (
        "data: {dataset: digits, limit: 60}\nsweep:\n  sep: [{function: stable_power, n: 100}, OTHER]\nstages:\n"
        "  - corrupt: {kind: gaussian, variance: 0.01}\n  - score: {similarity: SIMILARITY}\n  - separate: ${sep}\n  - project: {}\n  - evaluate: {}\n"
    )
    # through a pipeline (the fused, streamed retrieval): where s^100 fits float32 (cosines <= 1) it is the polynomial's answer...
    cosine = [p.metrics for p in run_text(text.replace("SIMILARITY", "cosine").replace("OTHER", "{function: polynomial, n: 100}"), registry=registry).points]
    assert cosine[0]["mse"] == pytest.approx(cosine[1]["mse"], rel=1e-4)
    # ...and on dot products of digits (in the thousands), where the polynomial overflows, it still retrieves, as max does
    with pytest.raises(StageError, match="overflowed to NaN"):
        run_text(text.replace("SIMILARITY", "dot").replace("OTHER", "{function: polynomial, n: 100}"), registry=registry)
    dot = [p.metrics for p in run_text(text.replace("SIMILARITY", "dot").replace("OTHER", "{function: max}"), registry=registry).points]
    assert dot[0]["error_index"] == dot[1]["error_index"]
    bad = text.replace("SIMILARITY", "dot").replace("{function: stable_power, n: 100}, OTHER", "{function: tempered, temperature: 0}")
    assert "hint: temperature takes a number > 0" in error_of(bad, registry)


def test_what_the_plugin_guide_takes_from_amemctl_is_exported():
    """Everything a plugin needs is importable from amemctl itself: what the guide names must be there."""
    import re

    import amemctl

    text = (ROOT / "docs" / "plugins.md").read_text()
    named = set(re.findall(r"\bamemctl\.([A-Z]\w*)", text))
    for imported in re.findall(r"^from amemctl import (.+)$", text, flags=re.MULTILINE):
        named |= {name.strip() for name in imported.split(",")}
    assert {"Softmax", "Reducer", "Separation", "Elementwise", "ParamError"} <= named
    for name in sorted(named):
        assert name in amemctl.__all__ and getattr(amemctl, name) is not None, name
