"""One-pass softmax retrieval in Triton: score, online softmax and projection in one kernel.

z = V^T softmax(beta * sim(K, q)) for manhattan (L1), dot, cosine, euclidean and squared
euclidean, with the best-scoring memory of each query on the side; or, compiled without the
softmax and the values, that best memory alone (`nearest`: max retrieval) or the k best
(`best_k`: top-k retrieval; k passes of selection over each tile of scores keep an unordered
list of k per query in registers, and the splits' lists are merged on the host). Nothing Q x N is ever
written: each program streams stored rows in BLOCK_N tiles, keeps flash-attention's running
maximum, normaliser and weighted sum, and the splits' partial states are merged on the host
with the log-sum-exp rule (flash-decoding).

The grid is (query blocks x value tiles, splits of the stored rows). Each program owns
BLOCK_Q queries, one split of N, and one tile of BLOCK_DV value columns, and holds its
accumulator (BLOCK_Q x BLOCK_DV float32) in registers.

Scores. Dot, cosine and both L2s multiply BLOCK_Q x BLOCK_D by BLOCK_D x BLOCK_N tiles of the
row-major queries and keys with `tl.dot` (tensor cores), summing over the dimension in
BLOCK_D chunks; squared L2 is |q|^2 + |k|^2 - 2 q.k clamped at 0, cosine q.k / (max(|q|, eps)
max(|k|, eps)) (the same as normalising q and k first, then a dot, without a normalised copy
of the keys), both with the squared norms summed on the host once per call (N + Q floats)
from the very values the products multiply. L1 has no tensor-core form: it accumulates
|q_j - k_j| as rank-1 updates on CUDA cores over dimension-major copies of the queries and
keys (contiguous loads; the copy of the keys is the one allocation of the keys' size). `precision` says how the products (the score's and
the projection's) multiply: "ieee" (float32), "tf32x3" (about float32, three TF32 products),
"tf32" (10-bit mantissa, about 1e-3 relative) or "bf16" (operands rounded to bfloat16,
float32 sums: the full tensor-core rate; the queries are rounded on the host, like keys that
are stored in bfloat16 already). The Triton interpreter computes every one exactly.

Wide values: the cost model. Per (query, key) pair a retrieval costs the score (d elements:
for L1 two CUDA-core operations each, 16 T elements/s at most on an H100 in float32; for the
tl.dot similarities 2d tensor-core FLOPs), the softmax (an exp2 and a few operations) and the
projection (2w FLOPs, w the value width). The default route pays each once, plus some 20
bytes a pair of HBM traffic for its Q x N float32 scores (written, max, exp, read by the
product: about 6e-12 s a pair), and computes its products in float32 on CUDA cores (torch
leaves TF32 off: about 50 TFLOPS, also for bfloat16 keys, which it widens). Rough H100 rates
for the fused kernel's products: bf16 about 600 TFLOPS, tf32x3 about 160. A tile of w
columns cannot stay in registers past a few hundred columns, so one of three things must give:

- value tiles as a grid axis, the design here: every program recomputes its queries' scores
  and softmax for its own value tile, T = ceil(w / BLOCK_DV) times in all. Dot at d = 512
  with 3,072-wide values (the semantic-memory workload), BLOCK_DV = 256: 12 x 1,024 + 6,144
  = 18,432 FLOPs a pair, 2.6 times a single pass's 7,168, but on tensor cores: about 3e-11 s
  in bf16 and 1.1e-10 s in tf32x3, against 1.4e-10 s for the default route's float32
  products alone. Values as wide as the keys at d = 512 need T = 1 or 2.
- scores once, accumulators in global memory: each BLOCK_N tile reads and writes every
  accumulator tile, 8w / BLOCK_N bytes a pair (384 at w = 3,072, BLOCK_N = 64, about 1e-10 s),
  more traffic than the default route's scores; rejected.
- L1 at wide values, where every design loses: its score is the dominant cost (d = 3,072:
  1.9e-10 s a pair at 16 T/s), so T = 6 value tiles of 512 cost 1.1e-9 s against the default
  route's 3.2e-10 (one score, 1.2e-10 s of float32 projection, the passes), and the global
  accumulator above pays as much as the projection it would save. At w = d = 512 one tile of
  512 columns (T = 1) gives 3.8e-11 s against 5.8e-11: L1 can win only with narrow values.

So the kernel takes any value width and any similarity, and `amemctl.core.kernels.routes`
sends a retrieval to it only where a GPU measurement found it faster.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor

from amemctl.core.kernels.l1 import available, on_device, triton

#: The similarities the kernel computes, by their `amemctl.core.similarity` names.
SIMILARITIES = {"manhattan": 0, "dot": 1, "squared_euclidean": 2, "euclidean": 3, "cosine": 4}

#: How the kernel's products multiply (see the module docstring).
PRECISIONS = ("ieee", "tf32x3", "tf32", "bf16")

#: Bytes per query and value column of the partial states the splits write (float32).
_STATE_BYTES = 4

#: Bytes per query, split and top-k slot, from the kernel's score and index to the host merge's sorts.
_MERGE_BYTES = 48


@dataclass(frozen=True)
class Blocks:
    """Tile sizes and launch options: what a measurement tunes and a route records."""

    block_q: int = 32  #: queries per program
    block_n: int = 32  #: stored rows per step of the stream
    block_d: int = 32  #: key dimensions per tl.dot step (not L1)
    block_dv: int | None = None  #: value columns per program; None: the value width, at most 256
    num_warps: int = 4
    num_stages: int = 2

    def check(self) -> None:
        """tl.dot on a GPU needs tiles of at least 16, powers of 2: refuse others before they compile."""
        for name in ("block_q", "block_n", "block_d", "block_dv"):
            block = getattr(self, name)
            if block is not None and (block < 16 or block & (block - 1)):
                raise ValueError(f"{name} must be a power of 2 of at least 16, got {block}")

    def value_tile(self, width: int) -> int:
        if self.block_dv is not None:
            return self.block_dv
        return max(16, min(256, 1 << max(0, width - 1).bit_length()))


if triton is not None:
    import triton.language as tl

    from amemctl.core.kernels.l1 import l1_tile

    @triton.jit
    def _dot(a, b, acc, PRECISION: tl.constexpr, EMULATE_BF16: tl.constexpr):
        """acc + a @ b at the given precision (float32 sums)."""
        if PRECISION == "bf16":
            a = a.to(tl.bfloat16)
            b = b.to(tl.bfloat16)
            if EMULATE_BF16:  # the interpreter multiplies bfloat16 bit patterns (triton #11584): the same bf16 values in float32, exactly
                out = tl.dot(a.to(tl.float32), b.to(tl.float32), acc, input_precision="ieee")
            else:
                out = tl.dot(a, b, acc)
        else:
            out = tl.dot(a.to(tl.float32), b.to(tl.float32), acc, input_precision=PRECISION)
        return out

    @triton.jit
    def _scores(
        Q, K, QT, KT, qn2, KN2, rq, rn, mq, mn, d, stride_q, stride_k, stride_qt, stride_kt,
        SIM: tl.constexpr, BLOCK_Q: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
        PRECISION: tl.constexpr, EMULATE_BF16: tl.constexpr,
    ):
        """BLOCK_Q x BLOCK_N scores (higher is more similar: distances negated), float32."""
        if SIM == 0:  # L1: rank-1 updates over dimension-major copies
            s = -l1_tile(QT, KT, rq, rn, mq, mn, d, stride_qt, stride_kt, BLOCK_Q, BLOCK_N)
        else:  # tl.dot over BLOCK_D chunks of the row-major rows
            qk = tl.zeros((BLOCK_Q, BLOCK_N), tl.float32)
            q_rows = Q + rq.to(tl.int64)[:, None] * stride_q
            k_rows = K + rn.to(tl.int64)[None, :] * stride_k
            for d0 in range(0, d, BLOCK_D):
                rd = d0 + tl.arange(0, BLOCK_D)
                md = rd < d
                qt = tl.load(q_rows + rd[None, :], mask=mq[:, None] & md[None, :], other=0.0)
                kt = tl.load(k_rows + rd[:, None], mask=md[:, None] & mn[None, :], other=0.0)
                qk = _dot(qt, kt, qk, PRECISION, EMULATE_BF16)
            if SIM == 1:
                s = qk
            else:
                kn2 = tl.load(KN2 + rn, mask=mn, other=1.0)
                if SIM == 4:
                    # 1e-6: amemctl.core.similarity.EPS, the zero-norm clamp of `unit`
                    s = qk / (tl.maximum(tl.sqrt(qn2), 1e-6)[:, None] * tl.maximum(tl.sqrt(kn2), 1e-6)[None, :])
                else:
                    sq = tl.maximum(qn2[:, None] + kn2[None, :] - 2.0 * qk, 0.0)
                    if SIM == 2:
                        s = -sq
                    else:
                        s = -tl.sqrt(sq)
        return s

    @triton.jit
    def _take_best(s, live, n0, n_k, cols, top, top_index, TOPK: tl.constexpr, BLOCK_N: tl.constexpr):
        """The running top-k after a tile of scores: TOPK times, the tile's best live row evicts the list's worst if higher.

        `live`: the tile's rows in the split. Ties go to the lower index: within the tile the
        leftmost best is taken first, a later row never evicts an equal score (rows arrive in
        increasing order), and of several equal worst entries the highest index is evicted.
        Empty slots hold -inf at indices n_k and above, so they are evicted before any row, and
        a row scoring -inf still fills one (as `top_k` keeps it when fewer rows score higher).
        """
        for _ in tl.static_range(TOPK):
            c = tl.max(s, 1)
            at = tl.min(tl.where(live & (s == c[:, None]), cols[None, :], BLOCK_N), 1)  # the leftmost live best
            worst = tl.min(top, 1)
            ties = top == worst[:, None]
            last = tl.max(tl.where(ties, top_index, -(2**31)), 1)
            evict = ties & (top_index == last[:, None]) & ((at < BLOCK_N) & ((c > worst) | (last >= n_k)))[:, None]
            top = tl.where(evict, c[:, None], top)
            top_index = tl.where(evict, (n0 + at)[:, None], top_index)
            live = live & (cols[None, :] != at[:, None])
            s = tl.where(live, s, float("-inf"))
        return top, top_index

    @triton.jit
    def _fused_kernel(
        Q, K, QT, KT, QN2, KN2, V, M, L, ACC, BEST, ARG, TOP, TOPI,
        n_q, d, dv, n_vt, scale, per_split, n_k,
        stride_q, stride_k, stride_qt, stride_kt, stride_v, stride_ms, stride_accs, stride_accq,
        SIM: tl.constexpr, BLOCK_Q: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
        PRECISION: tl.constexpr, EMULATE_BF16: tl.constexpr, PROJECT: tl.constexpr, TOPK: tl.constexpr, TOPK_SLOTS: tl.constexpr,
    ):
        """One program: BLOCK_Q queries, one split of the stored rows, one value tile.

        PROJECT: softmax and projection. Otherwise the best score and index, and with TOPK > 0
        the TOPK best of the split (in TOPK_SLOTS >= TOPK slots, a power of 2).
        """
        pid = tl.program_id(0)
        pid_s = tl.program_id(1)
        pid_q = pid // n_vt  # the value tiles of one query block are neighbours: they read the same keys
        pid_v = pid % n_vt
        rq = pid_q * BLOCK_Q + tl.arange(0, BLOCK_Q)
        mq = rq < n_q
        rdv = pid_v * BLOCK_DV + tl.arange(0, BLOCK_DV)
        mdv = rdv < dv
        start = pid_s * per_split
        stop = tl.minimum(start + per_split, n_k)
        m = tl.full((BLOCK_Q,), float("-inf"), tl.float32)  # running max of scale * score (log2 units)
        l = tl.zeros((BLOCK_Q,), tl.float32)
        acc = tl.zeros((BLOCK_Q, BLOCK_DV), tl.float32)
        best = tl.full((BLOCK_Q,), float("-inf"), tl.float32)
        arg = tl.zeros((BLOCK_Q,), tl.int32)
        slots = tl.arange(0, TOPK_SLOTS)
        # the running top-k, unordered: empty slots hold -inf at distinct indices from n_k up;
        # slots past TOPK hold +inf at negative indices, so they are never the one evicted
        top = tl.where(slots[None, :] < TOPK, float("-inf"), float("inf")) + tl.zeros((BLOCK_Q, TOPK_SLOTS), tl.float32)
        top_index = tl.where(slots[None, :] < TOPK, n_k + slots[None, :], -1 - slots[None, :]) + tl.zeros((BLOCK_Q, TOPK_SLOTS), tl.int32)
        cols = tl.arange(0, BLOCK_N)
        qn2 = tl.load(QN2 + rq, mask=mq, other=1.0)  # |q|^2 (L2 and cosine)
        for n0 in range(start, stop, BLOCK_N):
            rn = n0 + tl.arange(0, BLOCK_N)
            mn = rn < stop
            s = _scores(
                Q, K, QT, KT, qn2, KN2, rq, rn, mq, mn, d, stride_q, stride_k, stride_qt, stride_kt,
                SIM, BLOCK_Q, BLOCK_N, BLOCK_D, PRECISION, EMULATE_BF16,
            )
            if not PROJECT:  # a NaN score counts as the maximum (as on every other route): +inf, which the caller refuses
                s = tl.where(s == s, s, float("inf"))
            s = tl.where(mn[None, :], s, float("-inf"))
            tile_best = tl.max(s, 1)
            better = tile_best > best  # strictly: an earlier tile keeps its tie
            arg = tl.where(better, n0 + tl.argmax(s, 1, tie_break_left=True), arg)
            best = tl.where(better, tile_best, best)
            if TOPK > 0:
                top, top_index = _take_best(s, mn[None, :] & mq[:, None], n0, n_k, cols, top, top_index, TOPK, BLOCK_N)
            if PROJECT:
                z = s * scale
                m_new = tl.maximum(m, tl.max(z, 1))
                alpha = tl.exp2(m - m_new)
                p = tl.exp2(z - m_new[:, None])
                l = l * alpha + tl.sum(p, 1)
                v = tl.load(V + rn.to(tl.int64)[:, None] * stride_v + rdv[None, :], mask=mn[:, None] & mdv[None, :], other=0.0)
                acc = _dot(p, v, acc * alpha[:, None], PRECISION, EMULATE_BF16)
                m = m_new
        state = pid_s * stride_ms + rq
        if pid_v == 0:  # every value tile computed the same softmax state: one writes it
            tl.store(BEST + state, best, mask=mq)
            tl.store(ARG + state, arg, mask=mq)
            if PROJECT:
                tl.store(M + state, m, mask=mq)
                tl.store(L + state, l, mask=mq)
        if TOPK > 0:
            kept = pid_s.to(tl.int64) * stride_ms * TOPK_SLOTS + rq.to(tl.int64)[:, None] * TOPK_SLOTS + slots[None, :]
            tl.store(TOP + kept, top, mask=mq[:, None])
            tl.store(TOPI + kept, top_index, mask=mq[:, None])
        if PROJECT:
            rows = pid_s.to(tl.int64) * stride_accs + rq.to(tl.int64)[:, None] * stride_accq
            tl.store(ACC + rows + rdv[None, :], acc, mask=mq[:, None] & mdv[None, :])


def _interpreted() -> bool:
    """Whether the kernel runs in the Triton interpreter (decided by Triton when it was imported).

    The interpreter multiplies bfloat16 bit patterns (triton #11584) on any device, CUDA tensors
    included (it copies them to the host), so the bf16 emulation follows the interpreter, not
    the device.
    """
    from triton.runtime.interpreter import InterpretedFunction

    return isinstance(_fused_kernel, InterpretedFunction)


def supported(similarity: str) -> bool:
    """Whether the kernel computes this similarity (and triton is installed)."""
    return triton is not None and similarity in SIMILARITIES


def default_splits(n_q: int, n_k: int, width: int, blocks: Blocks, device: torch.device) -> int:
    """Enough programs to fill a GPU, about 4 per streaming multiprocessor (4 SMs off a GPU)."""
    sms = torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 4
    programs = math.ceil(n_q / blocks.block_q) * math.ceil(width / blocks.value_tile(width))
    return max(1, min(math.ceil(n_k / blocks.block_n), math.ceil(4 * sms / programs)))


def state_bytes(n_q: int, width: int, splits: int, k: int = 0) -> int:
    """Bytes of the splits' partial states (weighted sums, maxima, normalisers, best scores and
    indices; width 0 for max and top-k), with top-k's kept rows and their merge on the host.

    Top-k keeps a score and an index per split, query and slot (k rounded up to a power of 2);
    the merge then holds the candidates, their masks and int64 sort orders at once, about
    `_MERGE_BYTES` per slot in all.
    """
    slots = 1 << max(0, k - 1).bit_length() if k else 0
    return splits * n_q * ((width + 4) * _STATE_BYTES + slots * _MERGE_BYTES)


def retrieve(
    queries: Tensor,
    keys: Tensor,
    values: Tensor,
    similarity: str,
    beta: float,
    blocks: Blocks = Blocks(),
    precision: str = "tf32x3",
    splits: int | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """(V^T softmax(beta * sim(K, q)) Q x w, best index Q, its score Q) in one pass over the keys.

    queries Q x d, keys N x d, values N x w, all on one device; float32 outputs. Ties of the
    best score go to the lowest index. See the module docstring for `precision` and `blocks`.
    """
    _check(queries, keys, values, similarity, blocks, precision)
    n_q, dv = queries.shape[0], values.shape[1]
    if n_q == 0 or dv == 0:  # nothing to launch
        out = torch.zeros(n_q, dv, device=queries.device, dtype=torch.float32)
        return out, torch.zeros(n_q, dtype=torch.long, device=queries.device), torch.full((n_q,), -math.inf, device=queries.device)
    states = _launch(queries, keys, values.contiguous(), similarity, beta, blocks, precision, splits)
    return _merge(states)


def nearest(
    queries: Tensor,
    keys: Tensor,
    similarity: str,
    blocks: Blocks = Blocks(),
    precision: str = "tf32x3",
    splits: int | None = None,
) -> tuple[Tensor, Tensor]:
    """(index Q, score Q) of each query's highest-scoring key: max retrieval, one pass, no values read.

    The same scores as `retrieve` (distances negated), ties to the lowest index; a NaN score
    counts as the maximum and is reported as +inf.
    """
    _check(queries, keys, keys[:, :0], similarity, blocks, precision)
    if len(queries) == 0:
        return torch.zeros(0, dtype=torch.long, device=queries.device), torch.full((0,), -math.inf, device=queries.device)
    states = _launch(queries, keys, None, similarity, 0.0, blocks, precision, splits)
    return _best(states)


#: the most memories `best_k` keeps per query: each is one more pass over a tile of scores
MAX_K = 64


def best_k(
    queries: Tensor,
    keys: Tensor,
    similarity: str,
    k: int,
    blocks: Blocks = Blocks(),
    precision: str = "tf32x3",
    splits: int | None = None,
) -> tuple[Tensor, Tensor]:
    """(scores Q x k, indices Q x k) of each query's k highest-scoring keys, best first, one pass, no values read.

    k is at most MAX_K and is cut to the number of keys. Ties go to the lowest index (as
    `amemctl.core.separation.top_k`), rows scoring -inf included when fewer score higher; a NaN
    score counts as the maximum and is reported as +inf.
    """
    _check(queries, keys, keys[:, :0], similarity, blocks, precision)
    if not 1 <= k <= MAX_K:
        raise ValueError(f"k must be in 1..{MAX_K}, got {k}")
    k = min(k, len(keys))
    if len(queries) == 0:
        return torch.zeros(0, k, device=queries.device), torch.zeros(0, k, dtype=torch.long, device=queries.device)
    states = _launch(queries, keys, None, similarity, 0.0, blocks, precision, splits, topk=k)
    candidates = states.top.permute(1, 0, 2).reshape(len(queries), -1)  # splits in order: lower rows first
    indices = states.top_index.permute(1, 0, 2).reshape(len(queries), -1)
    unused = (indices < 0) | (indices >= len(keys))  # slots past k, and empty ones (a split of fewer than k rows)
    candidates = torch.where(unused, -math.inf, candidates)
    indices = torch.where(unused, torch.iinfo(indices.dtype).max, indices)  # after every row: never chosen over one
    by_row = indices.argsort(dim=1)  # the kernel's slots are unordered: rows in order first, so equal scores keep the lower row
    candidates, indices = candidates.gather(1, by_row), indices.gather(1, by_row)
    order = torch.sort(candidates, dim=1, descending=True, stable=True).indices[:, :k]
    return candidates.gather(1, order), indices.gather(1, order).long()


class _States(NamedTuple):
    """What one launch leaves per split: softmax states (with values), best scores and indices, the top k (with topk)."""

    m: Tensor | None
    l: Tensor | None
    acc: Tensor | None
    best: Tensor
    arg: Tensor
    top: Tensor | None
    top_index: Tensor | None


def _launch(
    queries: Tensor, keys: Tensor, values: Tensor | None, similarity: str, beta: float, blocks: Blocks, precision: str, splits: int | None, topk: int = 0
) -> _States:
    """Launch the kernel: with values, softmax and projection; without, the best row (and the `topk` best)."""
    n_q, d = queries.shape
    n_k = len(keys)
    project = values is not None
    dv = values.shape[1] if project else 0
    if splits is None:
        splits = default_splits(n_q, n_k, max(dv, 1), blocks, queries.device)
    per_split = math.ceil(n_k / splits / blocks.block_n) * blocks.block_n
    splits = math.ceil(n_k / per_split)
    block_dv = blocks.value_tile(dv) if project else 16
    n_vt = math.ceil(dv / block_dv) if project else 1

    sim = SIMILARITIES[similarity]
    if precision == "bf16" and sim != 0:
        queries = queries.to(torch.bfloat16)  # rounded to nearest here, as stored bf16 keys were (L1 does not multiply)
    if sim == 0:
        q, k, q_t, k_t = queries, keys, queries.T.contiguous(), keys.T.contiguous()
    else:
        q, k = queries.contiguous(), keys.contiguous()
        q_t, k_t = q, k  # unused by the tl.dot path
    q_n2, k_n2 = (squared_norms(q), squared_norms(k, q.dtype)) if sim >= 2 else (q, k)  # (unused by L1 and dot)

    device = queries.device
    best = torch.empty(splits, n_q, device=device, dtype=torch.float32)
    arg = torch.empty(splits, n_q, device=device, dtype=torch.int32)
    m = l = acc = top = top_index = None
    if project:
        m, l = torch.empty_like(best), torch.empty_like(best)
        acc = torch.empty(splits, n_q, dv, device=device, dtype=torch.float32)
    slots = 1 << max(0, topk - 1).bit_length()
    if topk:
        top = torch.empty(splits, n_q, slots, device=device, dtype=torch.float32)
        top_index = torch.empty(splits, n_q, slots, device=device, dtype=torch.int32)
    unused = best  # a pointer the kernel never reads or writes in this mode
    v = values if project else unused
    grid = (math.ceil(n_q / blocks.block_q) * n_vt, splits)
    with on_device(device):
        _fused_kernel[grid](
            q, k, q_t, k_t, q_n2, k_n2, v, _or(m, unused), _or(l, unused), _or(acc, unused), best, arg, _or(top, unused), _or(top_index, arg),
            n_q, d, dv, n_vt, float(beta) * math.log2(math.e), per_split, n_k,
            q.stride(0), k.stride(0), q_t.stride(0), k_t.stride(0), v.stride(0), best.stride(0),
            acc.stride(0) if project else 0, acc.stride(1) if project else 0,
            SIM=sim, BLOCK_Q=blocks.block_q, BLOCK_N=blocks.block_n, BLOCK_D=blocks.block_d, BLOCK_DV=block_dv,
            PRECISION=precision, EMULATE_BF16=_interpreted(), PROJECT=project, TOPK=topk, TOPK_SLOTS=slots,
            num_warps=blocks.num_warps, num_stages=blocks.num_stages,
        )
    return _States(m, l, acc, best, arg, top, top_index)


def _or(tensor: Tensor | None, unused: Tensor) -> Tensor:
    return unused if tensor is None else tensor


def squared_norms(x: Tensor, like: torch.dtype | None = None) -> Tensor:
    """|x|^2 per row in float32, as sums of squares (exact for small integers: equal distances stay equal).

    like=torch.bfloat16 rounds the rows to bfloat16 first, as the bf16 products do. One read of
    the rows, in chunks of 16 MiB of float32 at most, once per call: the kernel then loads one
    number per key instead of summing squares again in every value tile.
    """
    rows = max(1, 2**22 // max(1, x.shape[1]))
    if like == torch.bfloat16:
        return torch.cat([chunk.to(like).float().square().sum(1) for chunk in x.split(rows)])
    return torch.cat([chunk.float().square().sum(1) for chunk in x.split(rows)])


def _check(queries: Tensor, keys: Tensor, values: Tensor, similarity: str, blocks: Blocks, precision: str) -> None:
    if not supported(similarity):
        raise ValueError(f"the fused kernel takes {', '.join(SIMILARITIES)} (with triton installed), got {similarity!r}")
    blocks.check()
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if keys.device != queries.device or values.device != queries.device:
        raise ValueError(f"queries, keys and values must be on one device, got {queries.device}, {keys.device}, {values.device}")
    if queries.dim() != 2 or keys.dim() != 2 or values.dim() != 2 or keys.shape[1] != queries.shape[1] or len(values) != len(keys) or len(keys) == 0:
        raise ValueError(f"need queries Q x d, keys N x d and values N x w with N > 0, got {tuple(queries.shape)}, {tuple(keys.shape)}, {tuple(values.shape)}")
    if not available(queries):
        raise ValueError("the fused kernel runs on CUDA devices (or anywhere under TRITON_INTERPRET=1), unless AMEMCTL_NO_TRITON is set")


def _merge(states: _States) -> tuple[Tensor, Tensor, Tensor]:
    """The splits' partial states merged by the log-sum-exp rule, with the best index and score."""
    m, l, acc = states.m, states.l, states.acc
    if m.shape[0] == 1:
        output = acc[0] / l[0][:, None]
    else:
        weight = torch.exp2(m - m.amax(0, keepdim=True))  # splits that saw nothing have m = -inf and weigh 0
        output = torch.einsum("sq,sqv->qv", weight, acc) / (l * weight).sum(0)[:, None]
    return (output, *_best(states))


def _best(states: _States) -> tuple[Tensor, Tensor]:
    """(index, score) of each query's best row: that of the first split that has it, so the lowest index."""
    winner = states.best.argmax(0, keepdim=True)
    return states.arg.gather(0, winner)[0].long(), states.best.gather(0, winner)[0]


def softmax_retrieve(
    queries: Tensor,
    keys: Tensor,
    values: Tensor,
    similarity: str,
    beta: float,
    splits: int | None = None,
    block_q: int = 32,
    block_n: int = 32,
    precision: str = "tf32x3",
    block_d: int = 32,
    block_dv: int | None = None,
) -> Tensor:
    """V^T softmax(beta * sim(K, q)) for each query, in one pass over the keys (see `retrieve`)."""
    blocks = Blocks(block_q=block_q, block_n=block_n, block_d=block_d, block_dv=block_dv)
    return retrieve(queries, keys, values, similarity, beta, blocks, precision, splits)[0]
