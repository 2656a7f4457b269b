"""One-pass softmax retrieval in Triton: score, online softmax and projection in one kernel.

z = V^T softmax(beta * sim(K, q)) for L1, squared L2 or dot. The grid is (query blocks,
splits of the stored rows): each program streams its split in BLOCK_N tiles, accumulating
the similarity over the dimensions as rank-1 updates (both operands dimension-major), and
keeps flash-attention's running maximum, normaliser and weighted sum; the splits' partial
states are merged on the host with the log-sum-exp rule (flash-decoding). Nothing Q x N is
ever written. Values up to 1,024 wide are projected in the kernel.

Experimental: correct (tested through the Triton interpreter), not yet measured on a GPU.
`amemctl bench` times it beside the default route; retrieval does not use it by default
until a GPU measurement says it is faster.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from amemctl.core.kernels.l1 import triton

SIMILARITIES = {"manhattan": 0, "dot": 1, "squared_euclidean": 2}
MAX_VALUE_WIDTH = 1024

if triton is not None:
    import triton.language as tl

    @triton.jit
    def _fused_kernel(
        QT, KT, V, M, L, ACC,
        n_q, n_k, d, dv, beta, per_split,
        stride_qt, stride_kt, stride_v, stride_ms, stride_accs, stride_accq,
        SIM: tl.constexpr, BLOCK_Q: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_DV: tl.constexpr, PRECISION: tl.constexpr,
    ):
        pid_q = tl.program_id(0)
        pid_s = tl.program_id(1)
        rq = pid_q * BLOCK_Q + tl.arange(0, BLOCK_Q)
        mq = rq < n_q
        rdv = tl.arange(0, BLOCK_DV)
        mdv = rdv < dv
        start = pid_s * per_split
        stop = tl.minimum(start + per_split, n_k)
        m = tl.full((BLOCK_Q,), float("-inf"), tl.float32)
        l = tl.zeros((BLOCK_Q,), tl.float32)
        acc = tl.zeros((BLOCK_Q, BLOCK_DV), tl.float32)
        for n0 in range(start, stop, BLOCK_N):
            rn = n0 + tl.arange(0, BLOCK_N)
            mn = rn < stop
            s = tl.zeros((BLOCK_Q, BLOCK_N), tl.float32)
            q_ptr = QT + rq  # advanced by a stride per dimension: j * stride would overflow int32
            k_ptr = KT + rn
            for _ in range(0, d):
                qj = tl.load(q_ptr, mask=mq, other=0.0).to(tl.float32)
                kj = tl.load(k_ptr, mask=mn, other=0.0).to(tl.float32)
                q_ptr += stride_qt
                k_ptr += stride_kt
                if SIM == 0:
                    s += tl.abs(qj[:, None] - kj[None, :])
                elif SIM == 1:
                    s += qj[:, None] * kj[None, :]
                else:
                    diff = qj[:, None] - kj[None, :]
                    s += diff * diff
            if SIM == 1:
                z = beta * s
            else:
                z = -beta * s
            z = tl.where(mn[None, :], z, float("-inf"))
            m_new = tl.maximum(m, tl.max(z, 1))
            alpha = tl.exp(m - m_new)
            p = tl.exp(z - m_new[:, None])
            l = l * alpha + tl.sum(p, 1)
            v = tl.load(V + rn.to(tl.int64)[:, None] * stride_v + rdv[None, :], mask=mn[:, None] & mdv[None, :], other=0.0).to(tl.float32)
            acc = acc * alpha[:, None] + tl.dot(p, v, input_precision=PRECISION)
            m = m_new
        tl.store(M + pid_s * stride_ms + rq, m, mask=mq)
        tl.store(L + pid_s * stride_ms + rq, l, mask=mq)
        tl.store(ACC + pid_s * stride_accs + rq[:, None] * stride_accq + rdv[None, :], acc, mask=mq[:, None] & mdv[None, :])


def supported(similarity: str, values: Tensor) -> bool:
    return triton is not None and similarity in SIMILARITIES and values.shape[1] <= MAX_VALUE_WIDTH


def softmax_retrieve(
    queries: Tensor, keys: Tensor, values: Tensor, similarity: str, beta: float, splits: int | None = None, block_q: int = 32, block_n: int = 32, precision: str = "tf32"
) -> Tensor:
    """V^T softmax(beta * sim(K, q)) for each query, in one pass over the keys (see the module docstring).

    precision: how the projection's tl.dot multiplies on tensor cores: "tf32" (10-bit mantissa,
    about 1e-3 relative), "tf32x3" or "ieee" (float32, as torch's default matmul). The
    interpreter is always exact, so only a GPU shows the difference.
    """
    if not supported(similarity, values):
        raise ValueError(f"the fused kernel takes {', '.join(SIMILARITIES)} and values up to {MAX_VALUE_WIDTH} wide")
    for name, block in (("block_q", block_q), ("block_n", block_n)):  # tl.dot needs >= 16 and powers of 2 on a GPU
        if block < 16 or block & (block - 1):
            raise ValueError(f"{name} must be a power of 2 of at least 16, got {block}")
    if keys.device != queries.device or values.device != queries.device:
        raise ValueError(f"queries, keys and values must be on one device, got {queries.device}, {keys.device}, {values.device}")
    if precision not in ("tf32", "tf32x3", "ieee"):
        raise ValueError(f"precision must be tf32, tf32x3 or ieee, got {precision!r}")
    n_q, d = queries.shape
    n_k, dv = values.shape
    q_t, k_t = queries.T.contiguous(), keys.T.contiguous()
    values = values.contiguous()
    if splits is None:  # enough programs to fill a GPU: about 4 per streaming multiprocessor
        sms = torch.cuda.get_device_properties(queries.device).multi_processor_count if queries.is_cuda else 4
        splits = max(1, min(math.ceil(n_k / block_n), 4 * sms // max(1, math.ceil(n_q / block_q))))
    per_split = math.ceil(n_k / splits / block_n) * block_n
    splits = math.ceil(n_k / per_split)
    block_dv = max(16, triton.next_power_of_2(dv))
    m = torch.empty(splits, n_q, device=queries.device, dtype=torch.float32)
    l = torch.empty_like(m)
    acc = torch.empty(splits, n_q, dv, device=queries.device, dtype=torch.float32)
    grid = (math.ceil(n_q / block_q), splits)
    _fused_kernel[grid](
        q_t, k_t, values, m, l, acc, n_q, n_k, d, dv, float(beta), per_split,
        q_t.stride(0), k_t.stride(0), values.stride(0), m.stride(0), acc.stride(0), acc.stride(1),
        SIM=SIMILARITIES[similarity], BLOCK_Q=block_q, BLOCK_N=block_n, BLOCK_DV=block_dv, PRECISION=precision,
    )
    top = m.amax(0, keepdim=True)
    scale = torch.exp(m - top)  # splits that saw nothing have m = -inf and weigh 0
    return (acc * scale[..., None]).sum(0) / (l * scale).sum(0)[:, None]
