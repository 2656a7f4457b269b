"""Retrieval: project(separate(score(M, q))) in bounded memory.

`recall` is the one function behind every built-in retrieval, in notebooks and pipelines
alike. It streams the stored memories in chunks and folds each chunk's scores into the
separation's running state (see `amemctl.core.separation`), so no Q x N score matrix
beyond `budget` bytes ever exists; the answer equals the unchunked formula up to
floating-point rounding, and exactly for max and top-k. On the CPU, softmax, max and top-k
with the built-in similarities take a cache-blocked route (`amemctl.core.kernels.cpu`). On a
GPU, softmax, max and top-k take the one-pass Triton kernel (`amemctl.core.kernels.fused`)
where the choice table in `amemctl.core.kernels.routes` says a measurement found it faster.

Auto-association: values are the keys. Hetero-association: values are other rows (the
bottom half of an image for a query of its top half, the next image of a story).
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

import torch
from torch import Tensor

from amemctl.core.kernels import cpu, routes
from amemctl.core.rows import Aligned, Rows, TensorRows, as_rows
from amemctl.core.separation import Separation, make_separation
from amemctl.core.similarity import Similarity, get_similarity
from amemctl.errors import StageError, blaming, maker_of

#: Bytes of score-sized temporaries one retrieval may hold at once.
DEFAULT_BUDGET = 256 * 2**20

#: Chunks of fewer stored memories than this would waste time on overheads;
#: below it the retrieval takes fewer queries at a time instead.
MIN_CHUNK = 1024


@dataclass(frozen=True)
class Shard:
    """This rank's part of a memory split across torch.distributed ranks.

    The keys and values given to `recall` are rows start..start+len of a memory of `total`
    rows; `recall` merges every rank's partial state so that all ranks get the full answer.
    """

    group: object
    start: int
    total: int


@dataclass(frozen=True)
class Recall:
    """What a retrieval returns: the projected output and the best-scoring memory."""

    output: Tensor  #: Q x (value shape): the projected values
    index: Tensor  #: Q, int64: the memory with the highest score (lowest index on ties)
    score: Tensor  #: Q: that memory's score
    #: queries whose separation weighted every memory 0 (their output is zeros; `Reducer.unweighted`)
    unweighted: int = 0


def retrieve(
    queries: Tensor,
    keys: "Tensor | Rows",
    values: "Tensor | Rows | None" = None,
    **options: object,
) -> Tensor:
    """The retrieved values for each query; see `recall` for the options."""
    return recall(queries, keys, values, **options).output


def recall(
    queries: Tensor,
    keys: "Tensor | Rows",
    values: "Tensor | Rows | None" = None,
    *,
    similarity: "str | Similarity" = "dot",
    separation: "str | Separation" = "softmax",
    distance_form: str = "negative",
    normalize_scores: bool = False,
    budget: int = DEFAULT_BUDGET,
    shard: Shard | None = None,
) -> Recall:
    """Retrieve from stored keys (N x ...) and values (N x ..., default: the keys) for Q queries.

    similarity: a name from `amemctl.core.similarity.SIMILARITIES` or a `Similarity`.
    separation: a name from `amemctl.core.separation.SEPARATIONS` (default parameters) or a
        `Separation`, e.g. `Softmax(beta=1000)`.
    distance_form: how distances become scores, "negative" (-d) or "inverse" (1/d).
    normalize_scores: divide each query's scores by their sum first (UHN paper, appendix E;
        meaningful for positive scores, e.g. inverse distances).
    budget: bytes of score-sized temporaries allowed at once.
    shard: when the keys and values are this rank's rows of a memory split across ranks.
    """
    sim = similarity if isinstance(similarity, Similarity) else get_similarity(similarity)
    sep = separation if isinstance(separation, Separation) else make_separation(separation)
    key_rows = as_rows(keys)
    value_rows = key_rows if values is None else as_rows(values)
    q = flat_queries(queries, key_rows)
    n = len(key_rows)
    if len(value_rows) != n:
        raise StageError(
            f"{n} stored keys but {len(value_rows)} stored values",
            hint="hetero-associative values need one row per stored key",
        )
    if n == 0 and shard is None:
        raise StageError("the memory is empty: nothing is stored to retrieve from")

    direct = shard is None and n > 0 and not _tracks_grad(q, key_rows, value_rows)
    route = routes.find(q, key_rows, value_rows, sim, sep, distance_form, normalize_scores) if direct else None
    if route is not None:  # the one-pass Triton kernel, where a GPU measurement found it faster
        return _checked(*routes.recall(q, key_rows, value_rows, sim, sep, route, budget), key_rows, value_rows, MIN_CHUNK)
    if direct and cpu.applies(q, sim, sep, distance_form, normalize_scores):
        block_n = cpu.plan(q.shape[0], n, q.element_size(), 1, budget)[1]
        return _checked(*cpu.recall(q, key_rows, value_rows, sim, sep, budget), key_rows, value_rows, block_n)

    width = math.prod(value_rows.row_shape)
    # every rank must make the same collective calls: plan with the whole memory's size
    block_q, block_n = plan_recall(q, shard.total if shard else n, sim, sep, normalize_scores, budget)

    output = q.new_empty(q.shape[0], width)
    best_index = torch.empty(q.shape[0], dtype=torch.long, device=q.device)
    best_score = q.new_empty(q.shape[0])
    unweighted: Tensor | int = 0  # a tensor only where the separation can tell: no device sync for the others
    for start in range(0, q.shape[0], block_q):
        block = slice(start, start + block_q)
        out, idx, score, none = _recall_block(
            q[block], key_rows, value_rows, sim, sep, distance_form, normalize_scores, block_n, width, shard, budget
        )
        output[block], best_index[block], best_score[block] = out, idx, score
        if none is not None:
            unweighted = unweighted + none.sum()
    return _checked(output, best_index, best_score, key_rows, value_rows, block_n, int(unweighted))


def _checked(output: Tensor, best_index: Tensor, best_score: Tensor, key_rows: Rows, value_rows: Rows, block_n: int, unweighted: int = 0) -> Recall:
    """The Recall in the values' row shape, once its output and best scores are finite (every route).

    One sync; NaN keys give NaN best scores under max/top-k. Only on failure do the stored rows
    get read again (in chunks of `block_n`) to name what is not finite.
    """
    if not bool(torch.isfinite(output).all() & torch.isfinite(best_score).all()):
        _explain_non_finite(key_rows, value_rows, block_n)
    return Recall(output.reshape(output.shape[0], *value_rows.row_shape), best_index, best_score, unweighted)


def _tracks_grad(q: Tensor, *rows: Rows) -> bool:
    """Whether autograd records this retrieval: the CPU route's reused out= buffers refuse such tensors.

    The general path then computes it (retrieval is a forward computation: its in-place
    streaming steps are not differentiable either way).
    """
    tensors = [q, *(r.data for r in rows if isinstance(r, TensorRows))]
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


def nearest_index(x: Tensor, memory: "Tensor | Rows", budget: int = DEFAULT_BUDGET) -> Tensor:
    """For each row of x, the index of the nearest stored row (squared L2, ties to the lowest index).

    The papers' rule for which memory a retrieval recalled: `evaluate` scores by it, `report`
    frames by it, stories snap recalls to it.
    """
    return recall(x, memory, similarity="squared_euclidean", separation="max", budget=budget).index


def _explain_non_finite(key_rows: Rows, value_rows: Rows, block_n: int) -> None:
    for rows, what in ((key_rows, "stored keys"), (value_rows, "stored values")):
        for offset, chunk in rows.chunks(block_n):
            _check_finite(chunk, what, offset, hint="check the stage that stored or embedded them")
    raise StageError(
        "the retrieval overflowed to NaN or infinity",
        hint="scores too large for this separation: lower beta or the polynomial order, or normalise the patterns",
    )


def _recall_block(
    q: Tensor,
    key_rows: Rows,
    value_rows: Rows,
    sim: Similarity,
    sep: Separation,
    distance_form: str,
    normalize_scores: bool,
    block_n: int,
    width: int,
    shard: Shard | None = None,
    budget: int = DEFAULT_BUDGET,
) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
    """One block of queries against every chunk of stored memories (this rank's, with a shard), and its unweighted queries."""
    start = shard.start if shard else 0

    def scores_of(chunk: Tensor) -> Tensor:
        return sim(q, keys_for(sim, chunk, q), distance_form)

    totals = None
    # Normalising needs every score's sum before the first chunk is separated: when this block's
    # scores fit a quarter of the budget they are kept from that pass, not computed twice
    # (the same numbers either way; half the time for costly similarities such as the divergences).
    kept: deque[Tensor] | None = None
    if normalize_scores:
        totals = q.new_zeros(q.shape[0], 1)
        fits = q.shape[0] * len(key_rows) * q.element_size() * 4 <= budget
        kept = deque() if fits else None
        for _, chunk in key_rows.chunks(block_n):
            s = scores_of(chunk)
            totals += s.sum(1, keepdim=True)
            if kept is not None:
                kept.append(s)
        if shard is not None:
            import torch.distributed as dist

            dist.all_reduce(totals, group=shard.group)
        totals = row_sum_divisor(totals)

    separation_code = blaming(*maker_of(sep, "separation"))  # here and below: what the separation's own code raises is its bug
    with separation_code:
        reducer = sep.reducer(q.shape[0], width, q)
    best = q.new_full((q.shape[0],), -math.inf)
    best_index = torch.zeros(q.shape[0], dtype=torch.long, device=q.device)
    value_chunks = Aligned(value_rows, block_n) if reducer.reads_values else None
    for offset, chunk in key_rows.chunks(block_n):
        s = kept.popleft() if kept else scores_of(chunk)  # each kept block freed as it is used
        if totals is not None:
            s = s / totals
        chunk_best, chunk_index = s.max(1)
        better = chunk_best > best
        best = torch.where(better, chunk_best, best)
        best_index = torch.where(better, chunk_index + offset + start, best_index)
        values = None
        if value_chunks is not None:
            values = value_chunks.next(len(chunk)).to(device=q.device, dtype=q.dtype)
        with separation_code:
            reducer.update(s, offset + start, values)
    s = values = None  # the last chunk's scores and values: held by the reducer if it needs them, not beside its finish too
    local_values = _OnDevice(value_rows, q)
    if shard is not None:
        reducer.merge(shard.group, local_values, start)  # unmarked: a collective that lost its peer rank is no bug of the separation's
        best, best_index = _merge_best(best, best_index, shard.group)
    with separation_code:
        return reducer.finish(local_values), best_index, best, reducer.unweighted()


def row_sum_divisor(totals: Tensor) -> Tensor:
    """What divides each row of scores by its sum (UHN appendix E): a row summing to 0 is left as it is."""
    return torch.where(totals == 0, torch.ones_like(totals), totals)


def keys_for(sim: Similarity, chunk: Tensor, q: Tensor) -> Tensor:
    """A chunk of stored keys on the queries' device, in their dtype unless the similarity takes keys in their own lower precision."""
    low = sim.mixed_precision and chunk.dtype in (torch.float16, torch.bfloat16)
    return chunk.to(device=q.device) if low else chunk.to(device=q.device, dtype=q.dtype)


def _merge_best(best: Tensor, index: Tensor, group: object) -> tuple[Tensor, Tensor]:
    """The best score over every rank, and its index (the lowest rank's on ties, so the lowest index)."""
    import torch.distributed as dist

    world = dist.get_world_size(group)
    scores = [torch.empty_like(best) for _ in range(world)]
    indices = [torch.empty_like(index) for _ in range(world)]
    dist.all_gather(scores, best, group=group)
    dist.all_gather(indices, index, group=group)
    stacked = torch.stack(scores)
    winner = stacked.argmax(0)  # first maximum: the lowest rank
    return stacked.gather(0, winner[None])[0], torch.stack(indices).gather(0, winner[None])[0]


@dataclass(frozen=True)
class _OnDevice:
    """Rows read onto the queries' device and dtype, for reducers that read values at the end."""

    rows: Rows
    like: Tensor

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def row_shape(self) -> tuple[int, ...]:
        return self.rows.row_shape

    def chunks(self, size: int):
        for offset, chunk in self.rows.chunks(size):
            yield offset, chunk.to(device=self.like.device, dtype=self.like.dtype)

    def take(self, index: Tensor) -> Tensor:
        return self.rows.take(index).to(device=self.like.device, dtype=self.like.dtype)


def plan_recall(q: Tensor, memories: int, sim: Similarity, sep: Separation, normalize_scores: bool, budget: int) -> tuple[int, int]:
    """How many of the queries `q` and of `memories` stored rows `recall` takes at once, within `budget`.

    Normalising may keep a block's scores from the pass that sums them (`_recall_block`), in a
    quarter of the budget; the chunks are then planned in the other three quarters.
    """
    pair_bytes = q.element_size() * (3 + sim.workspace(q.shape[1]))
    full_rows = max(1, sep.row_workspace) if sep.needs_full_rows else 0  # 0 plans a streaming separation
    chunks = budget - budget // 4 if normalize_scores else budget
    return plan_blocks(q.shape[0], memories, pair_bytes, chunks, full_rows, q.element_size())


def plan_blocks(queries: int, memories: int, pair_bytes: int, budget: int, full_rows: int = 0, score_bytes: int = 4) -> tuple[int, int]:
    """How many queries and stored memories to take at once so one block fits `budget`.

    Streaming separations prefer all queries against chunks of memories (each memory is
    read once); when that would make chunks tiny they take fewer queries instead.
    Full-row separations (`full_rows`: their `row_workspace`, 0 for a streaming one) need
    every memory of a query at once and take fewer queries: see `_full_row_queries`. Their
    chunks are scored in what the gathered rows leave of the budget.
    """
    if full_rows:
        block_q = _full_row_queries(queries, memories, full_rows, score_bytes, budget)
        left = budget - block_q * memories * score_bytes
        return block_q, max(1, min(memories, left // (pair_bytes * block_q)))
    pairs = max(1, budget // pair_bytes)
    block_n = min(memories, max(min(MIN_CHUNK, memories), pairs // max(queries, 1)))
    block_q = max(1, min(queries, pairs // block_n))
    return block_q, block_n


def _full_row_queries(queries: int, memories: int, workspace: int, score_bytes: int, budget: int) -> int:
    """The most queries whose full rows of scores a full-row separation can weigh within `budget`.

    A block of b queries holds its b gathered rows and, while weighing them, the temporaries
    of `rows_at_once(b, workspace)` rows (`workspace` rows' worth each); gathering held the
    rows twice for a moment (the chunks and the rows made of them). So b + max(b, that) rows:
    2b when b >= workspace, b + workspace below.
    """
    row = memories * score_bytes
    block_q = budget // (2 * row) if budget >= 2 * workspace * row else budget // row - workspace
    if block_q < 1:
        raise StageError(
            f"this separation needs all {memories} scores of a query at once, and temporaries {workspace} times their size "
            f"({(1 + workspace) * row} bytes), more than the retrieval budget of {budget} bytes allows",
            hint="raise the retrieval budget, or use a streaming separation (softmax, max, top-k)",
        )
    return min(queries, block_q)


def flat_queries(queries: Tensor, keys: Rows) -> Tensor:
    if not isinstance(queries, Tensor):
        raise StageError(f"queries must be a tensor, got {type(queries).__name__}")
    if queries.dim() == 0:
        raise StageError("queries must have a batch dimension (Q x ...), got a scalar")
    # the width spelt out: reshape(0, -1) cannot infer it for no queries
    q = queries.reshape(queries.shape[0], math.prod(queries.shape[1:])) if queries.dim() > 1 else queries[:, None]
    key_width = math.prod(keys.row_shape)
    if q.shape[1] != key_width:
        raise StageError(
            f"queries have {q.shape[1]} features ({tuple(queries.shape[1:])}) "
            f"but stored keys have {key_width} ({tuple(keys.row_shape)})",
            hint="queries must be shaped like the stored keys; check which tensor each stage reads",
        )
    if not q.is_floating_point() or q.dtype in (torch.float16, torch.bfloat16):
        q = q.float()
    _check_finite(q, "queries")
    return q


def _check_finite(x: Tensor, what: str, offset: int = 0, hint: str = "check the stage that produced them (e.g. a corruption or an embedding)") -> None:
    """A StageError naming the first rows (numbered from `offset`) that hold NaN or infinity."""
    if x.is_floating_point() and not torch.isfinite(x).all():
        bad = (~torch.isfinite(x)).reshape(x.shape[0], -1).any(1).nonzero()[:, 0] + offset
        shown = ", ".join(str(int(i)) for i in bad[:5]) + (", ..." if len(bad) > 5 else "")
        raise StageError(f"{what} contain NaN or infinite values (rows {shown})", hint=hint)
