"""The chunked retrieval against the plain formula, its memory budget, and its input checks."""

from __future__ import annotations

import pytest
import torch

from amemctl import UniversalHopfield, recall, retrieve
from amemctl.core.retrieval import plan_blocks
from amemctl.core.separation import make_separation
from amemctl.core.similarity import SIMILARITIES, Similarity
from amemctl.errors import StageError

SEPARATIONS = [
    ("softmax", {"beta": 20.0}),
    ("max", {}),
    ("topk", {"k": 3}),
    ("polynomial", {"n": 3}),
    ("identity", {"normalize": False}),
    ("threshold", {"t": -3.0}),
    ("sparsemax", {"beta": 10.0}),
]


def _memory(n=2500, d=24, q=30, width=None, seed=0):
    g = torch.Generator().manual_seed(seed)
    keys = torch.rand(n, d, generator=g, dtype=torch.float64)
    queries = keys[torch.randint(0, n, (q,), generator=g)] + 0.05 * torch.randn(q, d, generator=g, dtype=torch.float64)
    values = torch.randn(n, width, generator=g, dtype=torch.float64) if width else None
    return queries, keys, values


@pytest.mark.parametrize("similarity", sorted(SIMILARITIES))
@pytest.mark.parametrize("separation,params", SEPARATIONS, ids=[s for s, _ in SEPARATIONS])
def test_chunked_retrieval_equals_the_formula(similarity, separation, params):
    queries, keys, values = _memory(width=5)
    sep = make_separation(separation, **params)
    full = SIMILARITIES[similarity](queries, keys)
    expected = sep.weights(full) @ values
    small = 40 * 1024 * 8  # forces several chunks of stored memories and blocks of queries
    for budget in (small, 2**30):
        result = recall(queries, keys, values, similarity=similarity, separation=sep, budget=budget)
        torch.testing.assert_close(result.output, expected, rtol=1e-7, atol=1e-9)
        assert torch.equal(result.index, full.argmax(1))


def test_auto_association_reshapes_to_the_stored_shape():
    images = torch.rand(50, 1, 4, 4)
    out = retrieve(images[:3] * 0.9, images, similarity="euclidean", separation="max")
    assert out.shape == (3, 1, 4, 4)
    assert torch.equal(out, images[:3])


@pytest.mark.parametrize("separation", ["softmax", "max", "topk", "polynomial"])  # the CPU route's, and the general path's
@pytest.mark.parametrize("similarity", ["dot", "manhattan", "euclidean"])
def test_no_queries_retrieve_nothing_in_the_stored_shape(similarity, separation):
    """An empty batch of image-shaped queries: empty answers shaped like the values, as for one query."""
    keys, values = torch.rand(40, 2, 3), torch.rand(40, 5, 1)
    for queries in (torch.rand(0, 2, 3), torch.rand(0, 6)):
        result = recall(queries, keys, values, similarity=similarity, separation=separation)
        assert result.output.shape == (0, 5, 1) and result.index.shape == (0,) and result.score.shape == (0,)
        assert result.index.dtype == torch.long
    assert recall(torch.rand(0), torch.rand(40), separation=separation).output.shape == (0, 1)  # 1-D: keys of width 1


def test_hetero_values_wider_than_keys():
    queries, keys, values = _memory(n=300, d=8, q=4, width=100)
    out = retrieve(queries, keys, values, similarity="manhattan", separation="softmax")
    assert out.shape == (4, 100)


def test_normalised_scores_as_in_the_uhn_code():
    queries, keys, values = _memory(n=200, d=6, q=3, width=2)
    s = 1 / (torch.cdist(queries, keys, p=1) + 1e-6)
    w = torch.softmax(5.0 * s / s.sum(1, keepdim=True), dim=1)
    out = retrieve(queries, keys, values, similarity="manhattan", distance_form="inverse", normalize_scores=True,
                   separation=make_separation("softmax", beta=5.0), budget=8 * 64 * 8)
    torch.testing.assert_close(out, w @ values)


@pytest.mark.parametrize("budget", [8 * 64 * 8, 2**20], ids=["recomputed", "kept"])
def test_normalised_scores_are_computed_once_when_they_fit_and_equal_either_way(budget):
    """Normalising needs a first pass for the sums; scores that fit a quarter of the budget are
    kept from it (the similarity runs once per chunk), else recomputed: the same bits either way."""
    queries, keys, values = _memory(n=200, d=6, q=3, width=2)
    calls = []

    def counting(q, k):
        calls.append(len(q) * len(k))
        return torch.cdist(q, k, p=1)

    sim = Similarity("counted", counting, distance=True)
    s = 1 / (torch.cdist(queries, keys, p=1) + 1e-6)
    w = torch.softmax(5.0 * s / s.sum(1, keepdim=True), dim=1)
    got = recall(queries, keys, values, similarity=sim, distance_form="inverse", normalize_scores=True,
                 separation=make_separation("softmax", beta=5.0), budget=budget)
    torch.testing.assert_close(got.output, w @ values)
    assert sum(calls) == 3 * 200 * (1 if budget == 2**20 else 2)  # every (query, key) pair scored once, or twice
    other = recall(queries, keys, values, similarity="manhattan", distance_form="inverse", normalize_scores=True,
                   separation=make_separation("softmax", beta=5.0), budget=8 * 64 * 8 if budget == 2**20 else 2**20)
    assert torch.equal(other.output, got.output) and torch.equal(other.index, got.index)


def test_no_block_of_scores_exceeds_the_budget():
    seen = []

    def recording(q, k):
        seen.append(q.shape[0] * k.shape[0])
        return q @ k.T

    sim = Similarity("recording", recording)
    queries, keys, _ = _memory(n=5000, d=4, q=300)
    budget = 1 << 20
    recall(queries.float(), keys.float(), similarity=sim, separation="softmax", budget=budget)
    pair_bytes = 4 * (3 + 1)
    assert max(seen) * pair_bytes <= budget
    assert sum(seen) == 300 * 5000  # every pair scored exactly once


def test_plan_blocks_takes_fewer_queries_rather_than_tiny_chunks():
    block_q, block_n = plan_blocks(queries=10_000, memories=1_000_000, pair_bytes=16, budget=16 * 2**20, full_rows=False)
    assert block_n >= 1024 and block_q * block_n * 16 <= 16 * 2**20
    with pytest.raises(StageError, match="raise the retrieval budget"):
        plan_blocks(queries=1, memories=10_000, pair_bytes=16, budget=1024, full_rows=4)
    # full rows: each query's row held, and rows of temporaries (4 per score here) no larger than the held ones
    block_q, block_n = plan_blocks(queries=50, memories=10_000, pair_bytes=16, budget=2**20, full_rows=4)
    assert block_q == 2**20 // (2 * 10_000 * 4) and block_q * 10_000 * 4 + block_q * block_n * 16 <= 2**20
    # one row and the temporaries of one: 40,000 bytes each
    assert plan_blocks(queries=50, memories=10_000, pair_bytes=16, budget=5 * 40_000, full_rows=4)[0] == 1
    with pytest.raises(StageError, match="raise the retrieval budget"):
        plan_blocks(queries=50, memories=10_000, pair_bytes=16, budget=5 * 40_000 - 1, full_rows=4)


def test_ties_go_to_the_lowest_index_whatever_the_chunking():
    keys = torch.zeros(3000, 4)
    keys[1234] = keys[2999] = 1.0
    q = torch.ones(2, 4)
    for budget in (4096, 2**30):
        r = recall(q, keys, similarity="dot", separation="max", budget=budget)
        assert r.index.tolist() == [1234, 1234]


def test_nan_queries_and_shape_mismatch_are_clear_errors():
    keys = torch.rand(10, 6)
    q = torch.rand(3, 6)
    q[1, 2] = float("nan")
    with pytest.raises(StageError, match=r"queries contain NaN .*rows 1\b"):
        recall(q, keys)
    with pytest.raises(StageError, match="queries have 5 features"):
        recall(torch.rand(2, 5), keys)
    with pytest.raises(StageError, match="10 stored keys but 9 stored values"):
        recall(torch.rand(2, 6), keys, torch.rand(9, 3))


def test_beta_up_to_1e4_does_not_overflow():
    queries, keys, _ = _memory(n=1000, d=16, q=8)
    out = retrieve(queries.float(), keys.float(), similarity="dot", separation=make_separation("softmax", beta=1e4))
    assert torch.isfinite(out).all()


def test_half_precision_inputs_are_computed_in_float32():
    queries, keys, _ = _memory(n=500, d=16, q=8)
    out = retrieve(queries.half(), keys.half(), similarity="euclidean", separation="max")
    assert out.dtype == torch.float32


def test_module_wrapper_iterates_to_a_stored_pattern():
    _, keys, _ = _memory(n=100, d=32, q=1)
    net = UniversalHopfield(keys, similarity="cosine", separation=make_separation("softmax", beta=1000.0))
    noisy = keys[:5] + 0.05 * torch.randn(5, 32, dtype=torch.float64)
    assert torch.equal(net.nearest(noisy), torch.arange(5))
    out = net(noisy, steps=3)
    torch.testing.assert_close(out, keys[:5], atol=1e-3, rtol=0)


def test_the_module_wrapper_keeps_its_budget_for_nearest_too(monkeypatch):
    """nearest() scored with the default 256 MiB whatever budget the network was given."""
    import amemctl.core.modules as modules

    budgets = []

    def spy(*args, **kwargs):
        budgets.append(kwargs.get("budget"))
        return recall(*args, **kwargs)

    monkeypatch.setattr(modules, "recall", spy)
    _, keys, _ = _memory(n=100, d=32, q=1)
    net = UniversalHopfield(keys, similarity="cosine", budget=4096)
    net(keys[:3])
    net.nearest(keys[:3])
    assert budgets == [4096, 4096]


def test_nan_in_stored_keys_names_the_rows():
    keys = torch.rand(3000, 4)
    keys[2500, 1] = float("nan")
    with pytest.raises(StageError, match=r"stored keys contain NaN .*rows 2500\b"):
        recall(torch.rand(2, 4), keys, budget=4096)


def test_an_overflowing_separation_says_so():
    keys = torch.full((10, 4), 100.0)
    with pytest.raises(StageError, match="overflowed"):
        recall(torch.full((1, 4), 100.0), keys, separation=make_separation("polynomial", n=40, normalize=False))


def test_queries_no_memory_weights_are_counted_and_the_run_says_so(run_text, caplog):
    """A rectifier over negative distances weights every memory 0: retrieval returns zeros, and says how often."""
    queries, keys, _ = _memory(n=3000, q=20)  # keys in [0, 1): a query of negative entries scores <= 0 on all of them
    queries[5:] = -queries[5:]
    queries[7, 0] = 5.0  # ... unless one entry outweighs the rest
    plain = (queries @ keys.T).clamp_min(0).pow(2).sum(1) == 0
    result = recall(queries, keys, similarity="dot", separation=make_separation("rectified_polynomial", n=2), budget=64 * 1024)
    assert result.unweighted == int(plain.sum()) == 14
    assert not result.output[plain].any() and result.output[~plain].abs().sum(1).gt(0).all()
    assert recall(queries, keys, similarity="manhattan", separation="softmax").unweighted == 0
    text = "data: {dataset: digits, limit: 60}\nstages:\n  - corrupt: {kind: gaussian, variance: 0.01}\n  - score: {similarity: manhattan}\n  - separate: {function: rectified_polynomial}\n  - project: {}\n  - evaluate: {}\n"
    run = run_text(text)
    said = "60 of 60 queries got weight 0 from every memory under rectified_polynomial(n=2, normalize=True) on manhattan scores"
    assert said in caplog.text and said in (run.run_dir / "report.md").read_text()
    caplog.clear()
    run_text(text.replace("{function: rectified_polynomial}", "{function: softmax}"))
    assert "got weight 0" not in caplog.text
