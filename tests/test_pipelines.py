"""Every shipped pipeline validates; the offline quickstart runs and shows the papers' effect."""

from __future__ import annotations

import pytest

from amemctl.dsl.pipeline import explain, load_pipeline
from amemctl.engine.runner import run_pipeline
from tests.conftest import ROOT

PIPELINES = sorted((ROOT / "pipelines").glob("*.yaml")) + sorted((ROOT / "plugins").glob("*/pipelines/*.yaml"))


@pytest.mark.parametrize("path", PIPELINES, ids=lambda p: p.name)
def test_shipped_pipelines_validate(path):
    assert load_pipeline(path).plans


@pytest.mark.parametrize("path", PIPELINES, ids=lambda p: p.name)
def test_shipped_pipelines_explain_every_plan(path):
    pipeline = load_pipeline(path)
    lines = explain(pipeline).splitlines()
    assert len([line for line in lines if line.startswith("  ")]) >= len(pipeline.plans[0].stages)
    assert all(f"{plan.stages[-1].stage.name}" in "\n".join(lines) for plan in pipeline.plans)


def test_explain_names_the_chosen_functions_and_their_given_values():
    text = explain(load_pipeline(ROOT / "pipelines" / "quickstart.yaml"))
    assert "corrupt: kind='gaussian' variance=0.1    (" in text  # a chosen function's own parameter, where not its default
    assert "separate: function='max'" in text and "separate: function='softmax' beta=1000.0" in text
    assert "score: similarity='manhattan'" in text  # the default similarity is dot: named all the same


def test_quickstart_runs_offline_and_manhattan_completes_masked_digits_best(tmp_path):
    store = f"stages.persist.store={tmp_path / 'quickstart.zarr'}"
    run = run_pipeline(load_pipeline(ROOT / "pipelines" / "quickstart.yaml", [store]), out_root=tmp_path, device="cpu", progress=False)
    assert len(run.points) == 16
    assert repr(run) == f"RunResult({str(run.run_dir)!r}, status='ok', points=16, device='cpu')"  # not every tensor
    masked = {
        (p.point.values["similarity"], p.point.values["separation"]["function"]): p.metrics["error_index"]
        for p in run.points
        if p.point.values["corruption"]["kind"] == "mask_zero"
    }
    # Millidge et al. 2022: the manhattan similarity is the most robust; dot is the worst
    assert min(masked, key=masked.get)[0] == "manhattan"
    assert max(masked, key=masked.get)[0] == "dot"
    # the example figure splits by corruption, whose points share their queries: two pages each
    grids = sorted(p.name for p in (run.run_dir / "figures").glob("retrievals-*.png"))
    assert [g.split("-", 2)[2] for g in grids] == ["corruption=gaussian-variance=0.1.png"] * 2 + ["corruption=mask-zero-fraction=0.5-side=top.png"] * 2
    assert all((run.run_dir / "figures" / g).stat().st_size > 10_000 for g in grids)

    # the second pipeline answers from the persisted store, without loading the digits
    reopened = load_pipeline(ROOT / "pipelines" / "quickstart_from_store.yaml", [f"stages.open_store.store={tmp_path / 'quickstart.zarr'}"])
    assert [s.stage.name for s in reopened.plans[0].stages][0] == "open_store"
    errors = [p.metrics["error_index"] for p in run_pipeline(reopened, out_root=tmp_path, device="cpu", progress=False).points]
    assert errors == sorted(errors) and errors[0] < 0.2  # more noise, more errors
