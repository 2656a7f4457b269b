"""Similarity functions: the `score` step of a universal Hopfield network.

Each function takes queries (Q x d) and stored keys (n x d) and returns a Q x n matrix in
which higher means more similar (Millidge et al. 2022, "Universal Hopfield Networks").
Distances (euclidean, manhattan, the divergences, hamming) are turned into scores either by
negation (`-d`, the default here) or by inversion (`1 / d`, what the UHN reference code
does); `to_score` does that turn so every distance shares it.

The functions are plain torch and hold no state, so they work on any device and on any
slice of the stored keys: the chunked retrieval calls them once per chunk.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import partial
from typing import Any, Callable

import torch
from torch import Tensor

from amemctl.errors import StageError, blame_function, blaming
from amemctl.suggest import did_you_mean

#: Added before logarithms and to denominators so that zeros stay finite.
EPS = 1e-6

#: A similarity kernel: (queries Q x d, keys n x d) -> Q x n.
Kernel = Callable[[Tensor, Tensor], Tensor]


@dataclass(frozen=True)
class Similarity:
    """A named similarity: its kernel and how it should be run.

    `distance` marks kernels that return a distance (lower is closer) which `to_score`
    turns into a score. `per_feature_workspace` marks kernels that form a Q x n x d
    temporary (one element per feature of each (query, key) pair, `workspace(d)`); the
    chunked retrieval sizes its chunks for it to keep memory within its budget.
    """

    name: str
    kernel: Kernel
    distance: bool = False
    per_feature_workspace: bool = False
    doc: str = ""
    #: the kernel takes keys in their own (lower) precision next to float32 queries
    mixed_precision: bool = False
    #: keyword options the kernel accepts (`with_options`), e.g. the divergences' smoothing
    options: tuple[str, ...] = ()

    def with_options(self, **options: Any) -> "Similarity":
        """This similarity with some of its kernel's keyword options fixed (unset ones ignored)."""
        given = {k: v for k, v in options.items() if v is not None}
        unknown = [k for k in given if k not in self.options]
        if unknown:
            accepted = ", ".join(self.options) or "no options"
            raise StageError(f"similarity {self.name!r} takes no option {unknown[0]!r}", hint=f"{self.name} accepts {accepted}")
        return replace(self, kernel=partial(self.kernel, **given)) if given else self

    def workspace(self, dim: int) -> int:
        return dim if self.per_feature_workspace else 1

    def __call__(self, queries: Tensor, keys: Tensor, form: str = "negative") -> Tensor:
        with blaming("similarity", self.name):  # a bug in the kernel is this similarity's, placed at the stage that chose it
            raw = self.kernel(queries, keys)
        if tuple(raw.shape) != (len(queries), len(keys)):  # a kernel's bug, caught before it reads as a broadcast error later
            error = ValueError(f"similarity {self.name!r} returned scores of shape {tuple(raw.shape)} for {len(queries)} queries and {len(keys)} keys; a kernel maps (queries Q x d, keys n x d) to Q x n")
            raise blame_function(error, "similarity", self.name)
        return to_score(raw, form) if self.distance else raw


def to_score(distance: Tensor, form: str = "negative") -> Tensor:
    """Turn a distance into a score: `-d` ("negative") or `1 / (d + eps)` ("inverse")."""
    if form == "negative":
        return distance.neg_()
    if form == "inverse":
        return (distance + EPS).reciprocal_()
    raise StageError(f"unknown distance form {form!r}", hint="use 'negative' or 'inverse'")


def dot(queries: Tensor, keys: Tensor) -> Tensor:
    """Dot product q . k (the classical and modern continuous Hopfield networks)."""
    return queries @ keys.T


def normalized_dot(queries: Tensor, keys: Tensor) -> Tensor:
    """(q / sum q) . (k / sum k): the UHN code's "dot product" (`normalized_dot_product`).

    Each pattern is divided by the sum of its entries first, so bright images (many ink
    pixels) no longer win every query as they do under the raw dot product. A pattern that
    sums to 0 is left as it is.
    """
    return _sum_one(queries) @ _sum_one(keys).T


def cosine(queries: Tensor, keys: Tensor) -> Tensor:
    """Cosine of the angle between q and k; zero vectors score 0."""
    return unit(queries) @ unit(keys).T


def squared_euclidean(queries: Tensor, keys: Tensor) -> Tensor:
    """||q - k||^2, through one matrix product (clamped at 0 against rounding)."""
    sq = (queries * queries).sum(1, keepdim=True) + (keys * keys).sum(1) - 2 * (queries @ keys.T)
    return sq.clamp_min_(0)


def euclidean(queries: Tensor, keys: Tensor) -> Tensor:
    """||q - k||_2."""
    return torch.cdist(queries, keys, p=2)


def manhattan(queries: Tensor, keys: Tensor) -> Tensor:
    """||q - k||_1, the similarity both UHN papers find most robust (a Triton kernel on GPUs)."""
    from amemctl.core.kernels import l1

    if l1.available(queries) and torch.float64 not in (queries.dtype, keys.dtype):  # the kernel sums in float32
        return l1.l1_distances(queries, keys)
    return torch.cdist(queries.float(), keys.float(), p=1) if keys.dtype != queries.dtype else torch.cdist(queries, keys, p=1)


def kl(queries: Tensor, keys: Tensor, eps: float = EPS, smoothing: str = "renormalize") -> Tensor:
    """KL(k || q): the divergence of the stored pattern from the query, as in the UHN code.

    Patterns are read as distributions (negatives clipped to 0, rows summed to 1); `eps` and
    `smoothing` say how zeros stay finite (see `_distribution`).
    """
    p, logp = _distribution(keys, eps, smoothing)
    _, logq = _distribution(queries, eps, smoothing)
    return (p * logp).sum(1) - logq @ p.T


def reverse_kl(queries: Tensor, keys: Tensor, eps: float = EPS, smoothing: str = "renormalize") -> Tensor:
    """KL(q || k): the divergence of the query from the stored pattern."""
    q, logq = _distribution(queries, eps, smoothing)
    _, logp = _distribution(keys, eps, smoothing)
    return (q * logq).sum(1, keepdim=True) - q @ logp.T


def jensen_shannon(queries: Tensor, keys: Tensor, eps: float = EPS, smoothing: str = "renormalize") -> Tensor:
    """Jensen-Shannon divergence: KL of each side from their mixture m = (p + q) / 2, averaged.

    The true divergence, symmetric and bounded by log 2. (The UHN paper's code instead takes
    the reciprocal of the mean of two already inverted KL scores, with no mixture, which
    ranks the least similar memory first; amemctl does not copy that.)
    """
    q, logq = _distribution(queries, eps, smoothing)
    p, logp = _distribution(keys, eps, smoothing)
    own = 0.5 * ((q * logq).sum(1, keepdim=True) + (p * logp).sum(1))
    if q.device.type != "cpu":
        # a few large kernels suit an accelerator: blocks of half the pairs, so that the mixture and
        # its logarithm together hold one element per feature and pair, the workspace retrieval
        # plans each chunk for (one broadcast block of every pair, and its logarithm, took twice that)
        return own - _mix_entropy_blocked(q, p, eps, smoothing, max(1, q.shape[0] * p.shape[0] * q.shape[1] // 2))
    return own - _mix_entropy_blocked(q, p, eps, smoothing)


#: Elements of one CPU block of the Jensen-Shannon mixture (1 MiB of float32: an L2 cache's share).
_CPU_BLOCK_ELEMENTS = 2**18


def _mix_entropy(mix: Tensor, work: Tensor, eps: float, smoothing: str) -> Tensor:
    """sum_i m_i log m_i (log(m_i + eps) with smoothing "log") per pair, from mix = q + p (halved here, in place)."""
    mix.mul_(0.5)
    if smoothing == "log":
        torch.add(mix, eps, out=work)
    else:
        work.copy_(mix)
    return work.log_().mul_(mix).sum(-1)


def _mix_entropy_blocked(q: Tensor, p: Tensor, eps: float, smoothing: str, block_elements: int = _CPU_BLOCK_ELEMENTS) -> Tensor:
    """`_mix_entropy` of every (query, key) pair, a block of about `block_elements` at a time, into two reused buffers.

    On CPUs the whole Q x n x d mixture is memory-bound (and every call faults in fresh
    pages): blocks that stay in cache (the default size) are 5-10x faster on one thread, with
    the very same element-wise operations and per-pair sums, so the result is equal bit for bit.
    """
    d = max(1, q.shape[1])
    keys_per_block = max(1, min(p.shape[0], block_elements // d))
    queries_per_block = max(1, min(q.shape[0], block_elements // (keys_per_block * d)))
    out = q.new_empty(q.shape[0], p.shape[0])
    mix_buffer = q.new_empty(queries_per_block, keys_per_block, q.shape[1])
    work_buffer = torch.empty_like(mix_buffer)
    for i in range(0, q.shape[0], queries_per_block):
        qs = q[i : i + queries_per_block, None, :]
        for j in range(0, p.shape[0], keys_per_block):
            ps = p[None, j : j + keys_per_block, :]
            mix = mix_buffer[: qs.shape[0], : ps.shape[1]]
            torch.add(qs, ps, out=mix)
            out[i : i + qs.shape[0], j : j + ps.shape[1]] = _mix_entropy(mix, work_buffer[: qs.shape[0], : ps.shape[1]], eps, smoothing)
    return out


def hamming(queries: Tensor, keys: Tensor) -> Tensor:
    """Number of differing bits, reading entries > 0 as 1: binary {0,1} and bipolar {-1,1} alike."""
    q = (queries > 0).to(queries.dtype)
    k = (keys > 0).to(keys.dtype)
    return q.sum(1, keepdim=True) + k.sum(1) - 2 * (q @ k.T)


def unit(x: Tensor) -> Tensor:
    """x / |x| along the last axis (rows of a matrix); zero rows stay zero."""
    return x / x.norm(dim=-1, keepdim=True).clamp_min(EPS)


def _sum_one(x: Tensor) -> Tensor:
    total = x.sum(1, keepdim=True)
    return x / torch.where(total == 0, torch.ones_like(total), total)


#: How the divergences keep zeros finite: "renormalize" adds eps to every entry and sums the
#: row to 1 again (amemctl's default); "log" sums the row to 1 and adds eps inside the
#: logarithms only, log(p + eps), as the UHN paper's code does (there with eps = 1e-4).
SMOOTHINGS = ("renormalize", "log")


def _distribution(x: Tensor, eps: float = EPS, smoothing: str = "renormalize") -> tuple[Tensor, Tensor]:
    """The rows of x as distributions (negatives clipped to 0) and the logarithms the divergences use."""
    if smoothing == "renormalize":
        p = x.clamp_min(0) + eps
        p = p / p.sum(1, keepdim=True)
        return p, p.log()
    if smoothing == "log":
        p = _sum_one(x.clamp_min(0))
        return p, (p + eps).log()
    raise StageError(f"unknown smoothing {smoothing!r}", hint=f"use one of {', '.join(SMOOTHINGS)}")


_DIVERGENCE_OPTIONS = ("eps", "smoothing")

SIMILARITIES: dict[str, Similarity] = {
    s.name: s
    for s in (
        Similarity("dot", dot, doc="dot product q.k"),
        Similarity("normalized_dot", normalized_dot, doc="dot product of patterns each divided by its sum (the UHN code's)"),
        Similarity("cosine", cosine, doc="cosine of the angle between q and k"),
        Similarity("euclidean", euclidean, distance=True, doc="L2 distance ||q-k||"),
        Similarity("squared_euclidean", squared_euclidean, distance=True, doc="squared L2 distance"),
        Similarity("manhattan", manhattan, distance=True, doc="L1 distance sum |q-k|", mixed_precision=True),
        Similarity("kl", kl, distance=True, doc="KL(k||q), patterns read as distributions", options=_DIVERGENCE_OPTIONS),
        Similarity("reverse_kl", reverse_kl, distance=True, doc="KL(q||k)", options=_DIVERGENCE_OPTIONS),
        Similarity(
            "jensen_shannon",
            jensen_shannon,
            distance=True,
            per_feature_workspace=True,
            doc="Jensen-Shannon divergence",
            options=_DIVERGENCE_OPTIONS,
        ),
        Similarity("hamming", hamming, distance=True, doc="differing bits (entries > 0 read as 1)"),
    )
}

#: Other names the literature uses for the same functions.
ALIASES: dict[str, str] = {
    "l2": "euclidean",
    "l1": "manhattan",
    "sql2": "squared_euclidean",
    "js": "jensen_shannon",
    "reverse-kl": "reverse_kl",
    "squared-euclidean": "squared_euclidean",
    "jensen-shannon": "jensen_shannon",
    "normalized-dot": "normalized_dot",
    "normalised_dot": "normalized_dot",
}


def get_similarity(name: str, extra: dict[str, Similarity] | None = None) -> Similarity:
    """The similarity called `name` (aliases such as L1 and L2 accepted)."""
    table = {**SIMILARITIES, **(extra or {})}
    key = ALIASES.get(name.lower(), name.lower())
    if key in table:
        return table[key]
    raise StageError(
        f"unknown similarity {name!r}",
        hint=did_you_mean(name, [*table, *ALIASES]) or f"choose one of {', '.join(table)}",
    )
