"""Separation functions: the `separate` step of a universal Hopfield network.

A separation turns one query's similarity scores into projection weights, sharpening the
best match against the rest (Millidge et al. 2022). Each is available in two forms that
give the same answer:

- `weights(scores)`: the whole Q x N matrix at once, the plain reference;
- `reducer(...)`: a streaming state that takes the scores chunk by chunk over the stored
  memories and the matching chunk of values, so retrieval never holds Q x N scores.
  Weighted sums keep a running sum and normaliser, softmax keeps the running maximum as
  flash attention does, top-k keeps a running top-k. Separations that need a whole row
  (sparsemax, entmax) say so with `needs_full_rows`; the retrieval then bounds memory by
  taking fewer queries at a time instead, and weighs their gathered rows a few at a time
  (`row_workspace`).

Ties are broken toward the lower memory index everywhere, so results do not depend on how
the memories were chunked.
"""

from __future__ import annotations

import inspect
import math
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import Tensor

from amemctl.core.rows import Rows
from amemctl.errors import StageError, blame_function, maker_of
from amemctl.suggest import did_you_mean


class Reducer(ABC):
    """The streaming state of one separation for a block of queries: separate and project chunk by chunk.

    Retrieval makes one per block of queries (`Separation.reducer`), calls `update` once per
    chunk of stored memories, in order, then `finish` once for the projected output. So it
    never holds a queries x memories matrix of scores, which bounds its memory by the `budget`
    whatever the number of memories; the answer must not depend on where the chunks end.
    Public (`amemctl.Reducer`) so that a plugin's separation can stream: most wrap a built-in
    one's, e.g. `Softmax(beta).reducer(...)` fed transformed scores, rather than redo its
    arithmetic (docs/plugins.md shows how).
    """

    #: False when `update` ignores the values chunk (top-k, full rows read values at the end):
    #: retrieval then reads no values while streaming, and passes None.
    reads_values: bool = True

    @abstractmethod
    def update(self, scores: Tensor, offset: int, values: Tensor | None) -> None:
        """Fold in the scores of memories offset.. (rows x n) and those memories' values (n x width; None unless `reads_values`)."""

    @abstractmethod
    def finish(self, values: Rows) -> Tensor:
        """The projected output (rows x width) once every chunk has been seen."""

    def unweighted(self) -> Tensor | None:
        """Per query, whether the weights summed to 0 so its output is all zeros (after `finish`); None when it cannot be.

        A rectifier or threshold over scores that are all at or below 0 (negative distances)
        weights every memory 0, and retrieval silently returns zeros: callers say so.
        """
        return None

    def merge(self, group: object, values: Rows, start: int) -> None:
        """Combine this rank's state with every other rank's (torch.distributed), exactly.

        `values` are this rank's rows, the first of which is global row `start`. Called by all
        ranks together after each has seen its own shard of the memories.
        """
        raise StageError(f"{type(self).__name__} cannot be merged across ranks", hint="use softmax, max, top-k or an elementwise separation")


class Separation(ABC):
    """A named separation function with its parameters."""

    name: str
    #: True when the weights of a row depend on the whole row at once, not a running state.
    needs_full_rows: bool = False
    #: The score-sized temporaries per score (its result included) that `weights` holds at once
    #: for the rows it is given. With `needs_full_rows`, retrieval gives it `rows_at_once` rows
    #: at a time and plans its blocks of queries with this (`plan_blocks`); the `separate` stage
    #: run on its own weighs every separation's matrix in blocks sized by it (`weight_matrix`).
    #: A plugin's `weights` is its own: 8 is a guess; sparsemax and entmax state theirs,
    #: measured by the tests.
    row_workspace: int = 8

    @abstractmethod
    def weights(self, scores: Tensor) -> Tensor:
        """Projection weights for a Q x N score matrix (the unchunked reference)."""

    def reducer(self, rows: int, width: int, like: Tensor) -> Reducer:
        """A fresh streaming state for `rows` queries and values `width` wide.

        With `needs_full_rows` it gathers each query's full row of scores and calls `weights`
        on a few of those rows at a time (`rows_at_once`), so such a separation defines
        `weights` only. Any other defines its own (an `Elementwise` streams by itself).
        """
        if self.needs_full_rows:
            return _FullRows(self, [])
        raise _no_reducer(self)

    def check_streams(self) -> None:
        """Raise what `reducer` would (blamed on its function) when retrieval could not run this separation: neither its own reducer nor full rows.

        `separate` calls it while its parameters are checked, so `validate` refuses such a class
        rather than the run's first retrieval, after every stage before it.
        """
        if not self.needs_full_rows and type(self).reducer is Separation.reducer:
            raise _no_reducer(self)

    def describe(self) -> str:
        """A short label such as `softmax(beta=1000)`, used in tables and figures."""
        return self.name


def _no_reducer(separation: Separation) -> BaseException:
    """The TypeError for a separation class retrieval cannot run, marked as the fault of the function that made it (by its registered name)."""
    noun, name = maker_of(separation, "separation")
    error = TypeError(
        f"separation {name!r} ({type(separation).__name__}) defines no reducer(): set needs_full_rows = True to be given "
        "each query's full row of scores, or define reducer() to stream over chunks of memories"
    )
    return blame_function(error, noun, name)


def _fmt(v: object) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


# ---------------------------------------------------------------------------------------
# weighted sums: identity, polynomials, log, threshold


@dataclass
class Elementwise(Separation):
    """Weights f(score) applied to each score alone, optionally divided by their sum.

    With `normalize` (the UHN reference code's default) the output is a weighted average of
    the stored values; without it, a raw weighted sum (classical HN, DAM energies).
    `integral`, when given, is F with F' = fn: unnormalised on the dot similarity the network
    then has the energy 1/2 |z|^2 - sum F(s) (`dynamics.energy`), and with `convex` (F convex)
    synchronous updates provably never increase it. They travel with the object, not its name,
    so a plugin's function called "square" is never given the built-in square's energy.
    """

    name: str
    fn: Callable[[Tensor], Tensor] = field(repr=False)
    normalize: bool = True
    params: dict = field(default_factory=dict)
    integral: Callable[[Tensor], Tensor] | None = field(default=None, repr=False)
    convex: bool = False

    def describe(self) -> str:
        inner = ", ".join(f"{k}={_fmt(v)}" for k, v in {**self.params, "normalize": self.normalize}.items())
        return f"{self.name}({inner})"

    def weights(self, scores: Tensor) -> Tensor:
        w = self.fn(scores)
        return _normalised(w, w.sum(1, keepdim=True)) if self.normalize else w

    def reducer(self, rows: int, width: int, like: Tensor) -> Reducer:
        return _WeightedSum(self, like.new_zeros(rows, width), like.new_zeros(rows, 1))


@dataclass
class _WeightedSum(Reducer):
    sep: Elementwise
    acc: Tensor
    total: Tensor

    def update(self, scores: Tensor, offset: int, values: Tensor) -> None:
        w = self.sep.fn(scores)
        self.acc.addmm_(w, values)
        self.total += w.sum(1, keepdim=True)

    def finish(self, values: Rows) -> Tensor:
        return _normalised(self.acc, self.total) if self.sep.normalize else self.acc

    def unweighted(self) -> Tensor | None:
        return (self.total == 0).reshape(-1) if self.sep.normalize else None  # `_normalised` zeroes these rows

    def merge(self, group: object, values: Rows, start: int) -> None:
        import torch.distributed as dist

        dist.all_reduce(self.acc, group=group)
        dist.all_reduce(self.total, group=group)


def _normalised(x: Tensor, total: Tensor) -> Tensor:
    """x / total, with rows whose total is zero left at zero instead of NaN."""
    safe = torch.where(total == 0, torch.ones_like(total), total)
    return torch.where(total == 0, torch.zeros_like(x), x / safe)


def identity(normalize: bool = True) -> Elementwise:
    return Elementwise("identity", lambda s: s, normalize, integral=lambda s: s.square() / 2, convex=True)


def polynomial(n: float = 2, normalize: bool = True) -> Elementwise:
    """s^n; its energy F = s^(n+1)/(n+1) is convex for odd integer n."""
    odd = float(n).is_integer() and int(n) % 2 == 1
    return Elementwise("polynomial", lambda s: s.pow(n), normalize, {"n": n}, integral=lambda s: s.pow(n + 1) / (n + 1), convex=odd)


def square(normalize: bool = True) -> Elementwise:
    return Elementwise("square", lambda s: s.square(), normalize, integral=lambda s: s.pow(3) / 3, convex=True)


def rectified_polynomial(n: float = 2, normalize: bool = True) -> Elementwise:
    """max(s, 0)^n: the rectified polynomial energy of Krotov and Hopfield (2016)."""
    return Elementwise(
        "rectified_polynomial", lambda s: s.clamp_min(0).pow(n), normalize, {"n": n}, integral=lambda s: s.clamp_min(0).pow(n + 1) / (n + 1), convex=True
    )


def log(normalize: bool = True) -> Elementwise:
    """log(s) for positive scores (scores at or below 0 are clipped to a tiny positive value)."""
    return Elementwise("log", lambda s: s.clamp_min(torch.finfo(s.dtype).tiny).log(), normalize)


def threshold(t: float = 0.0, normalize: bool = True) -> Elementwise:
    """1 where the score reaches t, else 0: all memories inside a radius (as in SDM)."""
    return Elementwise("threshold", lambda s: (s >= t).to(s.dtype), normalize, {"t": t})


# ---------------------------------------------------------------------------------------
# softmax


@dataclass
class Softmax(Separation):
    """softmax(beta * s): the modern continuous Hopfield network's separation.

    Its reducer is an online softmax (a running maximum and normaliser, as flash attention
    keeps): exact for any chunking, and safe for a large beta, as every exponent is taken
    relative to that maximum; beta = 0 weights every memory alike. Retrieval recognises a
    `Softmax` itself (not a subclass) with beta > 0 and may take its fast routes: the blocked
    CPU kernel, the one-pass GPU kernel where it was measured faster. Public (`amemctl.Softmax`)
    for notebooks, `retrieve(q, memories, separation=Softmax(beta=1000))`, and for plugins: a
    separation whose weights are a softmax returns one from its `make` (and gets those routes);
    one that transforms the scores first reuses its `weights` and `reducer` (docs/plugins.md).
    """

    beta: float = 1.0
    name: str = field(default="softmax", init=False, repr=False)

    def describe(self) -> str:
        return f"softmax(beta={_fmt(float(self.beta))})"

    def weights(self, scores: Tensor) -> Tensor:
        return torch.softmax(self.beta * scores, dim=1)

    def reducer(self, rows: int, width: int, like: Tensor) -> Reducer:
        return _OnlineSoftmax(
            self.beta,
            like.new_full((rows, 1), -math.inf),
            like.new_zeros(rows, 1),
            like.new_zeros(rows, width),
        )


#: Floor of the softmax's exp arguments z - max: below about -87 exp returns subnormal floats,
#: about 30 times slower to make on a CPU (beta = 1000 puts most arguments there), and
#: exp(-80) < 2e-35 of the largest weight cannot change a sum of weights.
EXP_FLOOR = -80.0


@dataclass
class _OnlineSoftmax(Reducer):
    """Running maximum m, normaliser l = sum exp(z - m) and weighted sum, rescaled as m grows."""

    beta: float
    m: Tensor
    l: Tensor
    acc: Tensor

    def update(self, scores: Tensor, offset: int, values: Tensor) -> None:
        z = scores * self.beta
        m_new = torch.maximum(self.m, z.amax(1, keepdim=True))
        rescale = torch.exp(self.m - m_new)
        p = (z - m_new).clamp_min_(EXP_FLOOR).exp_()
        self.l = self.l * rescale + p.sum(1, keepdim=True)
        self.acc = torch.addmm(self.acc * rescale, p, values)
        self.m = m_new

    def finish(self, values: Rows) -> Tensor:
        return self.acc / self.l

    def merge(self, group: object, values: Rows, start: int) -> None:
        """The log-sum-exp merge: rescale every rank's sums to the global maximum, then add."""
        import torch.distributed as dist

        m = self.m.clone()
        dist.all_reduce(m, op=dist.ReduceOp.MAX, group=group)
        rescale = torch.where(torch.isfinite(self.m), torch.exp(self.m - m), torch.zeros_like(m))
        self.l, self.acc, self.m = self.l * rescale, self.acc * rescale, m
        dist.all_reduce(self.l, group=group)
        dist.all_reduce(self.acc, group=group)


# ---------------------------------------------------------------------------------------
# max and top-k


@dataclass
class TopK(Separation):
    """Keep the k best-scoring memories: their mean (`uniform`) or softmax(beta) over them.

    k = 1 is `max`, the one-hot separation: the output is exactly the best stored value.
    """

    k: int = 1
    weighting: str = "uniform"
    beta: float = 1.0
    name: str = field(default="topk", init=False, repr=False)

    def __post_init__(self) -> None:
        if self.weighting not in ("uniform", "softmax"):
            raise StageError(
                f"unknown top-k weighting {self.weighting!r}", hint="use 'uniform' or 'softmax'"
            )
        if self.k < 1:
            raise StageError(f"top-k needs k >= 1, got {self.k}")

    def describe(self) -> str:
        if self.name == "max":
            return "max"
        extra = f", beta={_fmt(float(self.beta))}" if self.weighting == "softmax" else ""
        return f"topk(k={self.k}, {self.weighting}{extra})"

    def weights(self, scores: Tensor) -> Tensor:
        vals, idx = top_k(scores, self.k)
        w = torch.zeros_like(scores)
        w.scatter_(1, idx, self._select_weights(vals))
        return w

    def _select_weights(self, vals: Tensor) -> Tensor:
        if self.weighting == "softmax":
            return torch.softmax(self.beta * vals, dim=1)
        return torch.full_like(vals, 1.0 / vals.shape[1])

    def reducer(self, rows: int, width: int, like: Tensor) -> Reducer:
        empty = like.new_empty(rows, 0)
        return _RunningTopK(self, empty, torch.empty(rows, 0, dtype=torch.long, device=like.device))


def merge_top_k(best: Tensor, index: Tensor, values: Tensor, indices: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """The k best of a running top-k (best, index) and a later chunk's (values, indices).

    The later chunk holds higher indices and comes second, so the stable sort keeps the
    earlier memory on ties: ties go to the lowest index.
    """
    merged = torch.cat([best, values], 1)
    merged_index = torch.cat([index, indices], 1)
    order = torch.sort(merged, dim=1, descending=True, stable=True).indices[:, :k]
    return merged.gather(1, order), merged_index.gather(1, order)


@dataclass
class _RunningTopK(Reducer):
    sep: TopK
    best: Tensor
    index: Tensor
    reads_values = False
    picked: Tensor | None = None  #: the chosen values, when a cross-rank merge already gathered them

    def update(self, scores: Tensor, offset: int, values: Tensor) -> None:
        vals, idx = top_k(scores, self.sep.k)
        self.best, self.index = merge_top_k(self.best, self.index, vals, idx + offset, self.sep.k)

    def finish(self, values: Rows) -> Tensor:
        picked = self.picked if self.picked is not None else values.take(self.index.reshape(-1)).reshape(*self.index.shape, -1)
        w = self.sep._select_weights(self.best)
        return torch.einsum("qk,qkw->qw", w, picked)

    def merge(self, group: object, values: Rows, start: int) -> None:
        """Gather every rank's top-k (scores, global indices, values) and keep the best k overall."""
        import torch.distributed as dist

        k, rows, have = self.sep.k, self.best.shape[0], self.best.shape[1]
        width = math.prod(values.row_shape)
        # every rank sends k candidates (padded with -inf when its shard holds fewer)
        best = self.best.new_full((rows, k), -math.inf)
        index = torch.full((rows, k), -1, dtype=torch.long, device=self.index.device)
        vals = self.best.new_zeros(rows, k, width)
        best[:, :have], index[:, :have] = self.best, self.index
        if have:
            vals[:, :have] = values.take((self.index - start).reshape(-1)).reshape(rows, have, width).to(vals.dtype)
        world = dist.get_world_size(group)
        parts = [[torch.empty_like(t) for _ in range(world)] for t in (best, index, vals)]
        for gathered, mine in zip(parts, (best, index, vals)):
            dist.all_gather(gathered, mine, group=group)
        # ranks hold increasing row ranges, so rank order is index order: a stable sort keeps ties low
        merged = torch.cat(parts[0], 1)
        order = torch.sort(merged, dim=1, descending=True, stable=True).indices[:, :k]
        self.best = merged.gather(1, order)
        self.index = torch.cat(parts[1], 1).gather(1, order)
        self.picked = torch.cat(parts[2], 1).gather(1, order[:, :, None].expand(-1, -1, width))


def top_k(scores: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """The k largest scores of each row and their columns, best first, ties to the lower column.

    torch.topk does not promise which of several equal scores it keeps; this does.
    """
    rows, n = scores.shape
    k = min(k, n)
    kth = torch.topk(scores, k, dim=1).values[:, -1:]
    above = scores > kth
    ties = scores == kth
    room = k - above.sum(1, keepdim=True)
    chosen = above | (ties & (ties.cumsum(1) <= room))
    # exactly k chosen per row: nonzero_static has a static output size, so no GPU sync (nonzero has one)
    idx = torch.nonzero_static(chosen, size=rows * k, fill_value=0)[:, 1].reshape(rows, k)
    vals = scores.gather(1, idx)
    order = torch.sort(vals, dim=1, descending=True, stable=True).indices
    return vals.gather(1, order), idx.gather(1, order)


def max_() -> TopK:
    """One-hot on the best score: top-1, under its own name."""
    best = TopK(k=1)
    best.name = "max"
    return best


# ---------------------------------------------------------------------------------------
# sparse separations: need a whole row


@dataclass
class Sparse(Separation):
    """sparsemax or 1.5-entmax of beta * s (the sparse modern Hopfield networks).

    Exact and sort-based: each row's weights depend on the whole row, so these run on full
    rows of scores, with fewer queries at a time to stay within the memory budget.
    """

    name: str = "sparsemax"
    beta: float = 1.0
    needs_full_rows = True

    @property
    def row_workspace(self) -> int:  # type: ignore[override]
        """Rows' worth of temporaries: beta * s, its sorted copy and the sort's int64 indices (two); entmax
        then holds its cumulative mean, mean square and mean * mean beside the first two (`test_devices` measures both)."""
        return 4 if self.name == "sparsemax" else 5

    def describe(self) -> str:
        return f"{self.name}(beta={_fmt(float(self.beta))})"

    def weights(self, scores: Tensor) -> Tensor:
        z = self.beta * scores  # a new tensor, which the functions below overwrite with the weights
        return _sparsemax_(z) if self.name == "sparsemax" else _entmax15_(z)


def sparsemax(beta: float = 1.0) -> Sparse:
    return Sparse("sparsemax", beta)


def entmax15(beta: float = 1.0) -> Sparse:
    return Sparse("entmax15", beta)


@dataclass
class _FullRows(Reducer):
    """Each query's full row of scores, gathered chunk by chunk and weighed at the end (`Separation.weights`).

    The gathered rows become the weights in place, `rows_at_once` rows at a time, so the
    separation's temporaries (sorted copies, cumulative sums) never exceed those rows
    themselves: what `plan_blocks` counts.
    """

    sep: Separation
    parts: list
    reads_values = False

    def update(self, scores: Tensor, offset: int, values: Tensor) -> None:
        self.parts.append(scores)

    def finish(self, values: Rows) -> Tensor:
        w = torch.cat(self.parts, 1)  # a copy: the parts may be a similarity's own tensors
        self.parts.clear()
        step = rows_at_once(w.shape[0], self.sep.row_workspace)
        for start in range(0, w.shape[0], step):
            rows = w[start : start + step]
            rows.copy_(self.sep.weights(rows))
        out = None
        for offset, chunk in values.chunks(max(1, 1 << 16)):
            part = w[:, offset : offset + chunk.shape[0]] @ chunk.to(w.dtype)
            out = part if out is None else out + part
        return out


def rows_at_once(rows: int, workspace: int) -> int:
    """How many of `rows` gathered rows a full-row separation weighs at once, given its `row_workspace`.

    Its temporaries then take no more than the gathered rows themselves, or one row's
    `workspace` when fewer rows than that were gathered.
    """
    return max(1, rows // max(1, workspace))


def _sparsemax_(z: Tensor) -> Tensor:
    """Euclidean projection of each row onto the simplex (Martins & Astudillo 2016), written into z.

    In place where the plain formula made a temporary (same numbers): at most z, its sorted
    copy and the sort's indices at once (`row_workspace`).
    """
    zs = torch.sort(z, dim=1, descending=True).values  # the indices are dropped at once
    cs = zs.cumsum(1).sub_(1)
    rho = torch.arange(1, z.shape[1] + 1, device=z.device, dtype=z.dtype)
    support = (zs.mul_(rho) > cs).sum(1, keepdim=True)  # zs * rho > cs
    tau = cs.gather(1, support - 1) / support.to(z.dtype)
    return z.sub_(tau).clamp_min_(0)


def _entmax15_(z: Tensor) -> Tensor:
    """1.5-entmax of each row, exact by sorting (Peters, Niculae & Martins 2019), written into z.

    In place where the plain formula made a temporary (same numbers): at most five rows' worth
    at once (`row_workspace`).
    """
    z.sub_(z.amax(1, keepdim=True)).div_(2)
    zs = torch.sort(z, dim=1, descending=True).values
    rho = torch.arange(1, z.shape[1] + 1, device=z.device, dtype=z.dtype)
    mean = zs.cumsum(1).div_(rho)
    mean_sq = (zs * zs).cumsum_(1).div_(rho)
    # delta = ((1 - rho * (mean_sq - mean * mean)) / rho).clamp_min(0), into mean_sq
    delta = mean_sq.sub_(mean * mean).mul_(rho).neg_().add_(1).div_(rho).clamp_min_(0)
    tau = mean.sub_(delta.sqrt_())  # mean - sqrt(delta)
    support = (tau <= zs).sum(1, keepdim=True)
    tau_star = tau.gather(1, support - 1)
    return z.sub_(tau_star).clamp_min_(0).square_()


# ---------------------------------------------------------------------------------------
# by name


#: The built-in separations by name. A factory's keyword parameters, with their defaults, are
#: the parameters a user may give it: the one declaration `make_separation` checks against and
#: the `separate` stage describes (amemctl.stages.retrieval registers each as a Function).
SEPARATIONS: dict[str, Callable[..., Separation]] = {
    "identity": identity,
    "square": square,
    "polynomial": polynomial,
    "rectified_polynomial": rectified_polynomial,
    "log": log,
    "threshold": threshold,
    "softmax": Softmax,
    "max": max_,
    "topk": TopK,
    "sparsemax": sparsemax,
    "entmax15": entmax15,
}


def parameters(name: str) -> dict[str, object]:
    """The parameters of the built-in separation `name` and their defaults, in order."""
    return {p.name: p.default for p in inspect.signature(SEPARATIONS[name]).parameters.values()}


def make_separation(name: str, **params: object) -> Separation:
    """The separation called `name` with the given parameters; unknown ones are an error."""
    if name not in SEPARATIONS:
        raise StageError(
            f"unknown separation {name!r}",
            hint=did_you_mean(name, SEPARATIONS) or f"choose one of {', '.join(SEPARATIONS)}",
        )
    allowed = parameters(name)
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        accepted = ", ".join(allowed) if allowed else "no parameters"
        raise StageError(
            f"separation {name!r} takes no parameter {unknown[0]!r}",
            hint=f"{name} accepts {accepted}",
        )
    return SEPARATIONS[name](**params)
