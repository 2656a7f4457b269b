"""nn.Module wrappers over the functional retrieval, named with the papers' words."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from amemctl.core.retrieval import DEFAULT_BUDGET, recall
from amemctl.core.separation import Separation, make_separation
from amemctl.core.similarity import Similarity, get_similarity


class UniversalHopfield(nn.Module):
    """A universal Hopfield network: stored memories M (and values P) as buffers.

    `forward(q)` returns project(separate(score(M, q))) for a batch of queries; with
    `steps > 1` the output is fed back as the next query (auto-association only).
    """

    def __init__(
        self,
        memories: Tensor,
        values: Tensor | None = None,
        *,
        similarity: "str | Similarity" = "dot",
        separation: "str | Separation" = "softmax",
        budget: int = DEFAULT_BUDGET,
    ) -> None:
        super().__init__()
        self.register_buffer("memories", memories)
        self.register_buffer("values", values if values is not None else None)
        self.similarity = similarity if isinstance(similarity, Similarity) else get_similarity(similarity)
        self.separation = separation if isinstance(separation, Separation) else make_separation(separation)
        self.budget = budget

    def forward(self, queries: Tensor, steps: int = 1) -> Tensor:
        state = queries
        for _ in range(steps):
            state = recall(
                state,
                self.memories,
                self.values,
                similarity=self.similarity,
                separation=self.separation,
                budget=self.budget,
            ).output
        return state

    @torch.no_grad()
    def nearest(self, queries: Tensor) -> Tensor:
        """Index of the best-scoring stored memory for each query (within the network's memory budget)."""
        return recall(queries, self.memories, similarity=self.similarity, separation="max", budget=self.budget).index
