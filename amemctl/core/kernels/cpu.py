"""Softmax, max and top-k retrieval on the CPU at the speed of its matrix products.

The general streaming retrieval (`amemctl.core.retrieval`) works for every similarity and
separation; on a CPU three things made it slower than the plain formula or FAISS, and this
route removes them for the built-in similarities (dot, cosine, euclidean, squared_euclidean,
manhattan) with softmax (beta > 0), max and top-k:

- Blocks sized to a core's L2 cache (`CACHE_BYTES` of scores, all queries against a slice of
  the memories, never more than the retrieval budget): the passes after the score product
  (max, exp, sum, the projection's read) read cache, not main memory. Max and top-k, which
  read a block once, take larger blocks (`SELECT_BYTES`).
- No subnormal exponentials: at beta = 1000 most exp arguments lie far below -87, where exp
  returns subnormal floats about 30 times slower than normal ones. Arguments are floored at
  `EXP_FLOOR` first; exp(-80) is below 1e-34 of the largest weight, which cannot change a
  float32 sum, so the answer is the same.
- Nearly one-hot softmax projected sparsely: at a large beta all but a few weights per query
  sit at that floor, and a block with at most `SPARSE_SHARE` of its weights above it adds
  only those rows of the values (`_project`). A semantic retrieval (256-d keys, 3,072-wide
  images, beta = 10,000) spent nearly all its time in the dense product; it is 3-4 times
  faster, with the same output to the bit in the measurement.
- Max and top-k select on the block itself: the first maximum from `amax` over short runs
  (`_FirstMaximum`; `Tensor.max` with indices is six times slower), top-k from torch.topk,
  falling back to the exact tie-breaking `top_k` only for rows where a score ties the k-th. Euclidean selection uses 2 q.k - |k|^2 (one fused product, same order
  as -|q - k|); the returned scores are recomputed exactly for the chosen memories.

beta is folded into the queries, so the score product yields beta * s directly. L1 distances
come from FAISS's SIMD kernel when faiss-cpu is installed (`faiss_backend`), torch.cdist
otherwise; the answer is the same either way. Ties go to the lowest memory index everywhere,
as in the general path.
"""

from __future__ import annotations

import math
import weakref

import torch
from torch import Tensor

from amemctl.core.kernels import faiss_backend
from amemctl.core.rows import Aligned, Rows, TensorRows
from amemctl.core.separation import EXP_FLOOR, Separation, Softmax, TopK, merge_top_k, top_k
from amemctl.core.similarity import EPS, SIMILARITIES, Similarity, unit

#: The similarities this route computes itself.
ROUTED = ("dot", "cosine", "euclidean", "squared_euclidean", "manhattan")

#: Bytes of scores per block: about one core's L2 cache.
CACHE_BYTES = 2 * 2**20

#: Bytes of scores per block for max and top-k, which read a block once: larger blocks mean
#: fewer, larger products and fewer selection steps (about 5% faster than `CACHE_BYTES` at
#: N = 1e5, d = 512, Q = 256 on two cores).
SELECT_BYTES = 8 * 2**20

#: Bytes of stored keys per block for L1, whose distance kernel (FAISS's or torch.cdist) reads
#: every key once per query: a slice that stays in a core's L2 cache. Twice as fast as 2 MiB
#: score blocks at d = 512 (whose 2,048 keys, 4 MiB, spill to L3).
L1_KEY_BYTES = 2**20

#: Fewest stored memories per block before the route takes fewer queries at a time instead.
MIN_COLUMNS = 512


def applies(q: Tensor, sim: Similarity, sep: Separation, distance_form: str, normalize_scores: bool) -> bool:
    """Whether this route computes the retrieval (otherwise the general streaming path does)."""
    if q.device.type != "cpu" or q.dtype not in (torch.float32, torch.float64):
        return False
    if sim.name not in ROUTED or SIMILARITIES.get(sim.name) is not sim:
        return False  # a plugin's own similarity: run it as given
    if distance_form != "negative" or normalize_scores:
        return False
    if type(sep) is Softmax:
        return float(sep.beta) > 0
    return type(sep) is TopK


def plan(queries: int, memories: int, element_size: int, workspace: int, budget: int, block_bytes: int = CACHE_BYTES) -> tuple[int, int]:
    """Queries and memories per block: about `block_bytes` of scores, never beyond `budget`."""
    pairs = max(1, min(budget // (element_size * (1 + workspace)), block_bytes // element_size))
    block_q = max(1, min(queries, pairs // MIN_COLUMNS))
    return block_q, _whole_runs(max(1, min(memories, pairs // block_q)))


def _whole_runs(block_n: int) -> int:
    """block_n rounded down to whole runs of `_FirstMaximum.RUN` (its fast path), when it has two or more."""
    run = _FirstMaximum.RUN
    return block_n - block_n % run if block_n >= 2 * run else block_n


def plan_l1(queries: int, memories: int, dim: int, element_size: int, budget: int) -> tuple[int, int]:
    """Queries and memories per L1 block: `L1_KEY_BYTES` of keys, about `CACHE_BYTES` of scores at most, within `budget`."""
    block_n = max(1, min(memories, L1_KEY_BYTES // (dim * element_size)))
    block_q = max(1, min(queries, CACHE_BYTES // (block_n * element_size)))
    while block_q * block_n * element_size * 2 > budget and (block_q > 1 or block_n > 1):  # the block and its workspace
        block_q, block_n = (max(1, block_q // 2), block_n) if block_q > 1 else (block_q, max(1, block_n // 2))
    return block_q, _whole_runs(block_n)


def recall(q: Tensor, key_rows: Rows, value_rows: Rows, sim: Similarity, sep: Separation, budget: int) -> tuple[Tensor, Tensor, Tensor]:
    """(output Q x width, best index Q, its score Q) for flat queries q (Q x d) on the CPU."""
    width = math.prod(value_rows.row_shape)
    if sim.name == "manhattan":
        block_q, block_n = plan_l1(q.shape[0], len(key_rows), q.shape[1], q.element_size(), budget)
    else:
        block_bytes = CACHE_BYTES if isinstance(sep, Softmax) else SELECT_BYTES
        block_q, block_n = plan(q.shape[0], len(key_rows), q.element_size(), sim.workspace(q.shape[1]), budget, block_bytes)
    same = _same_rows(key_rows, value_rows)
    norms = stored_norms(key_rows, q.dtype) if sim.name in ("euclidean", "squared_euclidean") else None
    output = q.new_empty(q.shape[0], width)
    index = torch.empty(q.shape[0], dtype=torch.long)
    for start in range(0, q.shape[0], block_q):
        block = slice(start, start + block_q)
        if isinstance(sep, Softmax):
            scores = _Scores(sim.name, q[block], float(sep.beta), exact=True, norms=norms)
            output[block], index[block] = _softmax(scores, key_rows, None if same else value_rows, block_n, width)
        else:
            scores = _Scores(sim.name, q[block], 1.0, exact=False, norms=norms, transposed=sep.k == 1)
            chosen = _top_k(scores, key_rows, sep.k, block_n)
            if sep.k == 1:  # the one chosen memory's value: no weights to apply
                index[block] = chosen[:, 0]
                output[block] = value_rows.take(chosen[:, 0]).reshape(len(chosen), width).to(device=q.device, dtype=q.dtype)
                continue
            true = row_scores(sim.name, q[block, None, :].expand(-1, chosen.shape[1], -1), key_rows.take(chosen.reshape(-1)).reshape(*chosen.shape, -1).to(device=q.device, dtype=q.dtype))
            picked = value_rows.take(chosen.reshape(-1)).reshape(*chosen.shape, width).to(device=q.device, dtype=q.dtype)
            output[block] = torch.einsum("qk,qkw->qw", sep._select_weights(true), picked)
            index[block] = chosen[:, 0]
    best = key_rows.take(index).reshape(q.shape[0], q.shape[1]).to(device=q.device, dtype=q.dtype)
    return output, index, row_scores(sim.name, q, best)


#: |k|^2 of stored keys held in memory: id(tensor) -> (weak reference, version, norms)
_NORMS: dict[int, tuple[weakref.ref, int, Tensor]] = {}


def stored_norms(key_rows: Rows, dtype: torch.dtype) -> Tensor | None:
    """|k|^2 of every stored key held in memory, computed once per tensor and reused until it changes.

    A memory is stored once and queried many times; its norms cost a read of every key (a
    tenth of a nearest-neighbour search at d = 512), so they are kept beside the tensor, as an
    index keeps them, and recomputed when the tensor is modified in place (its version moves).
    Writes that torch does not count (through `.data`, a NumPy view of the tensor) are not seen:
    give `recall` a new tensor after such a write. Keys streamed from a store, inference
    tensors and tensors that require grad (None here) get their norms chunk by chunk.
    """
    keys = key_rows.data if isinstance(key_rows, TensorRows) else None
    if keys is None or keys.dtype != dtype or keys.device.type != "cpu" or keys.is_inference() or keys.requires_grad:
        return None  # inference tensors have no version counter; parameters change under optimisers
    entry = _NORMS.get(id(keys))
    if entry is not None and entry[0]() is keys and entry[1] == keys._version:
        return entry[2]
    flat = key_rows.flat()
    scratch = flat.new_empty(min(len(flat), 4096), flat.shape[1])
    norms = torch.cat([squared_norms(flat[s : s + len(scratch)], scratch) for s in range(0, len(flat), len(scratch))]) if len(flat) else flat.new_empty(0)
    _NORMS[id(keys)] = (weakref.ref(keys, lambda _, key=id(keys): _NORMS.pop(key, None)), keys._version, norms)
    return norms


def squared_norms(keys: Tensor, scratch: Tensor) -> Tensor:
    """|k|^2 per row as a sum of squares: exact for small integers, so equal distances stay equal.

    (The square of `vector_norm` is not: sqrt(27)^2 is 26.999998 in float32.) `scratch` is a
    buffer of at least keys' shape, reused rather than allocated.
    """
    return torch.mul(keys, keys, out=scratch[: len(keys)]).sum(1)


def _same_rows(a: Rows, b: Rows) -> bool:
    return a is b or (isinstance(a, TensorRows) and isinstance(b, TensorRows) and a.data is b.data)


class _Scores:
    """beta * score(q, k) for a block of queries against chunks of keys, up to a per-query constant.

    exact=False (selection only) may return any order-preserving stand-in instead.
    transposed=True gives blocks memories x queries: for a nearest-neighbour search on a CPU the
    product keys @ queries^T with its selection runs about 9% faster than the other way round.
    """

    def __init__(self, name: str, q: Tensor, beta: float, exact: bool, norms: Tensor | None = None, transposed: bool = False) -> None:
        self.name, self.beta, self.exact, self.norms, self.transposed = name, beta, exact, norms, transposed
        if name == "cosine":
            q = unit(q)
        self.q = q
        self.scaled = q * beta if name in ("dot", "cosine") else q
        self.q_sq = (q * q).sum(1, keepdim=True)
        # one scores block and one keys-sized scratch, reused chunk after chunk: a fresh
        # allocation of this size is a fresh mmap whose page faults cost as much as the pass
        self._buffers: dict[str, Tensor] = {}

    def _buffer(self, what: str, rows: int, cols: int) -> Tensor:
        b = self._buffers.get(what)
        if b is None or b.shape != (rows, cols):
            b = self._buffers[what] = self.q.new_empty(rows, cols)
        return b

    def __call__(self, keys: Tensor, offset: int) -> Tensor:
        """The scores block of keys offset.., in a buffer that the next call overwrites."""
        name, beta = self.name, self.beta
        out = self._buffer("scores", *((len(keys), len(self.q)) if self.transposed else (len(self.q), len(keys))))
        if name == "dot":
            return self._product(self.scaled, keys, out)
        if name == "cosine":
            norms = torch.linalg.vector_norm(keys, dim=1, keepdim=True).clamp_min_(EPS)
            return self._product(self.scaled, torch.div(keys, norms, out=self._buffer("keys", *keys.shape)), out)
        if name in ("squared_euclidean", "euclidean"):
            if self.norms is not None:
                k_sq = self.norms[offset : offset + len(keys)]
            else:
                k_sq = squared_norms(keys, self._buffer("keys", *keys.shape))
            if name == "squared_euclidean" or not self.exact:
                # -beta |q - k|^2 = beta (2 q.k - |k|^2) - beta |q|^2, the last term the same for every key
                return self._product(self.q, keys, out, bias=k_sq, beta=-beta, alpha=2 * beta)
            assert not self.transposed, "exact euclidean scores are only made queries x keys (softmax)"
            s = torch.addmm(k_sq[None], self.q, keys.T, alpha=-2, out=out)
            return s.add_(self.q_sq).clamp_min_(0).sqrt_().mul_(-beta)
        first, second = (keys, self.q) if self.transposed else (self.q, keys)  # L1 is symmetric
        if faiss_backend.available(self.q):
            d = faiss_backend.l1_distances(first, second, out=out)
        else:
            d = torch.cdist(first, second, p=1)
        return d.mul_(-beta)

    def _product(self, q: Tensor, keys: Tensor, out: Tensor, bias: Tensor | None = None, beta: float = 1.0, alpha: float = 1.0) -> Tensor:
        """alpha q.k + beta bias_k for every pair, queries x keys (keys x queries when transposed)."""
        if bias is None:
            return torch.mm(keys, q.T, out=out) if self.transposed else torch.mm(q, keys.T, out=out)
        if self.transposed:
            return torch.addmm(bias[:, None], keys, q.T, beta=beta, alpha=alpha, out=out)
        return torch.addmm(bias[None], q, keys.T, beta=beta, alpha=alpha, out=out)


def _softmax(scores: _Scores, key_rows: Rows, value_rows: Rows | None, block_n: int, width: int) -> tuple[Tensor, Tensor]:
    """The online softmax over chunks (running maximum m, normaliser l, weighted sum acc)."""
    q = scores.q
    rows = q.shape[0]
    m = q.new_full((rows, 1), -math.inf)
    l = q.new_zeros(rows, 1)
    acc = q.new_zeros(rows, width)
    firsts = _FirstMaximum()
    value_chunks = Aligned(value_rows, block_n) if value_rows is not None else None
    for offset, chunk in key_rows.chunks(block_n):
        keys = chunk.to(device=q.device, dtype=q.dtype)
        z = scores(keys, offset)
        chunk_best = firsts.add(z, offset)
        m_new = torch.maximum(m, chunk_best[:, None])
        p = z.sub_(m_new).clamp_min_(EXP_FLOOR).exp_()
        rescale = torch.exp(m - m_new)
        l = l.mul_(rescale).add_(p.sum(1, keepdim=True))
        values = keys if value_chunks is None else value_chunks.next(len(keys)).to(device=q.device, dtype=q.dtype)
        _project(acc.mul_(rescale), p, values)
        m = m_new
    return acc / l, firsts.index()


#: A block of weights is projected sparsely when at most this share lies above the exp floor.
SPARSE_SHARE = 1 / 64
#: Weights at most this are left out of a sparse projection: exp(EXP_FLOOR + 1), so that floored
#: weights count as floored whatever ulp a CPU's exp gives exp(EXP_FLOOR).
NEGLIGIBLE = math.exp(EXP_FLOOR + 1)


def _project(acc: Tensor, p: Tensor, values: Tensor) -> None:
    """acc += p @ values, reading only the values of weights above the exp floor when they are few.

    At a large beta the weights are nearly one-hot: all but a few per query sit at the floor
    exp(EXP_FLOOR), below 1e-34 of the largest, and the dense product spends its time on them
    (projecting onto 3,072-wide images, nearly all of a semantic retrieval). Leaving out weights
    below `NEGLIGIBLE` (5e-35 of the largest) changes the output by less than float32 (or
    float64) rounding. NaN weights are kept, so that
    a NaN still reaches the output and its diagnosis.
    """
    kept = ~(p <= NEGLIGIBLE)
    count = int(kept.sum())
    if count > SPARSE_SHARE * p.numel():
        acc.addmm_(p, values)
    elif count:
        rows, cols = kept.nonzero(as_tuple=True)
        acc.index_add_(0, rows, values[cols].mul_(p[rows, cols, None]))


class _FirstMaximum:
    """The first maximum of each query over chunks (ties to the lowest index; a NaN counts as the maximum).

    Each chunk costs one `amax` over runs of `RUN` scores (no indices: `Tensor.max` with
    indices is six times slower on a CPU, a tenth of a nearest-neighbour search). Only the
    queries whose maximum the chunk raises, few after the first chunks, look for its position:
    the first run holding it, then the first place in that run. Chunks are queries x memories,
    or memories x queries when `transposed`.
    """

    RUN = 64

    def __init__(self, transposed: bool = False) -> None:
        self.transposed = transposed
        self.best: Tensor | None = None
        self.at: Tensor | None = None

    def add(self, z: Tensor, offset: int) -> Tensor:
        """Take in the chunk z (memories offset..); returns its maxima per query."""
        t = self.transposed
        n = z.shape[0] if t else z.shape[1]
        runs = n // self.RUN if n % self.RUN == 0 and n > self.RUN and z.is_contiguous() else 0
        if runs:
            chunked = z.view(runs, self.RUN, -1) if t else z.view(len(z), runs, self.RUN)
            run_max = chunked.amax(1 if t else 2)  # runs x queries, or queries x runs
            value = run_max.amax(0 if t else 1)
        else:
            value = z.amax(0 if t else 1)
        if self.best is None:
            self.best, self.at = value.clone(), torch.zeros(len(value), dtype=torch.long)
            raised = torch.arange(len(value))
        else:
            raised = ((value > self.best) | (value.isnan() & ~self.best.isnan())).nonzero()[:, 0]
            if len(raised) == 0:
                return value
            self.best[raised] = value[raised]
        # argmax returns the first maximum, as amax's (a NaN first of all)
        if not runs:
            at = z[:, raised].argmax(0) if t else z[raised].argmax(1)
        elif t:
            run = run_max[:, raised].argmax(0)
            at = chunked[run, :, raised].argmax(1) + run * self.RUN
        else:
            run = run_max[raised].argmax(1)
            at = chunked[raised, run].argmax(1) + run * self.RUN
        self.at[raised] = at + offset
        return value

    def index(self) -> Tensor:
        """The overall first maximum's index per row."""
        assert self.at is not None, "no chunk was added"
        return self.at


def _top_k(scores: _Scores, key_rows: Rows, k: int, block_n: int) -> Tensor:
    """The indices of the k best memories per query (best first, ties to the lowest index)."""
    best = scores.q.new_empty(scores.q.shape[0], 0)
    index = torch.empty(scores.q.shape[0], 0, dtype=torch.long)
    firsts = _FirstMaximum(transposed=scores.transposed)
    for offset, chunk in key_rows.chunks(block_n):
        z = scores(chunk.to(device=scores.q.device, dtype=scores.q.dtype), offset)
        if k == 1:
            firsts.add(z, offset)
            continue
        vals, idx = chunk_top_k(z, k)
        best, index = merge_top_k(best, index, vals, idx + offset, k)
    return firsts.index()[:, None] if k == 1 else index


def chunk_top_k(z: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """`separation.top_k` of a block (best first, ties to the lowest column), through torch.topk.

    torch.topk picks the right set unless a score left out equals the k-th; only those rows
    take the exact (slower) `top_k`.
    """
    k = min(k, z.shape[1])
    vals, idx = torch.topk(z, k, dim=1)
    # (a NaN score, which torch.topk ranks first, is kept so that retrieval reports the bad key)
    clear = ((z >= vals[:, -1:]).sum(1) == k) | vals.isnan().any(1)
    if not bool(clear.all()):
        rows = (~clear).nonzero()[:, 0]
        vals[rows], idx[rows] = top_k(z[rows], k)
    idx, order = idx.sort(1)  # equal scores in index order, then a stable sort by score
    vals = vals.gather(1, order)
    order = torch.sort(vals, dim=1, descending=True, stable=True).indices
    return vals.gather(1, order), idx.gather(1, order)


def row_scores(name: str, q: Tensor, k: Tensor) -> Tensor:
    """The score of each query with its own key (q and k: ... x d), the similarity's exact value."""
    if name == "dot":
        return (q * k).sum(-1)
    if name == "cosine":
        return (unit(q) * unit(k)).sum(-1)
    if name == "euclidean":
        return -(q - k).norm(dim=-1)
    if name == "squared_euclidean":
        return -(q - k).square().sum(-1)
    return -(q - k).abs().sum(-1)
