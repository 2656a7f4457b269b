"""The manhattan (L1) score matrix as a Triton kernel.

torch.cdist with p=1 runs at about 0.3 T elements/s on an H100: every element is a subtract
and an absolute add, with no tensor-core route. This kernel keeps a BLOCK_Q x BLOCK_N tile of
partial sums in registers and streams the dimensions one at a time as rank-1 updates,
reading both operands transposed (dimension-major) so that every load is contiguous. Inputs
may be fp32, fp16 or bf16; sums are fp32. Retrieval calls it per chunk of stored patterns, so
its output stays within the retrieval budget.
"""

from __future__ import annotations

import contextlib
import os

import torch
from torch import Tensor

try:
    import triton
    import triton.language as tl
except ImportError:  # triton is optional: torch.cdist is used instead
    triton = None


if triton is not None and os.environ.get("TRITON_INTERPRET") == "1":
    from amemctl.core.kernels import interpreter

    interpreter.mend_index()  # Triton 3.6's interpreter under NumPy 2.4+ (the GPU image's torch 2.11 pins Triton 3.6)


def available(x: Tensor) -> bool:
    """Whether the kernel can run on x's device (CUDA with triton; any device under TRITON_INTERPRET=1)."""
    if triton is None or os.environ.get("AMEMCTL_NO_TRITON"):
        return False
    return x.is_cuda or os.environ.get("TRITON_INTERPRET") == "1"


if triton is not None:

    @triton.jit
    def l1_tile(QT, KT, rq, rn, mq, mn, d, stride_qt, stride_kt, BLOCK_Q: tl.constexpr, BLOCK_N: tl.constexpr):
        """The BLOCK_Q x BLOCK_N tile of L1 distances (float32 sums) between dimension-major rows rq and rn.

        Shared by this kernel and the fused one. Pointers advance one row per dimension:
        j * stride in int32 would overflow past 2^31 elements (N = 1e6 keys x d = 3,072), a
        pointer plus a stride does not.
        """
        acc = tl.zeros((BLOCK_Q, BLOCK_N), dtype=tl.float32)
        q_ptr = QT + rq
        k_ptr = KT + rn
        for _ in range(0, d):
            qj = tl.load(q_ptr, mask=mq, other=0.0).to(tl.float32)
            kj = tl.load(k_ptr, mask=mn, other=0.0).to(tl.float32)
            acc += tl.abs(qj[:, None] - kj[None, :])
            q_ptr += stride_qt
            k_ptr += stride_kt
        return acc

    @triton.jit
    def _l1_kernel(QT, KT, S, n_q, n_k, d, stride_qt, stride_kt, stride_s, size_class, BLOCK_Q: tl.constexpr, BLOCK_N: tl.constexpr):
        """L1 distances of a tile of queries and keys; `size_class` only keys the autotuning (see `_size_class`)."""
        pid_q = tl.program_id(0)
        pid_n = tl.program_id(1)
        rq = pid_q * BLOCK_Q + tl.arange(0, BLOCK_Q)
        rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        mq = rq < n_q
        mn = rn < n_k
        acc = l1_tile(QT, KT, rq, rn, mq, mn, d, stride_qt, stride_kt, BLOCK_Q, BLOCK_N)
        tl.store(S + rq.to(tl.int64)[:, None] * stride_s + rn[None, :], acc, mask=mq[:, None] & mn[None, :])

    #: block sizes tried on each GPU (autotuned per shape); the interpreter takes the first
    CONFIGS = [
        triton.Config({"BLOCK_Q": bq, "BLOCK_N": bn}, num_warps=w)
        for bq, bn, w in [(64, 64, 4), (64, 128, 4), (128, 64, 4), (128, 128, 8), (64, 256, 8), (128, 256, 8), (32, 128, 4)]
    ]
    _l1_tuned = triton.autotune(configs=CONFIGS, key=["size_class", "d"])(_l1_kernel)


def _size_class(n_q: int, n_k: int) -> int:
    """The autotuning key of a shape: the powers of 2 at or above Q and N.

    A retrieval's chunks come in up to four shapes (the full and last chunk of keys, times the
    full and last block of queries), and every sweep point may bring others: keyed on the
    exact shape, each would autotune its 7 configurations again (about 1 s each time). Shapes
    within one class share the tuned configuration.
    """
    return (max(0, n_q - 1).bit_length() << 8) | max(0, n_k - 1).bit_length()


def on_device(device: torch.device):
    """`device` made the current GPU for a launch: Triton launches on the current device, not the tensors'."""
    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()


def l1_distances(queries: Tensor, keys: Tensor) -> Tensor:
    """||q - k||_1 for every query and key: Q x n fp32, computed by the Triton kernel."""
    if triton is None:
        raise RuntimeError("triton is not installed")
    q_t = queries.T.contiguous()
    k_t = keys.T.contiguous()
    n_q, d = queries.shape
    n_k = keys.shape[0]
    out = torch.empty(n_q, n_k, device=queries.device, dtype=torch.float32)
    if n_q == 0 or n_k == 0:
        return out

    def grid(meta):
        return (triton.cdiv(n_q, meta["BLOCK_Q"]), triton.cdiv(n_k, meta["BLOCK_N"]))

    args = (q_t, k_t, out, n_q, n_k, d, q_t.stride(0), k_t.stride(0), out.stride(0), _size_class(n_q, n_k))
    if queries.is_cuda:
        with on_device(queries.device):
            _l1_tuned[grid](*args)
    else:  # the Triton interpreter (tests on CPUs): no autotuning without a GPU
        _l1_kernel[grid](*args, BLOCK_Q=32, BLOCK_N=32)
    return out
