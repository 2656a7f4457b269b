"""Kanerva's sparse distributed memory: random hard locations and their counters.

Kanerva (1988, "Sparse Distributed Memory"; 1993) spreads a memory of n-bit words over L hard
locations whose addresses A (L x n) are drawn uniformly at random from {0,1}^n. Each location
has one counter per data bit, C (L x width), all 0 to begin with.

- write(x, w): every location within Hamming distance r of the address x adds the data w,
  read as +1 for a 1 and -1 for a 0, to its counters (auto-association: w = x).
- read(q): the counters of every location within r of q are summed, bit by bit, and each sum
  is thresholded at 0. A sum of exactly 0 (including a query that activates no location)
  reads as 1 (+1): the rule of the `sign` activation, chosen here, where Kanerva thresholds
  the sums at 0 and leaves the tie open. Iterated reading feeds each output back as the
  next address.

Both are the universal Hopfield network's project(separate(score(M, q))) (Millidge et al.
2022, whose SDM section writes z = P thresh(d(A, q))): reading is `recall` of the query
against the keys A with the values C, under the hamming similarity and a threshold at -r
(unnormalised: a sum, not a mean), so it streams over chunks of locations within the
retrieval budget. Writing is the same retrieval transposed: the counters are `recall` of
the locations, as queries, against the written addresses as keys, with the bipolar data as
values. Neither ever forms the L x N activation matrix beyond the budget.

Entries > 0 read as 1 everywhere (the hamming similarity's rule), so addresses, data and
queries may be binary {0,1} or bipolar {-1,+1}. The sums are exact in float32 while they stay
below 2^24 (L times the patterns written).

The radius r may be chosen from p, the probability that a location fires for a given address:
the distance of a random address from a fixed one is Binomial(n, 1/2), so r is the smallest
with P(d <= r) >= p (n = 1,000, p = 0.001 gives Kanerva's r = 451).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from amemctl.core import random
from amemctl.core.dynamics import ACTIVATIONS, Iteration, iterate
from amemctl.core.retrieval import DEFAULT_BUDGET, recall
from amemctl.core.rows import Rows, RowwiseRows, as_rows
from amemctl.core.separation import Elementwise, threshold
from amemctl.errors import StageError


def activation_probability(n: int, radius: int) -> float:
    """P(d(a, x) <= radius) for an address a drawn uniformly from {0,1}^n and any fixed x: the Binomial(n, 1/2) cdf, exactly."""
    if n < 1 or radius < 0:
        raise StageError(f"an activation probability needs n >= 1 bits and a radius >= 0, not n = {n}, radius = {radius}")
    return sum(math.comb(n, k) for k in range(min(radius, n) + 1)) / 2**n  # integers divided once: correctly rounded


def radius_for(n: int, p: float) -> int:
    """The smallest radius r with activation_probability(n, r) >= p: each location fires for about a fraction p of addresses."""
    if not 0 < p <= 1:
        raise StageError(f"an activation probability must be in (0, 1], not {p}")
    total, need = 0, p * 2**n
    for r in range(n + 1):
        total += math.comb(n, r)
        if total >= need:
            return r
    return n


def hard_locations(count: int, n: int, generator: torch.Generator | None = None, *, device: "torch.device | str | None" = None) -> Tensor:
    """`count` hard-location addresses drawn uniformly from {0,1}^n (count x n, float32 0/1)."""
    return random.randint(0, 2, (count, n), generator, device=device).float()


def activation(radius: int) -> Elementwise:
    """The separation that activates a location: 1 where -distance >= -radius, summed, not averaged."""
    return threshold(-float(radius), normalize=False)


def bipolar(x: Tensor) -> Tensor:
    """+1 where x > 0, else -1: what a written bit adds to a counter."""
    return torch.where(x > 0, 1.0, -1.0).to(x.dtype if x.is_floating_point() else torch.float32)


def write(
    locations: Tensor,
    addresses: "Tensor | Rows",
    data: "Tensor | Rows | None" = None,
    *,
    radius: int,
    budget: int = DEFAULT_BUDGET,
) -> Tensor:
    """The counters' increments (L x data row shape) from writing `data` (default: the addresses) at `addresses`.

    Add them to a memory's counters: counters + write(...) is the memory after the writes.
    Computed as `recall` of the locations against the addresses (hamming, threshold at -radius,
    unnormalised) with the bipolar data as values, over chunks within `budget`.
    """
    keys = as_rows(addresses)
    values = as_rows(keys if data is None else data)
    if len(values) != len(keys):
        raise StageError(f"{len(keys)} addresses but {len(values)} data rows", hint="write one data row at each address")
    if len(keys) == 0:
        return locations.new_zeros(len(locations), *values.row_shape)
    signed = RowwiseRows(values, bipolar)
    return recall(locations, keys, signed, similarity="hamming", separation=activation(radius), budget=budget).output


def read(queries: Tensor, locations: Tensor, counters: Tensor, *, radius: int, budget: int = DEFAULT_BUDGET) -> Tensor:
    """One read: the counters of the locations within `radius` of each query summed and thresholded at 0, as +1/-1 (a 0 sum gives +1)."""
    sums = recall(queries, locations, counters, similarity="hamming", separation=activation(radius), budget=budget).output
    return ACTIVATIONS["sign"](sums)  # the rule iterated_read applies at every step


def iterated_read(queries: Tensor, locations: Tensor, counters: Tensor, *, radius: int, steps: int, budget: int = DEFAULT_BUDGET) -> Iteration:
    """Reads repeated, each output (+1/-1) the next address, until a read leaves a query unchanged or after `steps` reads.

    The counters must be as wide as the queries (auto-association, or a sequence written as
    x_t at the address x_(t-1), Kanerva's way of storing one).
    """
    width = math.prod(counters.shape[1:])
    if width != math.prod(queries.shape[1:]):
        raise StageError(f"iterated reading feeds each output back as an address, but the data are {width} bits wide and the addresses {math.prod(queries.shape[1:])}",
                         hint="read once (steps: 1), or write data as wide as the addresses")
    start = bipolar(queries)  # the same addresses for the hamming similarity; fixed points are then compared in one code
    return iterate(start, locations, values=counters, similarity="hamming", separation=activation(radius), activation="sign", steps=steps, tolerance=0.0, budget=budget)


def activated(queries: Tensor, locations: "Tensor | Rows", *, radius: int, budget: int = DEFAULT_BUDGET) -> Tensor:
    """How many of `locations` lie within `radius` of each query (a float vector)."""
    ones = torch.ones(len(locations), 1, device=queries.device)
    return recall(queries, locations, ones, similarity="hamming", separation=activation(radius), budget=budget).output[:, 0]
