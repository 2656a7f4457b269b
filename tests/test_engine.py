"""The engine: run folders, fusing, reuse across sweep points, seeding, failures."""

from __future__ import annotations

import json
import re

import pytest
import torch

from amemctl import Input, Output, Param, Stage, StageError
from amemctl.context import Context
from amemctl.dsl.pipeline import parse_text
from amemctl.engine.plan import plan_steps
from amemctl.engine.runner import resolve_device
from amemctl.errors import AmemctlError, DeviceError
from amemctl.plugins import build_registry

BASE = """\
name: small
seed: 0
data: {dataset: digits, limit: 300}
stages:
  - corrupt: {kind: gaussian, variance: 0.05, count: 40}
  - score: {similarity: manhattan}
  - separate: {function: softmax, beta: 100}
  - project: {}
  - evaluate: {threshold: 1.0}
"""


class Peek(Stage):
    """Read a tensor and record its size (a stand-in for a stage that needs the weights)."""

    name = "peek"
    input = Input("weights", "any tensor")

    def run(self, ctx):
        ctx.metric("peeked", ctx[self.input].numel())

    def metrics(self):
        return ["peeked"]


class Counting(Stage):
    """Count how often it runs."""

    name = "counting"
    calls = 0
    tag = Param(str, "", "ignored")

    def run(self, ctx):
        type(self).calls += 1


class Poison(Stage):
    """Write queries with a NaN in them."""

    name = "poison"
    output = Output("queries", "poisoned queries")
    targets = Output("targets", "their rows")

    def run(self, ctx):
        q = ctx["patterns"][:4].clone()
        q[2, 0, 0, 0] = float("nan")
        ctx[self.output] = q
        ctx[self.targets] = torch.arange(4)


@pytest.fixture
def registry():
    reg = build_registry()
    for cls in (Peek, Counting, Poison):
        reg.stages[cls.name] = cls
    return reg


def test_a_run_leaves_its_folder(run_text):
    run = run_text(BASE + "  - report: {count: 4}\nreport:\n  tables: [{metric: error_index}]\n")
    folder = run.run_dir
    for name in ("pipeline.yaml", "resolved.yaml", "environment.json", "metrics.json", "report.md", "figures/retrievals.png"):
        assert (folder / name).is_file(), name
    metrics = json.loads((folder / "metrics.json").read_text())
    assert metrics["status"] == "ok" and len(metrics["points"]) == 1
    point = metrics["points"][0]["metrics"]
    assert 0 <= point["error_index"] <= 1 and point["stored"] == 300 and "seconds.retrieve" in point
    assert "| error_index |" in (folder / "report.md").read_text()
    env = json.loads((folder / "environment.json").read_text())
    assert env["device"] == "cpu" and env["torch"] == torch.__version__


def _run_steps(text, registry, budget=2**28):
    plan = parse_text(text, registry=registry).plans[0]
    ctx = Context(torch.device("cpu"), 0, budget, run_dir=None)
    steps = plan_steps(plan.stages)
    for i, step in enumerate(steps):
        ctx.stage_seed = i
        step.run(ctx)
    return steps, ctx


def test_score_separate_project_fuse_unless_a_later_stage_reads_the_weights(registry):
    fused_steps, fused = _run_steps(BASE, registry)
    apart_steps, apart = _run_steps(BASE + "  - peek: {}\n", registry)
    assert [s.name for s in fused_steps] == ["load", "corrupt", "retrieve", "evaluate"]
    assert [s.name for s in apart_steps] == ["load", "corrupt", "score", "separate", "project", "evaluate", "peek"]
    torch.testing.assert_close(fused["retrieved"], apart["retrieved"], rtol=1e-5, atol=1e-6)
    assert apart.metrics["peeked"] == 40 * 300


@pytest.mark.parametrize("function", ["sparsemax", "entmax15"])
def test_a_full_row_separation_run_apart_weighs_a_few_queries_at_a_time_and_equals_the_fused_retrieval(registry, function):
    text = BASE.replace("function: softmax", f"function: {function}")
    _, fused = _run_steps(text, registry)
    _, apart = _run_steps(text + "  - peek: {}\n", registry, budget=60_000)  # 40 x 300 scores (48,000 bytes) fit; 12 queries weighed at a time
    torch.testing.assert_close(fused["retrieved"], apart["retrieved"], rtol=1e-5, atol=1e-6)
    assert apart["weights"].shape == (40, 300) and bool((apart["weights"] == 0).any())


def test_an_unfused_score_over_the_budget_is_refused(run_text, registry):
    with pytest.raises(StageError, match=r"40 x 300 matrix .* over the budget.*\n.*one streaming retrieval"):
        run_text("budget: 1000\n" + BASE + "  - peek: {}\n", registry=registry)


def test_points_that_share_a_prefix_reuse_it(run_text, registry):
    Counting.calls = 0
    text = BASE.replace("stages:\n", "sweep:\n  beta: [1, 10, 100]\nstages:\n  - counting: {}\n").replace("beta: 100", "beta: '${beta}'")
    run = run_text(text, registry=registry)
    assert Counting.calls == 1 and len(run.points) == 3
    assert len({p.metrics["mse"] for p in run.points}) == 3


def test_a_seed_reproduces_a_run_and_another_seed_does_not(run_text):
    first = run_text(BASE).points[0].metrics
    again = run_text(BASE).points[0].metrics
    other = run_text(BASE.replace("seed: 0", "seed: 1")).points[0].metrics
    assert first["mse"] == again["mse"] and first["mse"] != other["mse"]


def test_nan_queries_fail_with_the_stage_and_pipeline_line(run_text, registry):
    text = "data: {dataset: digits, limit: 50}\nstages:\n  - poison: {}\n  - score: {}\n  - separate: {}\n  - project: {}\n"
    with pytest.raises(StageError) as info:
        run_text(text, registry=registry)
    message = info.value.render()
    assert message.startswith("test.yaml:4:5: stage 'score' failed (run): queries contain NaN or infinite values (rows 2)")


def test_a_failed_run_keeps_the_points_that_finished(run_text, tmp_path):
    text = BASE.replace("count: 40", "count: '${n}'").replace("stages:\n", "sweep: {n: [10, 5000]}\nstages:\n")
    with pytest.raises(AmemctlError, match="count=5000 queries asked of 300 stored patterns"):
        run_text(text)
    (folder,) = (tmp_path / "runs" / "small").iterdir()
    metrics = json.loads((folder / "metrics.json").read_text())
    assert metrics["status"] == "failed" and [p["sweep"] for p in metrics["points"]] == [{"n": "10"}]


def test_devices():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type in ("cpu", "cuda")
    if not torch.cuda.is_available():
        with pytest.raises(DeviceError, match="no CUDA device.*\n.*--device cpu"):
            resolve_device("cuda")


def test_the_hetero_wiring_projects_other_values(run_text, registry):
    # keys: the top half of each digit; values: the whole digit (UHN's half-image completion)
    text = """\
data: {dataset: digits, limit: 200}
stages:
  - corrupt: {kind: mask_zero, fraction: 0.5, side: bottom, output: tops}
  - corrupt: {kind: mask_zero, fraction: 0.5, side: bottom, input: patterns, output: queries}
  - score: {memory: tops, similarity: euclidean}
  - separate: {function: max}
  - project: {values: patterns}
  - evaluate: {}
"""
    metrics = run_text(text, registry=registry).points[0].metrics
    assert metrics["error_index"] < 0.05  # an unchanged top half finds its own digit


@pytest.mark.parametrize(
    "targets, refusal",
    [
        (torch.tensor([0.0, 1.0, 2.0]), "targets ('targets') must be row numbers of the stored values, a vector of integers; it is float32 shaped (3,)"),
        (torch.tensor([[0], [1], [2]]), "it is int64 shaped (3, 1)"),
        (torch.tensor([0, 1, 4]), "targets ('targets') hold row numbers outside 0..3, the 4 stored values"),
        (torch.tensor([0, -1, 2]), "outside 0..3"),
    ],
)
def test_evaluate_refuses_targets_that_are_not_row_numbers_of_the_stored_values(targets, refusal):
    """Before: a float tensor named in `targets:` (or rows out of range) crashed evaluate as 'a bug in amemctl'."""
    from amemctl.context import Context
    from amemctl.errors import StageError
    from amemctl.stages.evaluate import Evaluate

    ctx = Context(torch.device("cpu"), 0, 2**20, None, stage_seed=0)
    values = torch.rand(4, 6)
    ctx["patterns"], ctx["retrieved"], ctx["targets"] = values, values[:3], targets
    with pytest.raises(StageError, match=re.escape(refusal)):
        Evaluate().run(ctx)
    ctx["targets"] = torch.tensor([0, 1, 2])
    Evaluate().run(ctx)
    assert ctx.metrics["error_index"] == 0
