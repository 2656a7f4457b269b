"""nn.Module wrappers over the functional retrieval, named with the papers' words."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from amemctl.core import sdm
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


class SparseDistributedMemory(nn.Module):
    """Kanerva's sparse distributed memory (Kanerva 1988): random hard locations and their counters.

    `locations` (L x n, 0/1) and `counters` (L x data shape, 0 to begin with) are buffers;
    `write` adds patterns in place, `forward(q, steps)` reads (+1/-1). The functions are in
    `amemctl.core.sdm`, which says how they are the universal Hopfield network's retrieval.
    Give `radius`, or `p` (the probability that a location fires; the radius then follows
    from the binomial distribution of distances, `sdm.radius_for`).
    """

    def __init__(
        self,
        locations: Tensor,
        *,
        radius: int | None = None,
        p: float | None = None,
        data_shape: tuple[int, ...] | None = None,
        budget: int = DEFAULT_BUDGET,
    ) -> None:
        super().__init__()
        if (radius is None) == (p is None):
            raise ValueError("give the radius or the activation probability p, one of the two")
        n = locations.reshape(len(locations), -1).shape[1]
        self.radius = int(radius) if radius is not None else sdm.radius_for(n, float(p))  # type: ignore[arg-type]
        self.register_buffer("locations", (locations.reshape(len(locations), n) > 0).float())
        self.register_buffer("counters", self.locations.new_zeros(len(locations), *(data_shape or (n,))))
        self.budget = budget

    @classmethod
    def random(cls, count: int, n: int, generator: torch.Generator | None = None, **options) -> "SparseDistributedMemory":
        """A memory of `count` hard locations drawn uniformly from {0,1}^n (options as the constructor's)."""
        return cls(sdm.hard_locations(count, n, generator), **options)

    @property
    def p(self) -> float:
        """The probability that a location fires for a given address at this radius."""
        return sdm.activation_probability(self.locations.shape[1], self.radius)

    @torch.no_grad()
    def write(self, addresses: Tensor, data: Tensor | None = None) -> "SparseDistributedMemory":
        """Write `data` (default: the addresses themselves) at `addresses`, adding to the counters in place."""
        increments = sdm.write(self.locations, addresses, data, radius=self.radius, budget=self.budget)
        if tuple(increments.shape[1:]) != tuple(self.counters.shape[1:]):
            raise ValueError(f"data shaped {tuple(increments.shape[1:])}, but this memory's counters hold {tuple(self.counters.shape[1:])} (data_shape=)")
        self.counters += increments.to(self.counters)
        return self

    @torch.no_grad()
    def forward(self, queries: Tensor, steps: int = 1) -> Tensor:
        """Read each query (+1/-1); with steps > 1 each output is the next address, until a read changes nothing."""
        if steps == 1:
            return sdm.read(queries, self.locations, self.counters, radius=self.radius, budget=self.budget)
        return sdm.iterated_read(queries, self.locations, self.counters, radius=self.radius, steps=steps, budget=self.budget).state
