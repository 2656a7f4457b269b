"""Chains of recalls ("stories"): each recall becomes the next query.

In a hetero-associative memory where each stored item is paired with its successor under a
permutation, chains started from stored items run around the permutation's cycles. These
functions follow chains with any recall function, find where each one closes into a cycle,
and compare the cycles with the permutation's own.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from torch import Tensor


@dataclass(frozen=True)
class Chain:
    """One story: the memories visited (the start first), and the cycle it closed into."""

    start: int
    visits: list[int]
    period: int | None  #: length of the cycle, or None if no memory repeated within the steps
    cycle: tuple[int, ...] | None  #: the repeating memories, rotated to begin at the smallest
    entered: int | None  #: the step at which the cycle was entered


def follow(
    queries: Tensor,
    starts: list[int],
    recall: Callable[[Tensor], Tensor],
    nearest: Callable[[Tensor], Tensor],
    steps: int,
    snap: Callable[[Tensor], Tensor] | None = None,
) -> tuple[list[Chain], list[Tensor]]:
    """Iterate recall `steps` times from `queries`; returns the chains and each step's outputs.

    nearest(outputs) gives the index of the stored memory each output is closest to; with
    `snap`, the next query is that memory (snap(indices)) instead of the raw output.
    """
    current = queries
    visits = [nearest(queries).tolist()]
    outputs = []
    for _ in range(steps):
        out = recall(current)
        index = nearest(out)
        outputs.append(out)
        visits.append(index.tolist())
        current = snap(index) if snap is not None else out
    chains = []
    for row, start in enumerate(starts):
        path = [step[row] for step in visits]
        chains.append(_close(start, path))
    return chains, outputs


def _close(start: int, path: list[int]) -> Chain:
    seen: dict[int, int] = {}
    for t, memory in enumerate(path):
        if memory in seen:
            first = seen[memory]
            return Chain(start, path, t - first, canonical(path[first:t]), first)
        seen[memory] = t
    return Chain(start, path, None, None, None)


def canonical(cycle: list[int]) -> tuple[int, ...]:
    """A cycle rotated to begin at its smallest member, so equal cycles compare equal."""
    k = cycle.index(min(cycle))
    return tuple(cycle[k:] + cycle[:k])


def permutation_cycles(permutation: Tensor) -> list[tuple[int, ...]]:
    """The cycles of a permutation (i -> permutation[i]), each in canonical rotation."""
    perm = permutation.tolist()
    seen = [False] * len(perm)
    cycles = []
    for i in range(len(perm)):
        if seen[i]:
            continue
        cycle = []
        j = i
        while not seen[j]:
            seen[j] = True
            cycle.append(j)
            j = perm[j]
        cycles.append(canonical(cycle))
    return cycles


def distinct_cycles(chains: list[Chain]) -> dict[tuple[int, ...], list[int]]:
    """Each cycle the chains closed into, with the starts whose chains reached it."""
    found: dict[tuple[int, ...], list[int]] = {}
    for chain in chains:
        if chain.cycle is not None:
            found.setdefault(chain.cycle, []).append(chain.start)
    return found
