"""The documentation says what the code does."""

from __future__ import annotations

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


