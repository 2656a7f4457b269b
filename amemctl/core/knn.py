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
) -> float:
    """Fraction of queries whose weighted vote of the k nearest references picks their label.

    Without references, the queries are their own references, each leaving itself out.
    """
    leave_one_out = references is None
    references = queries if references is None else references
    reference_labels = query_labels if reference_labels is None else reference_labels
    q = F.normalize(queries.float(), dim=1)
    r = F.normalize(references.float().to(q.device), dim=1)
    ref_labels = reference_labels.to(q.device).long()
    classes = int(max(ref_labels.max(), query_labels.max())) + 1
    k = min(k, len(r) - int(leave_one_out))
    correct = torch.zeros((), dtype=torch.long, device=q.device)  # counted on the device: one sync, not one per block
    for start in range(0, len(q), block):
        sims = q[start : start + block] @ r.T
        if leave_one_out:
            rows = torch.arange(sims.shape[0], device=q.device)
            sims[rows, rows + start] = -torch.inf
        top, index = sims.topk(k, dim=1)
        votes = torch.zeros(sims.shape[0], classes, device=q.device)
        votes.scatter_add_(1, ref_labels[index], torch.exp(top / tau))
        correct += (votes.argmax(1) == query_labels[start : start + block].to(q.device).long()).sum()
    return int(correct) / len(q)
