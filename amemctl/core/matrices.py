"""The Q x N score and weight matrices, formed whole: the `score` and `separate` steps run apart.

Retrieval streams over the stored memories and never forms either (`recall`). A pipeline
that reads scores or weights needs them whole; each matrix is a result that must fit the
budget, and it is filled a block at a time so that what making it takes besides (a
similarity's per-feature workspace, a separation's sorted copies) fits the budget as well.
"""

from __future__ import annotations

from torch import Tensor

from amemctl.core.retrieval import DEFAULT_BUDGET, flat_queries, keys_for, plan_blocks, row_sum_divisor
from amemctl.core.rows import Rows, as_rows
from amemctl.core.separation import Separation
from amemctl.core.similarity import Similarity
from amemctl.errors import StageError


def score_matrix(
    queries: Tensor,
    keys: "Tensor | Rows",
    similarity: Similarity,
    distance_form: str = "negative",
    normalize: bool = False,
    budget: int = DEFAULT_BUDGET,
) -> Tensor:
    """Every query's score against every stored key (Q x N); `normalize` divides each row by its sum.

    Keys are read a chunk at a time (a store need not fit in memory), and each block of
    queries and keys is scored within `budget`, as retrieval scores its chunks.
    """
    key_rows = as_rows(keys)
    q = flat_queries(queries, key_rows)
    block_q, block_n = plan_blocks(q.shape[0], len(key_rows), q.element_size() * (3 + similarity.workspace(q.shape[1])), budget)
    scores = q.new_empty(q.shape[0], len(key_rows))
    for offset, chunk in key_rows.chunks(block_n):
        k = keys_for(similarity, chunk, q)
        for start in range(0, q.shape[0], block_q):
            scores[start : start + block_q, offset : offset + len(k)] = similarity(q[start : start + block_q], k, distance_form)
    if normalize:
        scores.div_(row_sum_divisor(scores.sum(1, keepdim=True)))
    return scores


def weight_matrix(scores: Tensor, separation: Separation, budget: int = DEFAULT_BUDGET) -> Tensor:
    """The separation's weights for a whole Q x N score matrix, a block of queries at a time.

    A separation weighs each query's row on its own, so blocks give the same weights; each
    block holds `row_workspace` rows' worth of temporaries at most (what the separation
    states: sparsemax 4, entmax 5, any other 8), so together they fit within `budget`.
    """
    if scores.dim() != 2:
        raise StageError(f"scores must be a queries x memories matrix, got shape {tuple(scores.shape)}", hint="separate the output of a score stage")
    queries, memories = scores.shape
    workspace = max(1, separation.row_workspace) * memories * scores.element_size()
    if queries == 0 or memories == 0:
        return separation.weights(scores)
    if workspace > budget:
        raise StageError(
            f"separating one query's {memories} scores takes {separation.row_workspace} times their size "
            f"({workspace / 2**20:.1f} MiB), more than the budget of {budget / 2**20:.1f} MiB",
            hint="raise `budget:`, or keep score, separate and project together so they run as one streaming retrieval",
        )
    step = budget // workspace
    first = separation.weights(scores[:step])
    if step >= queries:
        return first
    weights = first.new_empty(queries, memories)
    weights[:step] = first
    del first  # not held beside the next block's temporaries
    for start in range(step, queries, step):
        weights[start : start + step] = separation.weights(scores[start : start + step])
    return weights
