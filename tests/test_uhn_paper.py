"""The UHN figure pipelines against a plain re-statement of the UHN paper's own code.

Millidge et al. 2022 published their experiment code (github.com/BerenMillidge/Theory_
Associative_Memory, functions.py). The functions below restate it query by query, as it is
written there: each stored pattern and query flat, scores from the similarity, normalised to
sum 1, separated, normalised again, projected, and a retrieval counted when its summed squared
error is at most the threshold. The shipped pipelines, run with their defaults on fabricated
MNIST files, must give the same fraction for every setting whose corruption is deterministic;
the random corruptions are checked on the same noise draws.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from amemctl.core.similarity import SIMILARITIES
from amemctl.corruptions import corrupt
from amemctl.dsl.pipeline import load_pipeline
from amemctl.engine.runner import run_pipeline
from tests import fabricate
from tests.conftest import ROOT

EPSILON = 1e-4  # functions.py: EPSILON inside the logarithms of its KL divergences
H = 28


# ---------------------------------------------------------------------------------------
# the paper's code, restated (X: N x 784 stored patterns, z: one flat query)


def euclidean_distance(X, z):
    return 1 / torch.sum(torch.square(z - X), axis=1)


def manhatten_distance(X, z):
    return 1 / torch.sum(torch.abs(z - X), axis=1)


def normalized_dot_product(X, z):
    norm_X = X / torch.sum(X, axis=1).reshape(X.shape[0], 1)
    dots = norm_X @ (z / torch.sum(z))
    return dots / torch.sum(dots)


def KL_divergence(X, z):
    z_norm = z / torch.sum(z)
    rows = [x / x.sum() * (torch.log(x / x.sum() + EPSILON) - torch.log(z_norm + EPSILON)) for x in X]
    return 1 / torch.stack(rows).sum(1)


def reverse_KL_divergence(X, z):
    z_norm = z / torch.sum(z)
    rows = [z_norm * (torch.log(z_norm + EPSILON) - torch.log(x / x.sum() + EPSILON)) for x in X]
    return 1 / torch.stack(rows).sum(1)


def jensen_shannon(X, z):
    """The true JS divergence (mixture m = (x + z) / 2), eps inside the logs: amemctl's, not the paper's."""
    z_norm = z / torch.sum(z)
    out = []
    for x in X:
        x_norm = x / x.sum()
        m = (x_norm + z_norm) / 2
        kl_x = (x_norm * (torch.log(x_norm + EPSILON) - torch.log(m + EPSILON))).sum()
        kl_z = (z_norm * (torch.log(z_norm + EPSILON) - torch.log(m + EPSILON))).sum()
        out.append(0.5 * kl_x + 0.5 * kl_z)
    return 1 / torch.stack(out)


def paper_jensen_shannon(X, z):
    """functions.py's `Jensen_Shannon_divergence`, bug included: it inverts inverted scores."""
    return 1 / (0.5 * KL_divergence(X, z) + 0.5 * reverse_KL_divergence(X, z))


SIMS = {
    "euclidean": euclidean_distance,
    "manhattan": manhatten_distance,
    "normalized_dot": normalized_dot_product,
    "kl": KL_divergence,
    "reverse_kl": reverse_KL_divergence,
    "jensen_shannon": jensen_shannon,
}


def separation_max(x):
    z = torch.zeros(len(x))
    z[torch.argmax(x).item()] = 1
    return z


SEPS = {
    "log": torch.log,
    "identity": lambda x: x,
    "softmax 1000": lambda x: F.softmax(1000 * x, dim=0),
    "square": lambda x: torch.pow(x, 2),
    "cube": lambda x: torch.pow(x, 3),
    "sqrt": lambda x: torch.pow(x, 0.5),
    "quartic": lambda x: torch.pow(x, 4),
    "poly 10": lambda x: torch.pow(x, 10),
    "max": separation_max,
}


def mask_continuous_img(img, frac_masked):
    i = img.reshape(H, H).clone()
    i[int(H * (1 - frac_masked)) : H, :] = 0
    return i.reshape(-1)


def image_inpaint(img, mask_frac):
    i = img.reshape(H, H).clone()
    k = int(H * mask_frac // 2)
    i[0:k, :] = 0
    i[H - k : H, :] = 0
    i[:, 0:k] = 0
    i[:, H - k : H] = 0
    return i.reshape(-1)


def fraction_retrieved(X, queries, sim, sep, threshold=60.0, P=None):
    """PC_retrieve_store_continuous with general_update_rule (norm=True), one query at a time."""
    P = X if P is None else P
    correct = 0
    for j in range(len(X)):
        scores = sim(X, queries[j])
        scores = scores / torch.sum(scores)
        weights = sep(scores)
        weights = weights / torch.sum(weights)
        out = P.T @ weights
        correct += int(torch.sum(torch.square(P[j] - out)) <= threshold)
    return correct / len(X)


# ---------------------------------------------------------------------------------------
# fabricated MNIST test files on which the settings disagree


def hard_digits(n: int = 36, seed: int = 1, k: int = 4) -> np.ndarray:
    """Images whose top halves are k templates (each image's own brightness, some pixels replaced)
    and whose bottom halves differ.

    With the bottom masked a query mostly matches the other images of its template, so which
    one wins depends on the exact similarity and separation: a wrong setting changes the fraction.
    """
    rng = np.random.default_rng(seed)
    templates = rng.integers(0, 256, (k, H // 2, H)) * (rng.random((k, H // 2, H)) < 0.4)
    top = templates[np.arange(n) % k] * rng.uniform(0.4, 1.2, (n, 1, 1))
    replaced = rng.random((n, H // 2, H)) < rng.uniform(0.02, 0.2, (n, 1, 1))
    images = np.zeros((n, H, H))
    images[:, : H // 2] = np.where(replaced, rng.integers(0, 256, (n, H // 2, H)), top)
    images[:, H // 2 :] = rng.integers(0, 256, (n, H // 2, H)) * (rng.random((n, H // 2, H)) < rng.uniform(0.1, 0.6, (n, 1, 1)))
    return np.clip(images, 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def mnist_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("mnist")
    images = hard_digits()
    fabricate.mnist_split(root, "test", images, np.arange(len(images)) % 10)  # the test files alone
    return root, torch.from_numpy(images).float().div(255).reshape(len(images), -1)


def run(name: str, root, tmp_path, *overrides: str) -> dict:
    """The shipped pipeline `name`, its data swapped for the fabricated MNIST, one repeat."""
    n = 36
    sets = ["data.dataset=mnist", f"data.root={root}", "data.download=false", "repeats=1", *overrides]
    if name != "uhn_noise":
        sets.append(f"data.subset={n}" if name == "uhn_masking" else f"sweep.n=[{n}]")
    result = run_pipeline(load_pipeline(ROOT / "pipelines" / f"{name}.yaml", sets), out_root=tmp_path, device="cpu", progress=False)
    return {p.point.label(): 1 - p.metrics["error_pixels"] for p in result.points}


def test_fig2_every_similarity_equals_the_paper_code_with_the_bottom_half_masked(mnist_root, tmp_path):
    root, X = mnist_root
    got = run("uhn_capacity_similarity", root, tmp_path, "sweep.corruption=[{name: bottom, kind: mask_zero, fraction: 0.5, side: bottom, rounding: up}]")
    queries = torch.stack([mask_continuous_img(x, 0.5) for x in X])
    expected = {name: fraction_retrieved(X, queries, sim, separation_max) for name, sim in SIMS.items()}
    assert {label.split("similarity=")[1].split(",")[0]: v for label, v in got.items()} == pytest.approx(expected, abs=1e-6)
    # the data discriminate: the settings do not all agree, and the raw dot product differs again
    assert len(set(expected.values())) > 3
    raw_dot = fraction_retrieved(X, queries, lambda M, z: M @ z, separation_max)
    assert raw_dot != expected["normalized_dot"]


def test_fig3_every_separation_equals_the_paper_code(mnist_root, tmp_path):
    root, X = mnist_root
    got = run("uhn_capacity_separation", root, tmp_path)
    queries = torch.stack([mask_continuous_img(x, 0.5) for x in X])
    expected = {name: fraction_retrieved(X, queries, manhatten_distance, sep) for name, sep in SEPS.items()}
    assert {label.split("separation=")[1].split(",")[0]: v for label, v in got.items()} == pytest.approx(expected, abs=1e-6)
    assert len(set(expected.values())) > 5 and expected["softmax 1000"] != expected["max"]


def test_fig4_masked_fractions_round_up_as_the_paper_code(mnist_root, tmp_path):
    root, X = mnist_root
    fractions = (0.3, 0.4, 0.7)  # 0.3 and 0.4 mask 9 and 12 rows there; the nearest count would be 8 and 11
    settings = ", ".join(f"{{name: m{f}, n: 36, corrupt: {{kind: mask_zero, fraction: {f}, side: bottom, rounding: up}}}}" for f in fractions)
    got = run("uhn_noise", root, tmp_path, f"sweep.setting=[{settings}]", "sweep.similarity=[manhattan, normalized_dot, kl]")
    for f in fractions:
        queries = torch.stack([mask_continuous_img(x, f) for x in X])
        for name in ("manhattan", "normalized_dot", "kl"):
            assert got[f"setting=m{f}, similarity={name}"] == pytest.approx(fraction_retrieved(X, queries, SIMS[name], separation_max), abs=1e-6)
    # rounding to the nearest row count would have answered otherwise
    nearest = torch.stack([x.reshape(H, H).index_fill(0, torch.arange(H - 11, H), 0).reshape(-1) for x in X])  # 0.4 -> 11 rows
    assert fraction_retrieved(X, nearest, normalized_dot_product, separation_max) != got["setting=m0.4, similarity=normalized_dot"]


def test_fig14_inpainting_equals_the_paper_code(mnist_root, tmp_path):
    root, X = mnist_root
    got = run("uhn_masking", root, tmp_path, "sweep.corruption=[{name: i0.3, kind: inpaint, fraction: 0.3}, {name: i0.6, kind: inpaint, fraction: 0.6}]")
    for f in (0.3, 0.6):
        queries = torch.stack([image_inpaint(x, f) for x in X])
        for name in ("euclidean", "manhattan", "normalized_dot"):
            assert got[f"corruption=i{f}, similarity={name}"] == pytest.approx(fraction_retrieved(X, queries, SIMS[name], separation_max), abs=1e-6)


def test_gaussian_by_std_with_abs_is_the_paper_codes_noise():
    x = torch.rand(5, 1, H, H)
    got = corrupt(x, "gaussian", torch.Generator().manual_seed(3), std=0.5, abs=True)
    n = torch.randn(x.shape, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(got, torch.clamp(torch.abs(x + 0.5 * n), 0, 1))  # gaussian_perturb_image
    # by variance, without abs: amemctl's own default
    torch.testing.assert_close(corrupt(x, "gaussian", torch.Generator().manual_seed(3), variance=0.25), torch.clamp(x + 0.5 * n, 0, 1))


def test_fig6_hetero_values_are_the_bottom_halves_and_match_the_paper_code(mnist_root):
    """Same noisy queries: auto- and hetero-association as the pipeline wires them, against the paper's rule."""
    from amemctl.core.retrieval import recall

    _, X = mnist_root
    images = X.reshape(-1, 1, H, H)
    queries = corrupt(images, "gaussian", torch.Generator().manual_seed(0), std=0.3, abs=True)
    bottoms = corrupt(images, "mask_zero", fraction=0.5, side="top", rounding="up")
    P = bottoms.reshape(len(X), -1)
    assert torch.equal(P, torch.stack([x.reshape(H, H).index_fill(0, torch.arange(14), 0).reshape(-1) for x in X]))
    flat_q = queries.reshape(len(X), -1)
    for values, target in ((images, X), (bottoms, P)):
        out = recall(queries, images, values, similarity="normalized_dot", separation="max", normalize_scores=True).output
        ours = ((out.reshape(len(X), -1) - target).square().sum(1) <= 60).float().mean().item()
        assert ours == pytest.approx(fraction_retrieved(X, flat_q, normalized_dot_product, separation_max, P=target), abs=1e-6)


def test_threshold_is_scaled_by_784_over_the_values_per_image():
    from amemctl.stages.evaluate import Evaluate

    stage = Evaluate(threshold=60, threshold_pixels=784)
    assert stage.scaled_threshold(784) == 60  # MNIST
    assert stage.scaled_threshold(3 * 32 * 32) == pytest.approx(60 * 784 / 3072)  # CIFAR-10, as plot_capacity_graphs


def test_the_papers_jensen_shannon_ranks_the_least_similar_first_and_amemctls_does_not():
    g = torch.Generator().manual_seed(0)
    X = torch.rand(6, 50, generator=g) * (torch.rand(6, 50, generator=g) < 0.5)
    z = X[2].clone()
    assert torch.argmax(paper_jensen_shannon(X, z)).item() != 2  # the bug: an exact copy does not win
    ours = SIMILARITIES["jensen_shannon"].with_options(eps=EPSILON, smoothing="log")(z[None], X, "inverse")[0]
    assert torch.argmax(ours).item() == 2
    others = torch.arange(6) != 2  # the copy itself: 1/0 there, 1/(0 + 1e-6) in amemctl
    torch.testing.assert_close(ours[others], jensen_shannon(X, z)[others], rtol=1e-3, atol=0)
