"""Every similarity function against a direct, loop-free reference written from its definition."""

from __future__ import annotations

import pytest
import torch

from amemctl.core.similarity import SIMILARITIES, get_similarity, to_score
from amemctl.errors import StageError

EPS = 1e-6


def _dist(x):
    p = x.clamp_min(0) + EPS
    return p / p.sum(-1, keepdim=True)


def _kl(a, b):  # KL(a || b) for distributions broadcast over the last axis
    return (a * (a.log() - b.log())).sum(-1)


REFERENCE = {
    "dot": lambda q, k: (q[:, None, :] * k[None]).sum(-1),
    "normalized_dot": lambda q, k: ((q / q.sum(1, keepdim=True))[:, None, :] * (k / k.sum(1, keepdim=True))[None]).sum(-1),
    "cosine": lambda q, k: (q[:, None, :] * k[None]).sum(-1) / (q.norm(dim=1)[:, None] * k.norm(dim=1)[None]),
    "euclidean": lambda q, k: ((q[:, None, :] - k[None]) ** 2).sum(-1).sqrt(),
    "squared_euclidean": lambda q, k: ((q[:, None, :] - k[None]) ** 2).sum(-1),
    "manhattan": lambda q, k: (q[:, None, :] - k[None]).abs().sum(-1),
    "kl": lambda q, k: _kl(_dist(k)[None], _dist(q)[:, None]),
    "reverse_kl": lambda q, k: _kl(_dist(q)[:, None], _dist(k)[None]),
    "jensen_shannon": lambda q, k: 0.5 * _kl(_dist(q)[:, None], (_dist(q)[:, None] + _dist(k)[None]) / 2)
    + 0.5 * _kl(_dist(k)[None], (_dist(q)[:, None] + _dist(k)[None]) / 2),
    "hamming": lambda q, k: ((q[:, None, :] > 0) != (k[None] > 0)).sum(-1).double(),
}


def test_every_builtin_similarity_has_a_reference():
    assert set(REFERENCE) == set(SIMILARITIES)


@pytest.mark.parametrize("name", sorted(SIMILARITIES))
def test_similarity_matches_its_definition(name):
    g = torch.Generator().manual_seed(1)
    q = torch.rand(7, 13, generator=g, dtype=torch.float64)
    k = torch.rand(11, 13, generator=g, dtype=torch.float64)
    if name == "hamming":
        q, k = q.round() * 2 - 1, k.round()  # bipolar queries against binary keys
    sim = SIMILARITIES[name]
    expected = REFERENCE[name](q, k)
    got = sim.kernel(q, k)
    torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-9)
    # as a score, higher means more similar: the identical pattern scores best
    scores = sim(k, k)
    assert torch.equal(scores.argmax(1), torch.arange(len(k))) or name in ("dot", "normalized_dot", "kl", "reverse_kl")


def test_distances_become_scores_by_negation_or_inversion():
    d = torch.tensor([[0.0, 1.0, 4.0]])
    assert torch.equal(to_score(d.clone(), "negative"), -d)
    torch.testing.assert_close(to_score(d.clone(), "inverse"), 1 / (d + 1e-6))
    with pytest.raises(StageError):
        to_score(d, "sideways")


def test_aliases_and_unknown_names():
    assert get_similarity("L1").name == "manhattan"
    assert get_similarity("l2").name == "euclidean"
    with pytest.raises(StageError, match="did you mean 'manhattan'"):
        get_similarity("manhatan")


def test_zero_vectors_have_cosine_zero_not_nan():
    q = torch.zeros(1, 4)
    k = torch.ones(2, 4)
    assert torch.equal(SIMILARITIES["cosine"](q, k), torch.zeros(1, 2))


@pytest.mark.parametrize("smoothing", ["renormalize", "log"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_jensen_shannon_cpu_blocks_equal_the_whole_broadcast_bit_for_bit(monkeypatch, smoothing, dtype):
    """The CPU path computes the mixture a cache-sized block at a time: partial blocks included,
    every pair must get exactly the bits of the one-block formula (ties decide retrievals)."""
    import amemctl.core.similarity as similarity

    g = torch.Generator().manual_seed(3)
    q = (torch.rand(9, 13, generator=g) * (torch.rand(9, 13, generator=g) < 0.4)).to(dtype)  # zeros, as in digits
    k = (torch.rand(14, 13, generator=g) * (torch.rand(14, 13, generator=g) < 0.4)).to(dtype)
    qd, logq = similarity._distribution(q, 1e-4, smoothing)
    kd, logk = similarity._distribution(k, 1e-4, smoothing)
    own = 0.5 * ((qd * logq).sum(1, keepdim=True) + (kd * logk).sum(1))
    mix = 0.5 * (qd[:, None, :] + kd[None, :, :])
    whole = own - (mix * ((mix + 1e-4).log() if smoothing == "log" else mix.log())).sum(-1)
    for elements in (1, 13 * 5, 13 * 14 * 2, 2**18):  # one pair, 5 keys, 2 queries x all keys, everything
        monkeypatch.setattr(similarity, "_CPU_BLOCK_ELEMENTS", elements)
        assert torch.equal(similarity.jensen_shannon(q, k, eps=1e-4, smoothing=smoothing), whole), elements
