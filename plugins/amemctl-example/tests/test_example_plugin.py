"""Tests of the example plugin: its math, its registration, and its stage inside a pipeline."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from amemctl.dsl.pipeline import load_pipeline, parse_text
from amemctl.engine.runner import run_pipeline
from amemctl.plugins import build_registry
from amemctl_example.pca import fit_pca

HERE = Path(__file__).resolve().parent.parent


def test_components_carry_the_variance_sklearn_finds():
    from sklearn.datasets import load_digits
    from sklearn.decomposition import PCA

    x = torch.from_numpy(load_digits().data).float()
    mean, projection = fit_pca(x, 10)
    embedded = (x.double() - mean) @ projection
    reference = PCA(n_components=10).fit(x.numpy())
    np.testing.assert_allclose(embedded.var(0, unbiased=True).numpy(), reference.explained_variance_, rtol=1e-6)
    # the components are orthonormal, so distances within them never exceed pixel distances
    np.testing.assert_allclose((projection.T @ projection).numpy(), np.eye(10), atol=1e-8)


def test_whitened_components_have_unit_variance():
    x = torch.randn(500, 20, dtype=torch.float64) * torch.linspace(0.1, 5, 20)
    mean, projection = fit_pca(x, 5, whiten=True)
    np.testing.assert_allclose(((x - mean) @ projection).var(0).numpy(), np.ones(5), rtol=1e-8)


def test_the_entry_point_registers_the_stage_and_the_similarity():
    registry = build_registry()
    assert registry.package_of("stages", "pca") == "amemctl-example"
    assert registry.package_of("similarities", "chebyshev") == "amemctl-example"
    assert not [f for f in registry.failures if f.plugin == "example"]


def test_too_many_components_is_a_clear_error_before_running():
    with pytest.raises(Exception) as info:
        parse_text("stages:\n  - load: {dataset: digits}\n  - corrupt: {}\n  - pca: {components: 0}\n")
    assert "components" in str(info.value) and ">= 1" in str(info.value)


def test_the_example_pipeline_runs_and_full_rank_pca_keeps_euclidean_retrieval(tmp_path):
    # All 64 components are a rotation of pixel space: euclidean retrieval must not change.
    pipeline = load_pipeline(HERE / "pipelines" / "pca_digits.yaml", ["sweep.components=[8, 64]"])
    run = run_pipeline(pipeline, out_root=tmp_path, device="cpu", progress=False)
    errors = {(p.point.values["components"], p.point.values["similarity"]): p.metrics["error_index"] for p in run.points}
    assert set(errors) == {(c, s) for c in (8, 64) for s in ("euclidean", "chebyshev")}

    pixels = parse_text(
        "seed: 0\ndata: {dataset: digits}\nstages:\n  - corrupt: {kind: gaussian, variance: 0.1}\n"
        "  - score: {similarity: euclidean}\n  - separate: {function: max}\n  - project: {}\n  - evaluate: {}\n"
    )
    baseline = run_pipeline(pixels, out_root=tmp_path, device="cpu", progress=False).points[0].metrics["error_index"]
    assert errors[(64, "euclidean")] == pytest.approx(baseline, abs=1 / 1797)
    assert errors[(8, "euclidean")] > baseline  # 8 components lose detail that tells digits apart
