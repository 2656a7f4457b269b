"""The CPU route (amemctl.core.kernels.cpu) against the plain formula, with FAISS and without."""

from __future__ import annotations

import math

import pytest
import torch

from amemctl import recall
from amemctl.core.kernels import cpu, faiss_backend
from amemctl.core.rows import TensorRows
from amemctl.core.separation import Softmax, TopK, make_separation, top_k
from amemctl.core.similarity import SIMILARITIES, Similarity, dot, get_similarity

ROUTED = list(cpu.ROUTED)


@pytest.fixture(params=["faiss", "torch"])
def l1_backend(request, monkeypatch):
    """Run a test with FAISS's L1 kernel and again with FAISS monkeypatched away (torch.cdist)."""
    if request.param == "faiss":
        if faiss_backend.faiss is None:
            pytest.skip("faiss-cpu is not installed")
    else:
        similarity = getattr(request.node, "callspec", None) and request.node.callspec.params.get("similarity")
        if faiss_backend.faiss is not None and similarity not in (None, "manhattan"):
            pytest.skip("only L1 distances come from FAISS: the faiss run covers this one")
        monkeypatch.setattr(faiss_backend, "faiss", None)
    return request.param


def _memory(n=3000, d=16, q=40, width=None, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    keys = torch.rand(n, d, generator=g, dtype=torch.float64)
    queries = keys[torch.randint(0, n, (q,), generator=g)] + 0.1 * torch.randn(q, d, generator=g, dtype=torch.float64)
    values = torch.randn(n, width, generator=g, dtype=torch.float64) if width else None
    return queries.to(dtype), keys.to(dtype), None if values is None else values.to(dtype)


def _plain(similarity, sep, queries, keys, values):
    """The unchunked formula in float64: output, first argmax, its score."""
    full = SIMILARITIES[similarity](queries.double(), keys.double())
    out = sep.weights(full) @ (keys if values is None else values).double()
    best = full.argmax(1)
    return out, best, full.gather(1, best[:, None])[:, 0]


SEPARATIONS = [Softmax(beta=1000.0), Softmax(beta=1.0), make_separation("max"), TopK(k=3), TopK(k=4, weighting="softmax", beta=50.0)]


@pytest.mark.parametrize("similarity", ROUTED)
@pytest.mark.parametrize("sep", SEPARATIONS, ids=lambda s: s.describe())
def test_route_equals_the_plain_formula_across_chunk_boundaries(similarity, sep, l1_backend):
    queries, keys, values = _memory(width=5)
    assert cpu.applies(queries, get_similarity(similarity), sep, "negative", False)
    out, best, score = _plain(similarity, sep, queries, keys, values)
    for budget in (20 * 1024, 300 * 1024, 2**30):  # many blocks of queries and memories, a few, one
        r = recall(queries, keys, values, similarity=similarity, separation=sep, budget=budget)
        assert torch.equal(r.index, best)
        torch.testing.assert_close(r.score.double(), score, rtol=1e-5, atol=1e-5)
        # float32 logits beta * s carry rounding of about beta * |s| * 1e-7 (the plain float32 formula too)
        tol = 1e-4 + 2e-6 * getattr(sep, "beta", 1.0) * float(score.abs().max())
        torch.testing.assert_close(r.output.double(), out, rtol=tol, atol=tol)


@pytest.mark.parametrize("similarity", ROUTED)
def test_softmax_at_beta_1000_matches_float64_closely(similarity, l1_backend):
    """No weight is lost to the exp floor: beta = 1000 puts most arguments far below -87."""
    queries, keys, _ = _memory(n=2000, d=8, q=16, dtype=torch.float64)
    sep = Softmax(beta=1000.0)
    out, best, _ = _plain(similarity, sep, queries, keys, None)
    r = recall(queries, keys, similarity=similarity, separation=sep, budget=64 * 1024)
    torch.testing.assert_close(r.output, out, rtol=1e-9, atol=1e-10)
    assert torch.equal(r.index, best)


@pytest.mark.parametrize("similarity", ROUTED)
def test_ties_go_to_the_lowest_index_across_chunks(similarity, l1_backend):
    """Duplicated stored rows on both sides of chunk boundaries: the lowest copy wins, for max and top-k."""
    g = torch.Generator().manual_seed(1)
    # four ones among six zeros and ones: 15 patterns, so many exact duplicates, and every score exact
    # (cosine too: each norm is 2). Integer patterns of other norms were not: (1, 1, 2) and (2, 2, 4)
    # have equal cosines whose float32 roundings differ with the BLAS kernel of the chunk's shape.
    keys, queries = (torch.rand(rows, 6, generator=g).argsort(1).lt(4).float() for rows in (2500, 30))
    keys[0] = queries[0]
    for k in (1, 2, 5):
        sep = TopK(k=k)
        full = SIMILARITIES[similarity](queries, keys)
        _, expected = top_k(full, k)
        for budget in (8 * 1024, 2**30):
            r = recall(queries, keys, similarity=similarity, separation=sep, budget=budget)
            torch.testing.assert_close(r.output, keys[expected].mean(1))
            assert torch.equal(r.index, expected[:, 0])
    assert recall(queries, keys, similarity="dot", separation="max", budget=8 * 1024).index[0] == 0


def test_chunk_top_k_agrees_with_the_exact_top_k_under_heavy_ties():
    g = torch.Generator().manual_seed(2)
    z = torch.randint(0, 3, (50, 200), generator=g).float()
    for k in (1, 3, 10, 200, 300):
        vals, idx = cpu.chunk_top_k(z.clone(), k)
        want_vals, want_idx = top_k(z, k)
        assert torch.equal(idx, want_idx) and torch.equal(vals, want_vals)


def test_hetero_values_and_rows_that_are_not_the_keys(l1_backend):
    """Values given apart from the keys (a Rows that is not a tensor) are streamed alongside them."""

    class Wrapped:  # any Rows implementation, as a store serves them
        def __init__(self, t):
            self.inner = TensorRows(t)
            self.row_shape = self.inner.row_shape

        def __len__(self):
            return len(self.inner)

        def chunks(self, size):
            return self.inner.chunks(size)

        def take(self, index):
            return self.inner.take(index)

    queries, keys, values = _memory(n=1500, d=10, q=7, width=33)
    for sep in (Softmax(beta=30.0), TopK(k=2)):
        out, best, _ = _plain("manhattan", sep, queries, keys, values)
        r = recall(queries, Wrapped(keys), Wrapped(values), similarity="manhattan", separation=sep, budget=16 * 1024)
        torch.testing.assert_close(r.output.double(), out, rtol=1e-4, atol=1e-4)
        assert torch.equal(r.index, best)


def test_blocks_stay_within_the_budget(monkeypatch):
    seen = []
    original = cpu._Scores.__call__

    def recording(self, keys, offset):
        z = original(self, keys, offset)
        seen.append(z.numel())
        return z

    monkeypatch.setattr(cpu._Scores, "__call__", recording)
    queries, keys, _ = _memory(n=5000, d=4, q=300)
    budget = 64 * 1024
    for sep in (Softmax(beta=5.0), TopK(k=3)):
        seen.clear()
        recall(queries, keys, similarity="dot", separation=sep, budget=budget)
        assert max(seen) * 4 * 2 <= budget
        assert sum(seen) == 300 * 5000  # every pair scored exactly once
    # with a large budget blocks are still cache-sized, not the whole matrix (6 MB here)
    for sep, block_bytes in ((Softmax(beta=5.0), cpu.CACHE_BYTES), (TopK(k=1), cpu.SELECT_BYTES)):
        seen.clear()
        recall(queries, keys, similarity="dot", separation=sep, budget=2**30)
        assert max(seen) * 4 <= block_bytes and sum(seen) == 300 * 5000


def test_plan_takes_fewer_queries_rather_than_thin_blocks():
    block_q, block_n = cpu.plan(10_000, 1_000_000, 4, 1, 2**30)
    assert block_n >= cpu.MIN_COLUMNS and block_q * block_n * 4 <= cpu.CACHE_BYTES
    assert cpu.plan(1, 10, 4, 1, 2**30) == (1, 10)
    assert cpu.plan(256, 100_000, 4, 1, 4096) == (1, 512)
    # L1 blocks hold about L1_KEY_BYTES of keys, and the budget still bounds the scores
    block_q, block_n = cpu.plan_l1(256, 100_000, 512, 4, 2**30)
    assert block_n * 512 * 4 <= cpu.L1_KEY_BYTES and block_q == 256
    for budget in (4096, 64 * 1024):
        block_q, block_n = cpu.plan_l1(256, 100_000, 512, 4, budget)
        assert block_q * block_n * 4 * 2 <= budget


def test_what_the_route_leaves_to_the_general_path():
    q = torch.rand(3, 4)
    l1 = get_similarity("manhattan")
    assert not cpu.applies(q, l1, Softmax(1.0), "inverse", False)
    assert not cpu.applies(q, l1, Softmax(1.0), "negative", True)
    assert not cpu.applies(q, l1, Softmax(-1.0), "negative", False)
    assert not cpu.applies(q, l1, make_separation("sparsemax"), "negative", False)
    assert not cpu.applies(q, l1, make_separation("polynomial"), "negative", False)
    assert not cpu.applies(q, Similarity("dot", dot), Softmax(1.0), "negative", False)  # a plugin's own "dot"
    assert not cpu.applies(q, get_similarity("kl"), Softmax(1.0), "negative", False)
    assert not cpu.applies(q.half(), l1, Softmax(1.0), "negative", False)
    assert cpu.applies(q, l1, TopK(k=2), "negative", False)


@pytest.mark.skipif(faiss_backend.faiss is None, reason="faiss-cpu is not installed")
def test_faiss_l1_distances_equal_cdist():
    g = torch.Generator().manual_seed(3)
    q, k = torch.rand(9, 37, generator=g), torch.rand(70, 37, generator=g)
    torch.testing.assert_close(faiss_backend.l1_distances(q, k), torch.cdist(q, k, p=1), rtol=1e-5, atol=1e-5)
    out = torch.full((9, 70), -1.0)
    assert faiss_backend.l1_distances(q, k, out) is out
    torch.testing.assert_close(out, torch.cdist(q, k, p=1), rtol=1e-5, atol=1e-5)
    assert not faiss_backend.available(q.double())


def test_stored_norms_are_reused_until_the_keys_change_in_place():
    """The euclidean route keeps |k|^2 beside a key tensor; an in-place change must not reuse stale norms."""
    g = torch.Generator().manual_seed(3)
    keys = torch.randint(0, 4, (3000, 5), generator=g).float()
    queries = torch.randint(0, 4, (40, 5), generator=g).float()
    first = recall(queries, keys, similarity="euclidean", separation="max", budget=16 * 1024)
    norms = cpu.stored_norms(TensorRows(keys), torch.float32)
    assert cpu.stored_norms(TensorRows(keys), torch.float32) is norms  # computed once
    assert torch.equal(norms, (keys * keys).sum(1))  # exact sums of squares: integer distances tie exactly
    keys.mul_(-1).add_(3)  # every key changes, in place: the version counter moves
    again = recall(queries, keys, similarity="euclidean", separation="max", budget=16 * 1024)
    _, expected = top_k(SIMILARITIES["euclidean"](queries, keys), 1)
    assert torch.equal(again.index, expected[:, 0]) and not torch.equal(again.index, first.index)
    assert cpu.stored_norms(TensorRows(keys), torch.float32) is not norms


def test_first_maximum_over_chunks_counts_nan_as_the_maximum():
    """The running first maximum: ties to the lowest index across chunks, a NaN score wins (the bad key shows)."""
    firsts = cpu._FirstMaximum()
    chunks = [
        torch.tensor([[1.0, 5.0, 5.0], [0.0, 0.0, 0.0], [2.0, 1.0, 0.0]]),
        torch.tensor([[5.0, 6.0, 6.0], [0.0, float("nan"), float("nan")], [2.0, 2.0, 2.0]]),
        torch.tensor([[6.0, 6.0, 0.0], [9.0, 9.0, 9.0], [float("nan"), 0.0, 0.0]]),
    ]
    for i, z in enumerate(chunks):
        firsts.add(z, 3 * i)
    assert firsts.index().tolist() == [4, 4, 6]


@pytest.mark.parametrize("transposed", [False, True])
@pytest.mark.parametrize("widths", [(256, 128, 64), (100, 256, 37), (640,)])
def test_first_maximum_equals_argmax_of_the_whole_row(widths, transposed):
    """Chunks of run-sized and odd widths, many ties and a few NaNs: the same index as one argmax over the row."""
    g = torch.Generator().manual_seed(5)
    whole = torch.randint(0, 6, (50, sum(widths)), generator=g).float()
    whole[3, 70] = whole[3, 300 % sum(widths)] = float("nan")
    whole[7, -1] = float("nan")
    firsts, offset = cpu._FirstMaximum(transposed), 0
    for w in widths:
        chunk = whole[:, offset : offset + w]
        firsts.add((chunk.T if transposed else chunk).contiguous(), offset)
        offset += w
    assert torch.equal(firsts.index(), whole.argmax(1))  # torch.argmax: the first maximum, a NaN above all


def test_keys_without_a_version_counter_or_with_grad_still_get_the_right_neighbours():
    """Inference tensors have no version counter and parameters change under optimisers: no cached norms for them."""
    g = torch.Generator().manual_seed(9)
    queries, keys = torch.randn(7, 6, generator=g), torch.randn(500, 6, generator=g)
    expected = SIMILARITIES["euclidean"](queries, keys).argmax(1)
    with torch.inference_mode():
        frozen = keys.clone()
    assert torch.equal(recall(queries, frozen, similarity="euclidean", separation="max").index, expected)
    learnable = keys.clone().requires_grad_(True)
    assert torch.equal(recall(queries, learnable, similarity="euclidean", separation="max").index, expected)
    assert cpu.stored_norms(TensorRows(learnable), torch.float32) is None


def test_blocks_are_whole_runs_of_the_first_maximum_when_they_can_be():
    for queries in (100, 256, 1000, 3):
        _, block_n = cpu.plan(queries, 1_000_000, 4, 1, 2**30, cpu.SELECT_BYTES)
        assert block_n % cpu._FirstMaximum.RUN == 0
    assert cpu.plan(4, 100, 4, 1, 2**30) == (4, 100)  # fewer memories than two runs: kept as they are


@pytest.mark.parametrize("similarity", ROUTED)
def test_the_sparse_projection_at_large_beta_equals_the_dense_one_and_the_formula(similarity, monkeypatch, l1_backend):
    """At beta = 10,000 the weights are nearly one-hot; projecting only those above the floor is exact to rounding."""
    queries, keys, values = _memory(n=1500, d=12, q=33, width=300)
    sep = Softmax(beta=10_000.0)
    out, best, _ = _plain(similarity, sep, queries, keys, values)
    outputs = {}
    for mode, share in (("sparse", 1.0), ("dense", -1.0)):  # always one way, then always the other
        monkeypatch.setattr(cpu, "SPARSE_SHARE", share)
        r = recall(queries, keys, values, similarity=similarity, separation=sep, budget=64 * 1024)
        assert torch.equal(r.index, best)
        outputs[mode] = r.output
    torch.testing.assert_close(outputs["sparse"], outputs["dense"], rtol=1e-6, atol=1e-6)
    tol = 1e-4 + 2e-6 * sep.beta * float(SIMILARITIES[similarity](queries.double(), keys.double()).abs().max())
    torch.testing.assert_close(outputs["sparse"].double(), out, rtol=tol, atol=tol)


def test_a_nan_weight_still_reaches_the_output_through_the_sparse_projection(monkeypatch):
    monkeypatch.setattr(cpu, "SPARSE_SHARE", 1.0)
    acc = torch.zeros(2, 3)
    p = torch.full((2, 4), math.exp(cpu.EXP_FLOOR))
    p[0, 1], p[1, 2] = 1.0, float("nan")
    values = torch.arange(12.0).reshape(4, 3)
    cpu._project(acc, p, values)
    torch.testing.assert_close(acc[0], values[1])
    assert torch.isnan(acc[1]).all()
