"""Iterative retrieval and its energy: the output fed back as the next query.

Millidge et al. (2022) write the universal Hopfield update z <- M^T sep(sim(M, z)) as the
fixed-point iteration of an energy. With the dot similarity and a separation sep = F' whose
integral F is convex, the energy

    E(z) = 1/2 ||z||^2 - sum_i F(m_i . z)        (softmax: F-sum = (1/beta) logsumexp(beta M z))

never increases from one step to the next (the update is the concave-convex procedure). For
other pairs the energy is still reported when it can be written, flagged as not guaranteed.
For bipolar states, `flip_update` is the original models' update instead: each neuron takes
the sign for which E(s) = -sum_mu F(m_mu . s) is lower (Krotov & Hopfield 2016, eq. 3). With
F(x) = x^2 / 2 (the identity) that is the classical Hopfield network (Hopfield 1982), whose
E(s) = -1/2 s^T W s, W = M^T M with a zero diagonal, never increases under asynchronous (one
neuron at a time) updates; the same holds for every F.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import Tensor

from amemctl.core import random
from amemctl.core.retrieval import DEFAULT_BUDGET, recall
from amemctl.core.rows import Rows, materialize, row_shape
from amemctl.core.separation import Elementwise, Separation, Softmax, make_separation
from amemctl.core.similarity import Similarity, get_similarity
from amemctl.errors import StageError

#: Output activations applied after projection: the classical networks' neuron nonlinearities.
ACTIVATIONS = {
    "none": lambda x: x,
    "sign": lambda x: torch.where(x >= 0, 1.0, -1.0).to(x.dtype),
    "binary": lambda x: (x > 0.5).to(x.dtype),
    "clip": lambda x: x.clamp(0, 1),
}


@dataclass
class Iteration:
    """Where iterating left each query, how many steps it took, and the energy along the way."""

    state: Tensor
    steps: Tensor  #: per query, the step at which it stopped changing (or the step budget)
    converged: Tensor  #: per query, whether it stopped changing within tolerance
    energies: list[Tensor] = field(default_factory=list)  #: one Q-vector per step, the start first
    guaranteed: bool = False  #: whether theory says the energy never increases for this model

    def increases(self, slack: float = 1e-5) -> int:
        """How many (query, step) pairs raised the energy by more than `slack` (relative)."""
        count = 0
        for before, after in zip(self.energies, self.energies[1:]):
            count += int((after > before + slack * (1 + before.abs())).sum())
        return count


def energy_defined(similarity: Similarity, separation: Separation, activation: str = "none") -> bool:
    """Whether `energy` can be written for this model (dot similarity, softmax or a known elementwise F)."""
    if similarity.name != "dot":
        return False
    if isinstance(separation, Softmax):
        return True
    return has_integral(separation)


def has_integral(separation: Separation) -> bool:
    """Whether F with F' = the separation is known: an unnormalised elementwise one that carries its `integral`."""
    return isinstance(separation, Elementwise) and separation.integral is not None and not separation.normalize


def energy_guaranteed(similarity: Similarity, separation: Separation, activation: str) -> bool:
    """Whether the energy provably never increases under synchronous updates (softmax, or a convex F)."""
    if not energy_defined(similarity, separation) or activation != "none":
        return False
    return isinstance(separation, Softmax) or bool(getattr(separation, "convex", False))


def energy(state: Tensor, keys: "Tensor | Rows", separation: Separation, chunk: int = 4096) -> Tensor:
    """E(z) for each row of `state` against the stored keys (dot similarity), streamed over the keys."""
    z = _floating(state.reshape(len(state), -1))
    flat_keys = materialize(keys).reshape(len(keys), -1).to(z)
    quadratic = 0.5 * (z * z).sum(1)
    if isinstance(separation, Softmax):
        beta = separation.beta
        parts = [torch.logsumexp(beta * (z @ flat_keys[s : s + chunk].T), dim=1) for s in range(0, len(flat_keys), chunk)]
        return quadratic - torch.logsumexp(torch.stack(parts, 1), dim=1) / beta
    integral = separation.integral
    total = z.new_zeros(len(z))
    for s in range(0, len(flat_keys), chunk):
        total += integral(z @ flat_keys[s : s + chunk].T).sum(1)
    return quadratic - total


def iterate(
    queries: Tensor,
    keys: "Tensor | Rows",
    *,
    similarity: "str | Similarity" = "dot",
    separation: Separation,
    activation: str = "none",
    steps: int = 1,
    tolerance: float | None = None,
    track_energy: bool = False,
    budget: int = DEFAULT_BUDGET,
    values: "Tensor | Rows | None" = None,
) -> Iteration:
    """Auto-associative retrieval repeated: each output (after the activation) is the next query.

    Stops for a query once its state moves less than `tolerance` (max absolute change), or
    after `steps` updates. The state keeps the queries' floating dtype (float64 stays float64);
    integer queries are iterated in float32. `values` are what is projected, the keys
    themselves by default; other values (a sparse distributed memory's counters) must be as
    wide as a query, which each output becomes. The energy is the keys' own, so it is only
    tracked without them.
    """
    sim = similarity if isinstance(similarity, Similarity) else get_similarity(similarity)
    act = _activation(activation)
    state = _floating(queries)
    shape = state.shape
    if values is not None and math.prod(row_shape(values)) != math.prod(shape[1:]):
        raise StageError(f"iterated retrieval feeds each output back as the next query, but the values are {math.prod(row_shape(values))} wide and the queries {math.prod(shape[1:])}",
                         hint="project onto values shaped like the queries, or retrieve once")
    taken = torch.full((len(state),), steps, dtype=torch.long, device=state.device)
    converged = torch.zeros(len(state), dtype=torch.bool, device=state.device)
    with_energy = track_energy and values is None and energy_defined(sim, separation)
    resident = materialize(keys) if with_energy else None  # read once, not at every step
    energies = [energy(state, resident, separation)] if with_energy else []
    for step in range(1, steps + 1):
        nxt = act(recall(state, keys, values, similarity=sim, separation=separation, budget=budget).output.reshape(shape))
        moved = (nxt - state).reshape(len(state), -1).abs().amax(1)
        state = torch.where(converged.reshape(-1, *[1] * (state.dim() - 1)), state, nxt)
        if with_energy:
            energies.append(energy(state, resident, separation))
        if tolerance is not None:
            newly = ~converged & (moved <= tolerance)
            taken = torch.where(newly, step, taken)  # a boolean-mask assignment would sync the GPU
            converged |= newly
            if bool(converged.all()):
                break
    return Iteration(state, taken, converged, energies, with_energy and energy_guaranteed(sim, separation, activation))


def flip_field(state: Tensor, patterns: Tensor, separation: Elementwise, budget: int = 2**24) -> Tensor:
    """Per neuron i, E(s with s_i = -1) - E(s with s_i = +1), for E(s) = -sum_mu F(m_mu . s).

    F is the separation's integral (F' = separation), so with the polynomial x^(n-1) this is
    Krotov & Hopfield's (2016, eq. 3) sum_mu F(m_mu,i + a_mu,i) - F(-m_mu,i + a_mu,i), a_mu,i
    the overlap without neuron i; with the identity it is twice the classical network's field
    sum_{j != i} W_ij s_j, W = M^T M with a zero diagonal. Positive: s_i = +1 has the lower
    energy. Computed in float64 (x^20 of overlaps in the hundreds overflows float32), over
    chunks of memories so that Q x chunk x D stays within `budget` elements.
    """
    integral = separation.integral
    s = state.reshape(len(state), -1).double()
    m = patterns.reshape(len(patterns), -1).to(s)
    field = s.new_zeros(s.shape)
    chunk = max(1, budget // max(1, s.numel()))
    for start in range(0, len(m), chunk):
        mc = m[start : start + chunk]
        rest = (s @ mc.T)[:, :, None] - mc[None] * s[:, None, :]  # Q x n x D: each overlap without neuron i
        field += (integral(rest + mc[None]) - integral(rest - mc[None])).sum(1)
    return field


def flip_update(
    queries: Tensor,
    patterns: "Tensor | Rows",
    separation: Separation,
    *,
    steps: int = 1,
    update: str = "synchronous",
    generator: torch.Generator | None = None,
    track_energy: bool = False,
    budget: int = DEFAULT_BUDGET,
) -> Iteration:
    """Bipolar neurons set to whichever sign gives the lower energy E(s) = -sum_mu F(m_mu . s).

    Krotov & Hopfield (2016) eq. 3 with F the separation's integral (polynomial x^(n-1): their
    F(x) = x^n up to a factor 1/n; rectified likewise); the identity gives the classical
    Hopfield network (Hopfield 1982: W = M^T M, zero diagonal). A neuron whose two energies tie
    keeps its state. `synchronous` updates every neuron from the same state (one step);
    `asynchronous` visits the neurons one at a time in a random order per sweep, each seeing the
    others' new states, which never raises the energy. A query stops once a step or sweep
    leaves it unchanged (a fixed point), else after `steps`. Queries are taken in blocks whose
    overlaps with the memories (Q x N, float64) stay within `budget` bytes.
    """
    if update not in ("synchronous", "asynchronous"):
        raise StageError(f"unknown update {update!r}", hint="use synchronous or asynchronous")
    if not has_integral(separation):
        raise StageError(f"energy-flip updates need a separation with a known integral, unnormalised; not {separation.describe()}",
                         hint="use identity, square, polynomial or rectified_polynomial with normalize: false, or give an Elementwise its integral=")
    m = materialize(patterns).reshape(len(patterns), -1).double()
    if not torch.all((m == 1) | (m == -1)):
        raise StageError("energy-flip updates (classical Hopfield network, dense associative memory) store bipolar patterns (+1/-1)",
                         hint="add a `binarize` stage (bipolar: true) before storing")
    shape = queries.shape
    s = torch.where(queries.reshape(len(queries), -1) >= 0, 1.0, -1.0).double()
    m = m.to(s.device)  # on the queries' device, as every retrieval answers: the asynchronous sweep multiplies the two
    energies = [energy(s, m, separation)] if track_energy else []
    taken = torch.full((len(s),), steps, dtype=torch.long, device=s.device)
    converged = torch.zeros(len(s), dtype=torch.bool, device=s.device)
    for step in range(1, steps + 1):
        before = s.clone()
        if update == "synchronous":
            field = flip_field(s, m, separation, budget // (8 * 4))  # float64 elements: the overlaps and their temporaries
            s = torch.where(field > 0, 1.0, torch.where(field < 0, -1.0, s))
        else:
            order = random.randperm(s.shape[1], generator).tolist()
            block = max(1, budget // (8 * 4 * len(m)))  # the overlaps and three temporaries of their size
            for start in range(0, len(s), block):  # each query's neurons flip on their own: a view is updated in place
                _sweep(s[start : start + block], m, separation.integral, order)
        s = torch.where(converged[:, None], before, s)
        if track_energy:
            energies.append(energy(s, m, separation))
        newly = ~converged & (s == before).all(1)
        taken = torch.where(newly, step, taken)
        converged |= newly
        if bool(converged.all()):
            break
    out = s.reshape(shape).to(queries.dtype if queries.is_floating_point() else torch.float32)
    return Iteration(out, taken, converged, energies, guaranteed=track_energy and update == "asynchronous")


def _sweep(s: Tensor, m: Tensor, integral: Callable[[Tensor], Tensor], order: list[int]) -> None:
    """One asynchronous sweep in place: each neuron in `order` takes the sign of lower energy."""
    overlaps = s @ m.T  # Q x N, kept current as neurons flip
    for i in order:
        mi = m[:, i]
        rest = overlaps - s[:, i : i + 1] * mi
        field = (integral(rest + mi) - integral(rest - mi)).sum(1)
        new = torch.where(field > 0, 1.0, torch.where(field < 0, -1.0, s[:, i]))
        overlaps += (new - s[:, i])[:, None] * mi
        s[:, i] = new


def hopfield_asynchronous(queries: Tensor, patterns: "Tensor | Rows", steps: int, generator: torch.Generator | None = None, track_energy: bool = False) -> Iteration:
    """The classical Hopfield network with neuron-by-neuron sign updates (W = M^T M, zero diagonal).

    Each sweep visits every neuron once in a random order; a state that a whole sweep leaves
    unchanged is a fixed point, and the query stops there. `flip_update` with the identity.
    """
    return flip_update(queries, patterns, make_separation("identity", normalize=False), steps=steps, update="asynchronous", generator=generator, track_energy=track_energy)


def _floating(x: Tensor) -> Tensor:
    """x itself when it is floating point, else as float32."""
    return x if x.is_floating_point() else x.float()


def _activation(name: str):
    if name not in ACTIVATIONS:
        raise StageError(f"unknown activation {name!r}", hint=f"use one of {', '.join(ACTIVATIONS)}")
    return ACTIVATIONS[name]

