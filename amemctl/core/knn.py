"""Weighted k-nearest-neighbour accuracy of embeddings: how well an encoder phi separates classes.

The protocol of Wu et al. 2018 (instance discrimination), used across contrastive learning
papers to judge an encoder without training a classifier: each embedding votes for the labels
of its k most cosine-similar reference embeddings, each vote weighted by exp(similarity / tau).
With one set as both queries and references (only a test set at hand), each query's own
row is left out.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def knn_accuracy(
    queries: Tensor,
    query_labels: Tensor,
    references: Tensor | None = None,
    reference_labels: Tensor | None = None,
    k: int = 200,
    tau: float = 0.1,
    block: int = 1024,
    budget: int | None = None,
) -> float:
    """Fraction of queries whose weighted vote of the k nearest references picks their label.

    Without references, the queries are their own references, each leaving itself out.
    Queries are scored `block` at a time, fewer where their similarities to every reference
    would exceed `budget` bytes. The weights are exp((similarity - best) / tau): the same votes
    as exp(similarity / tau), which overflows float32 once similarity / tau passes 88 (tau
    below about 0.011), where every class's vote becomes inf and the first class wins.
    """
    leave_one_out = references is None
    references = queries if references is None else references
    reference_labels = query_labels if reference_labels is None else reference_labels
    q = F.normalize(queries.float(), dim=1)
    r = F.normalize(references.float().to(q.device), dim=1)
    ref_labels = reference_labels.to(q.device).long()
    classes = int(max(ref_labels.max(), query_labels.max())) + 1
    k = min(k, len(r) - int(leave_one_out))
    rows = queries_per_block(len(r), k, classes, block, budget)
    correct = torch.zeros((), dtype=torch.long, device=q.device)  # counted on the device: one sync, not one per block
    for start in range(0, len(q), rows):
        sims = q[start : start + rows] @ r.T
        if leave_one_out:
            own = torch.arange(sims.shape[0], device=q.device)
            sims[own, own + start] = -torch.inf
        top, index = sims.topk(k, dim=1)
        votes = torch.zeros(sims.shape[0], classes, device=q.device)
        votes.scatter_add_(1, ref_labels[index], torch.exp((top - top[:, :1]) / tau))
        correct += (votes.argmax(1) == query_labels[start : start + rows].to(q.device).long()).sum()
    return int(correct) / len(q)


def queries_per_block(references: int, k: int, classes: int, block: int, budget: int | None) -> int:
    """How many queries one block scores: `block`, or as many as fit `budget` bytes (at least one).

    A query holds its float32 similarity to every reference, its top k (value and index) and
    its votes per class.
    """
    if budget is None:
        return block
    per_query = 4 * references + 12 * k + 4 * classes
    return max(1, min(block, budget // per_query))
