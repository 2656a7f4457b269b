"""Tests of the example plugin: its math, its registration, and its stage inside a pipeline."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from amemctl.dsl.pipeline import parse_text
from amemctl.engine.runner import run_pipeline
from amemctl.plugins import build_registry
from amemctl_example.pca import fit_pca

HERE = Path(__file__).resolve().parent.parent


def test_components_carry_the_variance_sklearn_finds():
    from sklearn.datasets import load_digits
    from sklearn.decomposition import PCA

    x = torch.from_numpy(load_digits().data).float()
    mean, projection, kept = fit_pca(x, 10)
    embedded = (x.double() - mean) @ projection
    reference = PCA(n_components=10).fit(x.numpy())
    np.testing.assert_allclose(embedded.var(0, unbiased=True).numpy(), reference.explained_variance_, rtol=1e-6)
    assert kept == pytest.approx(reference.explained_variance_ratio_.sum(), rel=1e-6)
    # the components are orthonormal, so distances within them never exceed pixel distances
    np.testing.assert_allclose((projection.T @ projection).numpy(), np.eye(10), atol=1e-8)


def test_whitened_components_have_unit_variance():
    x = torch.randn(500, 20, dtype=torch.float64) * torch.linspace(0.1, 5, 20)
    mean, projection, _ = fit_pca(x, 5, whiten=True)
    np.testing.assert_allclose(((x - mean) @ projection).var(0).numpy(), np.ones(5), rtol=1e-8)


def test_the_entry_point_registers_one_of_each_kind():
    registry = build_registry()
    shown = {"stages": "pca", "similarities": "chebyshev", "separations": "cubic", "corruptions": "dropout_rows", "encoders": "linear", "datasets": "bars"}
    for kind, name in shown.items():
        assert registry.package_of(kind, name) == "amemctl-example", (kind, name)
    assert not [f for f in registry.failures if f.plugin == "example"]


def test_every_hook_is_implemented_by_the_example_plugin():
    # The example is the test plugin installed in every test run: it must exercise every hook.
    import inspect

    from amemctl import hookspecs
    from amemctl_example import plugin

    hooks = {n for n, _ in inspect.getmembers(hookspecs, inspect.isfunction) if n.startswith("amemctl_")}
    assert hooks == {n for n in dir(plugin) if n.startswith("amemctl_")}


def test_amemctl_stages_lists_and_describes_each_of_them():
    from click.testing import CliRunner

    from amemctl.cli import main

    listing = CliRunner().invoke(main, ["stages"])
    assert listing.exit_code == 0
    for name in ("pca", "chebyshev", "cubic", "dropout_rows", "linear", "bars"):
        assert name in listing.output
    cubic = CliRunner().invoke(main, ["stages", "cubic"])
    assert "separation, amemctl-example" in cubic.output and "normalize" in cubic.output
    linear = CliRunner().invoke(main, ["stages", "linear"])
    assert "encoder, amemctl-example" in linear.output and "embedding width: 32" in linear.output and "pixels" in linear.output


def test_the_plugin_functions_compute_what_they_say():
    from amemctl_example.plugin import cubic, dropout_rows, read_bars

    scores = torch.tensor([[-1.0, 0.5, 2.0]])
    assert torch.equal(cubic().weights(scores), torch.tensor([[0.0, 0.125, 8.0]]))
    assert torch.allclose(cubic(normalize=True).weights(scores), torch.tensor([[0.0, 0.125, 8.0]]) / 8.125)
    images = torch.ones(200, 1, 8, 8)
    out = dropout_rows(images, torch.Generator().manual_seed(0), 0.25)
    rows = out[:, 0, :, 0]
    assert torch.equal(out, rows[:, None, :, None].expand_as(out))  # whole rows, nothing else
    assert abs((rows == 0).float().mean().item() - 0.25) < 0.03
    bars = read_bars(None)
    assert bars.images.shape == (16, 1, 8, 8) and (bars.images.sum((1, 2, 3)) == 8).all()


def test_a_parameter_of_a_plugin_function_is_checked_at_its_line():
    with pytest.raises(Exception) as info:
        parse_text("stages:\n  - load: {dataset: bars}\n  - corrupt: {kind: dropout_rows, p: 2}\n", "bad.yaml")
    assert "bad.yaml:3:38: parameter 'p' is 2.0, out of range" in str(info.value)
    with pytest.raises(Exception) as info:
        parse_text("stages:\n  - load: {dataset: bars}\n  - corrupt: {}\n  - score: {}\n  - separate: {function: cubic, beta: 2}\n", "bad.yaml")
    assert "bad.yaml:5:33: separation 'cubic' takes no parameter 'beta'" in str(info.value)


STORE_BACKED = """\
seed: 0
stages:
  - open_store: {{store: {store}}}
  - corrupt: {{kind: dropout_rows, p: 0.25}}
  - pca: {{components: 16}}
  - embed: {{arch: linear, pixels: 192, input: queries, output: query_codes, seed: 1}}
  - score: {{memory: pca_patterns, queries: pca_queries, similarity: chebyshev, distance_form: inverse}}
  - separate: {{function: cubic}}
  - project: {{values: patterns}}
  - evaluate: {{}}
"""


def test_every_plugin_piece_runs_on_store_backed_inputs(tmp_path):
    # The memory comes lazily from a store (StoreRows), which the pca stage asks the engine to
    # materialise; the corruption, encoder, similarity and separation all come from the plugin.
    store = tmp_path / "bars.zarr"
    persist = parse_text(f"data: {{dataset: bars}}\nstages:\n  - persist: {{store: {store}}}\n")
    run_pipeline(persist, out_root=tmp_path, device="cpu", progress=False)
    run = run_pipeline(parse_text(STORE_BACKED.format(store=store)), out_root=tmp_path, device="cpu", progress=False)
    point = run.points[0]
    assert point.metrics["error_index"] < 0.5, point.metrics  # most bars survive losing a quarter of their rows


def test_a_similarity_with_a_parameter_is_made_with_it_in_a_pipeline_and_a_notebook(tmp_path):
    """`minkowski` of order 1 is the manhattan distance; its order is checked at its YAML line, as a separation's beta is."""
    import amemctl

    text = "seed: 0\ndata: {dataset: digits, limit: 100}\nstages:\n  - corrupt: {kind: gaussian, variance: 0.3}\n  - score: {similarity: %s}\n  - separate: {function: softmax, beta: 0.2}\n  - project: {}\n  - evaluate: {}\n"
    (order_one,) = run_pipeline(parse_text(text % "minkowski, p: 1"), out_root=tmp_path, device="cpu", progress=False).points
    (manhattan,) = run_pipeline(parse_text(text % "manhattan"), out_root=tmp_path, device="cpu", progress=False).points
    assert order_one.metrics["mse"] == pytest.approx(manhattan.metrics["mse"], rel=1e-5)
    with pytest.raises(Exception) as info:
        parse_text(text % "minkowski, p: 0.5", "bad.yaml")
    assert "bad.yaml:5:39: parameter 'p' is 0.5, out of range" in str(info.value)

    queries, keys = torch.rand(5, 12), torch.rand(40, 12)
    got = amemctl.recall(queries, keys, similarity={"similarity": "minkowski", "p": 2.5}, separation="max")
    assert torch.equal(got.index, torch.cdist(queries, keys, p=2.5).argmin(1))
    with pytest.raises(amemctl.ParamError, match="parameter 'p' is 0.5, out of range"):
        amemctl.recall(queries, keys, similarity={"similarity": "minkowski", "p": 0.5})
    kl = amemctl.recall(queries, keys, similarity={"similarity": "kl", "eps": 1e-4}, separation="max")
    assert torch.equal(kl.index, amemctl.recall(queries, keys, similarity=amemctl.Similarity("kl", lambda q, k: -_kl(q, k, 1e-4)), separation="max").index)


def _kl(queries, keys, eps):
    from amemctl.core.similarity import kl

    return kl(queries, keys, eps=eps)


def test_the_declared_metric_titles_its_curve_in_words(tmp_path, monkeypatch):
    """`pca` declares explained_variance as an amemctl.Metric: report: may name it, and its curve reads in words, in percent."""
    from amemctl import figures

    drawn = []
    monkeypatch.setattr(figures, "curves", lambda series, path, **kw: drawn.append((series, kw)) or path)
    text = (
        "name: pca\ndata: {dataset: digits, subset: 40}\nsweep: {c: [4, 16]}\nstages:\n  - corrupt: {kind: gaussian}\n"
        "  - pca: {components: '${c}'}\nreport:\n  curves: [{metric: explained_variance, x: c}]\n"
    )
    run_pipeline(parse_text(text, "pca.yaml"), out_root=tmp_path, device="cpu", progress=False)
    [(series, kw)] = drawn
    assert kw["title"] == "variance of the stored patterns the kept components explain" and kw["ylabel"] == "variance explained"
    assert kw["percent"] and kw["bounds"] == (0.0, 1.0)
    [(xs, ys, _)] = series.values()
    assert xs == [4, 16] and 0 < ys[0] < ys[1] <= 1  # more components keep more of the variance
