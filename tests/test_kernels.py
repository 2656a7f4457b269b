"""The Triton kernels, checked on the CPU through the Triton interpreter (and on a GPU when present)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch

pytest.importorskip("triton")

from tests.conftest import ROOT  # noqa: E402

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


def test_l1_kernel_in_the_triton_interpreter():
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-c", INTERPRETED], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stderr[-3000:]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_fused_kernel_on_the_gpu():
    from amemctl.core.kernels.fused import softmax_retrieve
    from amemctl.core.retrieval import recall
    from amemctl.core.separation import Softmax

    g = torch.Generator(device="cuda").manual_seed(0)
    q, k = torch.rand(300, 512, generator=g, device="cuda"), torch.rand(20_000, 512, generator=g, device="cuda")
    for sim in ("manhattan", "dot", "squared_euclidean"):
        ref = recall(q, k, similarity=sim, separation=Softmax(0.05)).output
        torch.testing.assert_close(softmax_retrieve(q, k, k, sim, 0.05), ref, rtol=2e-3, atol=2e-3)  # tf32 projection


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
