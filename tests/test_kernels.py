"""The Triton kernels, checked on the CPU through the Triton interpreter (and on a GPU when present)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import torch

pytest.importorskip("triton")

from tests.conftest import child_env  # noqa: E402

INTERPRETED = textwrap.dedent(
    """
    import torch
    from amemctl.core.kernels.l1 import available, l1_distances
    from amemctl.core import recall, make_separation

    g = torch.Generator().manual_seed(0)
    assert available(torch.zeros(1))
    for n_q, n_k, d in [(1, 1, 1), (1, 37, 8), (33, 65, 13), (70, 150, 40)]:   # ragged, Q = 1, d off the blocks
        q, k = torch.rand(n_q, d, generator=g), torch.rand(n_k, d, generator=g)
        torch.testing.assert_close(l1_distances(q, k), torch.cdist(q, k, p=1), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(l1_distances(q.bfloat16(), k.bfloat16()), torch.cdist(q.bfloat16().float(), k.bfloat16().float(), p=1), rtol=1e-5, atol=1e-4)
    # through retrieval: softmax with beta up to 1e4, values wider than keys, chunked over N
    k, v, q = torch.rand(300, 24, generator=g), torch.rand(300, 100, generator=g), torch.rand(9, 24, generator=g)
    for beta in (1.0, 1e4):
        sep = make_separation("softmax", beta=beta)
        got = recall(q, k, v, similarity="manhattan", separation=sep, budget=9 * 16 * 128).output
        ref = sep.weights(-torch.cdist(q, k, p=1)) @ v
        torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-5)
    got = recall(q, k.bfloat16(), v, similarity="manhattan", separation="max").index
    assert torch.equal(got, torch.cdist(q, k.bfloat16().float(), p=1).argmin(1))

    # the one-pass kernel: L1, dot and squared L2 with online softmax and projection, split over N
    from amemctl.core.kernels.fused import softmax_retrieve
    for sim in ("manhattan", "dot", "squared_euclidean"):
        for n_q, n_k, d, dv, beta, splits in [(1, 40, 5, 3, 1.0, 2), (33, 100, 13, 20, 10.0, 3), (17, 77, 8, 8, 1e4, None)]:
            q, k, v = torch.rand(n_q, d, generator=g), torch.rand(n_k, d, generator=g), torch.rand(n_k, dv, generator=g)
            ref = recall(q, k, v, similarity=sim, separation=make_separation("softmax", beta=beta)).output
            torch.testing.assert_close(softmax_retrieve(q, k, v, sim, beta, splits=splits), ref, rtol=1e-5, atol=1e-5)
    for precision in ("ieee", "tf32x3"):  # the projection's tl.dot precision reaches the kernel (exact here)
        torch.testing.assert_close(softmax_retrieve(q, k, v, "dot", 1.0, block_q=16, block_n=64, precision=precision), recall(q, k, v, separation="softmax").output, rtol=1e-5, atol=1e-5)
    for bad in (dict(block_q=8), dict(block_n=48), dict(precision="fp16")):  # what compiles only in the interpreter
        try:
            softmax_retrieve(q, k, v, "dot", 1.0, **bad)
        except ValueError:
            continue
        raise AssertionError(f"{bad} accepted")
    print("ok")
    """
)


# every similarity at value widths 1 to 3,072 (WIDTHS), float32 and bfloat16 inputs at an exact
# precision and at bf16, splits > 1, beta 1 and 1,000, against softmax(beta * sim) @ V in float64
# from the same (rounded) inputs; the best index and score against the float64 first maximum
WIDE = textwrap.dedent(
    """
    import torch
    from amemctl.core.kernels.fused import SIMILARITIES, Blocks, retrieve
    from amemctl.core.similarity import get_similarity

    g = torch.Generator().manual_seed(0)

    def reference(q, k, v, sim, beta):
        s = get_similarity(sim)(q.double(), k.double())
        return torch.softmax(beta * s, 1) @ v.double(), s.max(1)

    shapes = {1: (5, 40, 6), 17: (17, 40, 21), 1025: (4, 24, 6), 3072: (3, 20, 5)}  # width: queries, keys, key width
    for width in WIDTHS:
        n_q, n_k, d = shapes[width]
        blocks = Blocks(block_q=16, block_n=16, block_d=16, block_dv=1024 if width > 1024 else None)  # 2 and 3 value tiles
        q, k, v = torch.rand(n_q, d, generator=g), torch.rand(n_k, d, generator=g), torch.rand(n_k, width, generator=g) - 0.5
        k[7] = k[8] = k[-1] = q[0]  # an exact match, three times (one tile, another tile): L2 0 (clamped, never NaN), cosine 1; the lower index wins the tie
        for sim in SIMILARITIES:
            for dtype, precision, tol, beta, splits in [
                (torch.float32, "ieee", 1e-5, 1.0, 2),
                (torch.float32, "tf32x3", 1e-5, 1e3, 3),  # the interpreter multiplies every precision exactly
                (torch.bfloat16, "ieee", 1e-5, 1.0, 1),  # one split: the tie between tiles is the kernel's to break
                (torch.bfloat16, "bf16", 1e-2, 1e3, 2),  # the weights rounded to bf16 for the product
            ]:
                qx, kx, vx = q.to(dtype), k.to(dtype), v.to(dtype)
                out, index, score = retrieve(qx, kx, vx, sim, beta, blocks, precision, splits)
                want, (best, first) = reference(qx, kx, vx, sim, beta)
                assert out.dtype == torch.float32 and out.shape == (n_q, width)
                err = (out.double() - want).abs().max().item()
                # beta = 1,000 multiplies float32 scores' rounding (1e-7); euclidean's sqrt of |q|^2 + |k|^2 - 2 q.k
                # near the exact match is off by sqrt(rounding), ~1e-3, as torch.cdist's matrix-product route on GPUs
                floor = 1e-4 if sim == "euclidean" else 0.0
                assert err <= max(tol, beta * 1e-7, floor), (width, sim, dtype, precision, beta, err)
                assert torch.equal(index, first) and (sim == "dot" or index[0] == 7), (width, sim, dtype, precision, beta, index, first)
                torch.testing.assert_close(score.double(), best, rtol=1e-5, atol=2e-3 if sim == "euclidean" else 1e-4)
    # value tiles narrower than the values, and wider (masked columns), agree with the default tile
    q, k, v = torch.rand(20, 9, generator=g), torch.rand(50, 9, generator=g), torch.rand(50, 100, generator=g)
    want = retrieve(q, k, v, "dot", 2.0, Blocks(16, 16, 16), "ieee")[0]
    for block_dv in (16, 32, 128):
        torch.testing.assert_close(retrieve(q, k, v, "dot", 2.0, Blocks(16, 16, 16, block_dv), "ieee")[0], want, rtol=1e-6, atol=1e-6)
    for bad in (Blocks(block_dv=8), Blocks(block_d=24)):
        try:
            retrieve(q, k, v, "dot", 1.0, bad)
        except ValueError:
            continue
        raise AssertionError(f"{bad} accepted")
    print("ok")
    """
)

# retrieval's routing: the shipped table sends nothing to the kernel; an entry patched in
# sends what it covers, and the answer matches the default route's
ROUTED = textwrap.dedent(
    """
    import torch
    from amemctl.core import recall
    from amemctl.core.kernels import fused, routes
    from amemctl.core.separation import Softmax

    calls = []
    kernel = fused.retrieve

    def spy(*args, **kwargs):
        calls.append((args[3], len(args[0]), args[7]))  # similarity, queries, splits
        return kernel(*args, **kwargs)

    fused.retrieve = spy
    g = torch.Generator().manual_seed(0)
    q, k, v = torch.rand(20, 12, generator=g), torch.rand(70, 12, generator=g), torch.rand(70, 3, 10, generator=g)
    sep = Softmax(5.0)
    assert routes.TABLE == ()
    default = {sim: recall(q, k, v, similarity=sim, separation=sep) for sim in fused.SIMILARITIES}
    default16 = {sim: recall(q, k.bfloat16(), v.bfloat16(), similarity=sim, separation=sep) for sim in fused.SIMILARITIES}
    assert calls == [], calls  # the shipped table: the default route everywhere

    blocks = fused.Blocks(16, 16, 16, 16)
    for sim in fused.SIMILARITIES:
        routes.TABLE = (
            routes.Route("cpu", sim, "float32", key_width=(8, 16), value_width=(30, 30), blocks=blocks, precision="ieee", memories=60),
            routes.Route("cpu", sim, "bfloat16", key_width=(8, 16), value_width=(30, 30), blocks=blocks, precision="bf16"),
        )
        state = fused.state_bytes(1, 30, 1)  # bytes of partial state per query and split
        splits = fused.default_splits(20, 70, 30, blocks, q.device)
        assert splits > 2
        for budget, expected in [(10**9, [(sim, 20, splits)]), (state * 20 * 2, [(sim, 20, 2)]), (state * 16, [(sim, 16, 1), (sim, 4, 1)])]:
            got = recall(q, k, v, similarity=sim, separation=sep, budget=budget)  # within budget: fewer splits, then fewer queries
            assert calls == expected, (sim, budget, calls)
            assert got.output.shape == (20, 3, 10)
            torch.testing.assert_close(got.output, default[sim].output, rtol=1e-5, atol=1e-5)
            assert torch.equal(got.index, default[sim].index), sim
            torch.testing.assert_close(got.score, default[sim].score, rtol=1e-5, atol=1e-5)
            calls.clear()
        got = recall(q, k.bfloat16(), v.bfloat16(), similarity=sim, separation=sep)  # the tensor-core route: queries rounded to bf16
        assert [c[0] for c in calls] == [sim], (sim, calls)
        torch.testing.assert_close(got.output, default16[sim].output, rtol=0, atol=2e-2)
        calls.clear()
        # what the entries do not cover takes the default route
        recall(q, k[:59], v[:59], similarity=sim, separation=sep)  # fewer memories than measured
        recall(q, k, v[:, :2], similarity=sim, separation=sep)  # narrower values
        recall(q, k, v, similarity=sim, separation="max")
        recall(q, k, v, similarity=sim, separation=sep, distance_form="inverse")
        recall(q, k, v.double(), similarity=sim, separation=sep)  # keys and values of two dtypes
        recall(q, k.bfloat16(), v.bfloat16().float(), similarity=sim, separation=sep)
        recall(q.double(), k.double(), v.double(), similarity=sim, separation=sep)
        assert calls == [], (sim, calls)
    # no queries, through an entry with no lower bound on them: empty answers in the values' shape
    routes.TABLE = (routes.Route("cpu", "dot", "float32", key_width=(1, 99), value_width=(1, 99), blocks=blocks, precision="ieee"),)
    for empty in (torch.rand(0, 12), torch.rand(0, 3, 4)):
        got = recall(empty, k, v, similarity="dot", separation=sep)
        assert got.output.shape == (0, 3, 10) and got.index.shape == (0,) and got.score.shape == (0,), got
    assert [c[1] for c in calls] == [0, 0], calls
    calls.clear()
    # a float32 entry at bf16 precision is never taken: it would round float32 memories
    routes.TABLE = (routes.Route("cpu", "dot", "float32", key_width=(1, 99), value_width=(1, 99), blocks=blocks, precision="bf16"),)
    recall(q, k, v, similarity="dot", separation=sep)
    assert calls == [], calls
    print("ok")
    """
)

# max retrieval by the kernel without values (fused.nearest): every similarity, float32 and
# bfloat16, several splits, against the float64 first maximum; ties to the lower index; a NaN
# key counts as the maximum (+inf, refused by recall). Then routing: a max entry takes max and
# top-1 (either weighting) and evaluate's nearest_index, gathers the values' rows, and matches
# the default route; softmax and top-2 stay on the default route.
NEAREST = textwrap.dedent(
    """
    import math
    import torch
    from amemctl.core import recall
    from amemctl.core.kernels import fused, routes
    from amemctl.core.retrieval import nearest_index
    from amemctl.core.separation import Softmax, TopK
    from amemctl.core.similarity import get_similarity
    from amemctl.errors import StageError

    def exact(sim, a, b):
        # every pair's score in float64, reduced in the same order for every key: equal keys score
        # equally (a matrix product's rounding may depend on a key's position, and did on an AMD EPYC)
        a, b = a.double()[:, None, :], b.double()[None]
        if sim == "dot":
            return (a * b).sum(-1)
        if sim == "cosine":
            return (a / a.norm(dim=-1, keepdim=True) * (b / b.norm(dim=-1, keepdim=True))).sum(-1)
        d = a - b
        return {"squared_euclidean": -(d * d).sum(-1), "euclidean": -(d * d).sum(-1).sqrt(), "manhattan": -d.abs().sum(-1)}[sim]

    g = torch.Generator().manual_seed(1)
    q, k = torch.rand(19, 21, generator=g), torch.rand(90, 21, generator=g)
    k[7] = k[40] = k[-1] = q[0]  # an exact match three times, across tiles and splits: the lowest index wins
    for sim in fused.SIMILARITIES:
        for dtype, precision, splits in [(torch.float32, "ieee", 1), (torch.float32, "tf32x3", 3), (torch.bfloat16, "bf16", 2)]:
            qx, kx = q.to(dtype), k.to(dtype)
            index, score = fused.nearest(qx, kx, sim, fused.Blocks(16, 16, 16), precision, splits)
            s = exact(sim, qx, kx)
            best, first = s.max(1)
            assert torch.equal(index, first) and (sim == "dot" or index[0] == 7), (sim, dtype, index, first)
            torch.testing.assert_close(score.double(), best, rtol=1e-5, atol=2e-3 if sim == "euclidean" else 1e-4)
    bad = k.clone()
    bad[30, 2] = math.nan
    bad[60, 0] = math.nan
    index, score = fused.nearest(q, bad, "dot", fused.Blocks(16, 16, 16), "ieee", 2)
    assert (index == 30).all() and torch.isinf(score).all() and (score > 0).all()
    assert fused.nearest(q[:0], k, "dot")[0].shape == (0,)

    calls = []
    kernel = fused.nearest
    spied = []
    fused.nearest = lambda *args, **kwargs: calls.append(args[2]) or spied.append((len(args[0]), args[5])) or kernel(*args, **kwargs)
    v = torch.rand(90, 2, 5, generator=g)
    blocks = fused.Blocks(16, 16, 16)
    spread = fused.default_splits(19, 90, 1, blocks, q.device)  # splits when the budget allows
    assert spread > 2
    for sim in fused.SIMILARITIES:
        default = recall(q, k, v, similarity=sim, separation="max")
        routes.TABLE = (routes.Route("cpu", sim, "float32", key_width=(1, 99), value_width=(1, 1), blocks=blocks, precision="ieee", separation="max"),)
        for sep in ("max", TopK(k=1, weighting="softmax", beta=3.0)):
            # any value width: max reads no values in the kernel. Its states within the budget:
            # fewer splits first, then 16 queries (one block) at a time
            state = fused.state_bytes(1, 0, 1)
            for budget, expected in [(10**9, [(19, spread)]), (state * 19 * 2, [(19, 2)]), (state * 16, [(16, 1), (3, 1)])]:
                got = recall(q, k, v, similarity=sim, separation=sep, budget=budget)
                assert calls == [sim] * len(expected) and spied == expected, (sim, sep, budget, spied)
                calls.clear()
                spied.clear()
                assert torch.equal(got.index, default.index) and torch.equal(got.output, default.output) and got.output.shape == (19, 2, 5)
                # an exact match's euclidean distance is the square root of a rounding residual (about 1e-3)
                torch.testing.assert_close(got.score, default.score, rtol=1e-5, atol=2e-3 if sim == "euclidean" else 1e-5, msg=lambda m: f"{sim}: {m}")
        recall(q, k, v, similarity=sim, separation=Softmax(2.0))
        recall(q, k, v, similarity=sim, separation=TopK(k=2))
        assert calls == [], (sim, calls)
        try:
            recall(q, bad, similarity=sim, separation="max")
        except StageError as error:
            assert "stored keys contain NaN" in str(error) and "30" in str(error), error
        else:
            raise AssertionError("a NaN key was retrieved")
        calls.clear()
        spied.clear()
    routes.TABLE = (routes.Route("cpu", "squared_euclidean", "float32", key_width=(1, 99), value_width=(1, 1), blocks=fused.Blocks(16, 16, 16), precision="ieee", separation="max"),)
    assert torch.equal(nearest_index(q, k), torch.cdist(q.double(), k.double()).argmin(1)) and calls == ["squared_euclidean"]

    # top-k: the k best of every split merged, best first, ties to the lower row (many equal keys), against top_k
    from amemctl.core.separation import top_k
    k[50:70] = k[51]
    for sim in fused.SIMILARITIES:
        for kk, splits, dtype, precision in [(2, 1, torch.float32, "ieee"), (5, 3, torch.float32, "tf32x3"), (17, 2, torch.bfloat16, "bf16"), (64, 4, torch.float32, "ieee")]:
            qx, kx = q.to(dtype), k.to(dtype)
            scores, chosen = fused.best_k(qx, kx, sim, kk, fused.Blocks(16, 16, 16), precision, splits)
            want_scores, want = top_k(exact(sim, qx, kx), kk)
            assert torch.equal(chosen, want), (sim, kk, splits, dtype)
            torch.testing.assert_close(scores.double(), want_scores, rtol=1e-5, atol=2e-3 if sim == "euclidean" else 1e-4)
    assert fused.best_k(q, k[:3], "dot", 8)[1].shape == (19, 3)  # k cut to the keys
    # rows scoring -inf (dot products overflowing) fill the k when fewer score higher, also in
    # splits of fewer than k rows: never an empty slot (an index past the keys or below 0)
    far = k.clone()
    far[::3] = -3e38
    for kk, splits in [(64, 1), (64, 3), (33, 2)]:
        scores, chosen = fused.best_k(q, far, "dot", kk, fused.Blocks(16, 16, 16), "ieee", splits)
        want_scores, want = top_k((q.double() @ far.double().T).float(), kk)  # float32: -inf where the kernel overflows
        assert torch.equal(chosen, want), (kk, splits, chosen[0], want[0])
        assert torch.equal(scores.isinf(), want_scores.isinf())
    scores, chosen = fused.best_k(q, bad, "dot", 3, fused.Blocks(16, 16, 16), "ieee", 2)
    assert (chosen[:, :2] == torch.tensor([30, 60])).all() and torch.isinf(scores[:, :2]).all()
    for wrong in (0, fused.MAX_K + 1):
        try:
            fused.best_k(q, k, "dot", wrong)
        except ValueError:
            continue
        raise AssertionError(f"k = {wrong} accepted")

    kernel_k = fused.best_k
    fused.best_k = lambda *args, **kwargs: calls.append((args[2], args[3])) or spied.append((len(args[0]), args[6])) or kernel_k(*args, **kwargs)
    calls.clear()
    spied.clear()
    for sim in fused.SIMILARITIES:
        for sep in (TopK(k=8), TopK(k=3, weighting="softmax", beta=4.0)):
            routes.TABLE = ()
            default = recall(q, k, v, similarity=sim, separation=sep)
            routes.TABLE = (routes.Route("cpu", sim, "float32", key_width=(1, 99), value_width=(1, 1), blocks=blocks, precision="ieee", separation="topk", k=8),)
            # the kept rows and their merge within the budget (fewer splits, then 16 queries at a
            # time); the chosen values weighted 3 queries at a time (10 numbers each, 4 bytes)
            state = fused.state_bytes(1, 0, 1, sep.k)
            assert state >= 40 * (1 << (sep.k - 1).bit_length())  # per slot: its score, index, masks and sort orders
            for budget, expected in [(2**20, [(19, spread)]), (state * 16, [(16, 1), (3, 1)]), (4 * sep.k * 10 * 3, [(16, 1), (3, 1)])]:
                got = recall(q, k, v, similarity=sim, separation=sep, budget=budget)
                assert calls == [(sim, sep.k)] * len(expected) and spied == expected, (sim, sep, budget, spied, calls)
                calls.clear()
                spied.clear()
                assert torch.equal(got.index, default.index) and got.output.shape == (19, 2, 5)
                torch.testing.assert_close(got.output, default.output, rtol=1e-5, atol=1e-6)
                # an exact match's euclidean distance is the square root of a rounding residual (about 1e-3)
                torch.testing.assert_close(got.score, default.score, rtol=1e-5, atol=2e-3 if sim == "euclidean" else 1e-5, msg=lambda m: f"{sim}: {m}")
        recall(q, k, v, similarity=sim, separation=TopK(k=9))  # more than the entry measured
        recall(q, k, v, similarity=sim, separation="max")  # a top-k entry is not a max entry
        assert calls == [], (sim, calls)
    routes.TABLE = ()
    default = recall(q, far, v, similarity="dot", separation=TopK(k=64))
    routes.TABLE = (routes.Route("cpu", "dot", "float32", key_width=(1, 99), value_width=(1, 1), blocks=fused.Blocks(16, 16, 16), precision="ieee", separation="topk", k=64),)
    got = recall(q, far, v, similarity="dot", separation=TopK(k=64))  # the values of 4 rows scoring -inf in the mean
    assert calls == [("dot", 64)] and torch.equal(got.index, default.index)
    torch.testing.assert_close(got.output, default.output, rtol=1e-5, atol=1e-6)
    print("ok")
    """
)


def _interpret(script: str) -> None:
    env = child_env(TRITON_INTERPRET="1")
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stderr[-3000:]


def test_l1_kernel_in_the_triton_interpreter():
    _interpret(INTERPRETED)


@pytest.mark.parametrize("widths", [(1, 17), (1025, 3072)])
def test_fused_kernel_every_similarity_and_value_width_in_the_triton_interpreter(widths):
    _interpret(f"WIDTHS = {widths}\n" + WIDE)


def test_retrieval_routes_to_the_fused_kernel_only_by_its_table():
    _interpret(ROUTED)


def test_max_retrieval_by_the_fused_kernel_and_its_routes():
    _interpret(NEAREST)


def test_the_shipped_table_routes_nothing_to_the_fused_kernel():
    """No GPU has measured the kernel yet: every device, similarity, dtype and width takes the default route."""
    from amemctl.core.kernels import fused, routes

    assert routes.TABLE == ()
    for kind in ("NVIDIA H100 80GB HBM3", "NVIDIA H200", "cpu"):
        for sim in fused.SIMILARITIES:
            for dtype in ("float32", "bfloat16"):
                for d, w in ((512, 512), (512, 3072), (3072, 3072)):
                    assert routes.choose(kind, sim, dtype, d, w, 10**6, 1024) is None


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_fused_kernel_on_the_gpu():
    from amemctl.core.kernels.fused import softmax_retrieve
    from amemctl.core.retrieval import recall
    from amemctl.core.separation import Softmax

    g = torch.Generator(device="cuda").manual_seed(0)
    q, k = torch.rand(300, 512, generator=g, device="cuda"), torch.rand(20_000, 512, generator=g, device="cuda")
    for sim in ("manhattan", "dot", "squared_euclidean"):
        ref = recall(q, k, similarity=sim, separation=Softmax(0.05)).output
        torch.testing.assert_close(softmax_retrieve(q, k, k, sim, 0.05, precision="tf32"), ref, rtol=2e-3, atol=2e-3)  # TF32 products


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_fused_kernel_in_float32_on_the_gpu():
    from amemctl.core.kernels.fused import softmax_retrieve
    from amemctl.core.retrieval import recall
    from amemctl.core.separation import Softmax

    g = torch.Generator(device="cuda").manual_seed(1)
    q, k, v = torch.rand(100, 64, generator=g, device="cuda"), torch.rand(5000, 64, generator=g, device="cuda"), torch.rand(5000, 300, generator=g, device="cuda")
    ref = recall(q, k, v, similarity="dot", separation=Softmax(0.5)).output
    torch.testing.assert_close(softmax_retrieve(q, k, v, "dot", 0.5, precision="ieee"), ref, rtol=1e-5, atol=1e-5)


@pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.mem_get_info()[0] < 30 * 2**30, reason="needs a CUDA device with 30 GiB free")
def test_kernels_address_more_than_2_to_the_31_elements():
    """d x N past 2^31 (1.1e6 keys of 2,048 bf16): offsets in int32 would wrap and read the wrong keys."""
    from amemctl.core.kernels.fused import softmax_retrieve
    from amemctl.core.kernels.l1 import l1_distances

    n, d = 1_100_000, 2048
    keys = torch.rand(n, d, device="cuda", dtype=torch.bfloat16)
    q = keys[-3:].float() + 0.01
    tail = torch.cdist(q, keys[-2000:].float(), p=1)
    torch.testing.assert_close(l1_distances(q, keys)[:, -2000:], tail, rtol=1e-4, atol=1e-2)
    values = torch.zeros(n, 16, device="cuda")
    values[-1] = 1.0  # only the last key's value is non-zero: it is the nearest to q[-1] by far
    got = softmax_retrieve(q, keys, values, "manhattan", 10.0, precision="ieee")
    assert got[-1, 0] > 0.99 and got[0, 0] < 0.01


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_l1_kernel_on_the_gpu_at_full_width():
    from amemctl.core.kernels.l1 import l1_distances

    g = torch.Generator(device="cuda").manual_seed(0)
    for d in (8, 512, 3072, 4096):
        q = torch.rand(257, d, generator=g, device="cuda")
        k = torch.rand(1000, d, generator=g, device="cuda")
        torch.testing.assert_close(l1_distances(q, k), torch.cdist(q, k, p=1), rtol=1e-4, atol=1e-3)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_fused_kernel_wide_values_at_every_precision_on_the_gpu():
    """3,072-wide values, every similarity, against float64; tf32x3 as close as ieee, bf16 within its rounding."""
    from amemctl.core.kernels.fused import SIMILARITIES, Blocks, retrieve
    from amemctl.core.similarity import get_similarity

    g = torch.Generator(device="cuda").manual_seed(2)
    q, k = torch.rand(100, 512, generator=g, device="cuda"), torch.rand(3000, 512, generator=g, device="cuda")
    v = torch.rand(3000, 3072, generator=g, device="cuda") - 0.5
    for sim in SIMILARITIES:
        for dtype, precision, tol in ((torch.float32, "ieee", 1e-5), (torch.float32, "tf32x3", 1e-5), (torch.bfloat16, "bf16", 1e-2)):
            qx, kx, vx = q.to(dtype), k.to(dtype), v.to(dtype)
            s = get_similarity(sim)(qx.double(), kx.double())
            beta = float(2 / s.std(1).mean())  # a few memories share each query's weight
            want = torch.softmax(beta * s, 1) @ vx.double()
            for blocks in (Blocks(), Blocks(64, 64, 64, 128, num_warps=8)):
                out, index, score = retrieve(qx, kx, vx, sim, beta, blocks, precision)
                err = (out.double() - want).abs().max().item()
                assert err <= tol, (sim, precision, blocks, err)
                assert (index == s.argmax(1)).float().mean() > 0.98, (sim, precision)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_retrieval_through_a_fused_route_on_the_gpu(monkeypatch):
    """A table entry patched in: retrieval takes the kernel and returns the default route's answer."""
    from amemctl.core.kernels import fused, routes
    from amemctl.core.retrieval import recall
    from amemctl.core.separation import Softmax

    g = torch.Generator(device="cuda").manual_seed(3)
    q, k, v = torch.rand(500, 256, generator=g, device="cuda"), torch.rand(20_000, 256, generator=g, device="cuda"), torch.rand(20_000, 3072, generator=g, device="cuda")
    sep = Softmax(0.2)
    calls = []
    kernel = fused.retrieve
    monkeypatch.setattr(fused, "retrieve", lambda *a, **kw: calls.append(a[3]) or kernel(*a, **kw))
    for sim in fused.SIMILARITIES:
        default = recall(q, k, v, similarity=sim, separation=sep)
        monkeypatch.setattr(routes, "TABLE", (routes.Route("", sim, "float32", (1, 4096), (1, 4096), fused.Blocks(64, 64, 32, 128), "tf32x3"),))
        got = recall(q, k, v, similarity=sim, separation=sep)
        monkeypatch.setattr(routes, "TABLE", ())
        assert calls == [sim]
        calls.clear()
        torch.testing.assert_close(got.output, default.output, rtol=1e-4, atol=1e-4)
        assert (got.index == default.index).float().mean() > 0.99


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("separation", ["max", "topk"])
def test_max_and_top_k_retrieval_through_a_fused_route_on_the_gpu(monkeypatch, separation):
    """A max or top-8 entry patched in: the kernel's chosen rows are the default route's, for every similarity and dtype."""
    from amemctl.core.kernels import fused, routes
    from amemctl.core.retrieval import recall
    from amemctl.core.separation import TopK

    g = torch.Generator(device="cuda").manual_seed(4)
    q, k, v = torch.rand(700, 384, generator=g, device="cuda"), torch.rand(30_000, 384, generator=g, device="cuda"), torch.rand(30_000, 10, generator=g, device="cuda")
    sep = "max" if separation == "max" else TopK(k=8)
    for dtype, precision in ((torch.float32, "tf32x3"), (torch.bfloat16, "bf16")):
        kx, vx = k.to(dtype), v.to(dtype)
        for sim in fused.SIMILARITIES:
            default = recall(q, kx, vx, similarity=sim, separation=sep)
            entry = routes.Route("", sim, str(dtype)[6:], (1, 4096), (1, 1), fused.Blocks(64, 64, 32), precision if sim != "manhattan" else "tf32x3", separation=separation, k=8)
            monkeypatch.setattr(routes, "TABLE", (entry,))
            got = recall(q, kx, vx, similarity=sim, separation=sep)
            monkeypatch.setattr(routes, "TABLE", ())
            torch.testing.assert_close(got.score, default.score, rtol=1e-3 if dtype == torch.bfloat16 else 1e-5, atol=1e-3)
            assert (got.index == default.index).float().mean() > 0.99, (sim, dtype)
            agree = (got.output - default.output).abs().amax(1) < 1e-4  # near-equal scores may choose another row
            assert agree.float().mean() > 0.99, (sim, dtype)


def test_l1_autotuning_is_keyed_by_size_class_so_chunks_of_similar_shape_share_it():
    from amemctl.core.kernels.l1 import _size_class

    assert _size_class(1000, 60_000) == _size_class(1024, 65_536) == _size_class(513, 32_769)
    assert len({_size_class(1024, 65_536), _size_class(1025, 65_536), _size_class(1024, 65_537), _size_class(1, 1)}) == 4


COMPILED = textwrap.dedent(
    """
    import sys
    sys.path.insert(0, "tools/gpu")
    import compile_check as check

    variants = check.default_variants()
    wanted = ["l1 float32", "fused manhattan float32 ieee", "fused dot bfloat16 bf16", "fused euclidean float32 tf32x3"]
    picks = [next(v for name, v in variants if name.startswith(w)) for w in wanted]
    picks.append(next(v for name, v in variants if name.startswith("fused manhattan") and name.endswith("top-k 8")))
    picks.append(next(v for name, v in variants if name.startswith("fused dot float32 tf32x3") and "block_dv=128, num_warps=8" in name and "width 3072" in name))
    for v in picks:  # the most shared memory of all: the 8-warp tile with 128 value columns
        assert check.compile_variant(v) <= check.SHARED
    print("ok")
    """
)


def test_the_kernels_compile_for_an_h100_without_a_gpu():
    """The interpreter never compiles: what only the compiler refuses (a tl.dot shape or precision, a
    loop-carried type, too much shared memory) is caught here, not in a lent GPU's scarce minutes.
    A sample of tools/gpu/compile_check.py's variants (the whole set: `python3 tools/gpu/compile_check.py`)."""
    from tests.conftest import ROOT

    env = {k: v for k, v in child_env().items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, "-c", COMPILED], env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stderr[-3000:]
