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

from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

from amemctl.errors import StageError
from amemctl.suggest import did_you_mean

#: Added before logarithms and to denominators so that zeros stay finite.
EPS = 1e-6

#: A similarity kernel: (queries Q x d, keys n x d) -> Q x n.
Kernel = Callable[[Tensor, Tensor], Tensor]


@dataclass(frozen=True)
class Similarity:
    """A named similarity: its kernel and how it should be run.

    `distance` marks kernels that return a distance (lower is closer) which `to_score`
    turns into a score. `workspace` is the number of temporary elements the kernel needs
    per (query, key) pair beyond its output, per feature when `per_feature` is set; the
    chunked retrieval uses it to keep memory within its budget.
    """

    name: str
    kernel: Kernel
    distance: bool = False
    per_feature_workspace: bool = False
    doc: str = ""
    #: the kernel takes keys in their own (lower) precision next to float32 queries
    mixed_precision: bool = False

    def workspace(self, dim: int) -> int:
        return dim if self.per_feature_workspace else 1

    def __call__(self, queries: Tensor, keys: Tensor, form: str = "negative") -> Tensor:
        raw = self.kernel(queries, keys)
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


def cosine(queries: Tensor, keys: Tensor) -> Tensor:
    """Cosine of the angle between q and k; zero vectors score 0."""
    return _unit(queries) @ _unit(keys).T


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


def kl(queries: Tensor, keys: Tensor) -> Tensor:
    """KL(k || q): the divergence of the stored pattern from the query, as in the UHN code.

    Patterns are read as distributions: negatives clipped to 0, eps added, rows summed to 1.
    """
    p, logp = _distribution(keys)
    _, logq = _distribution(queries)
    return (p * logp).sum(1) - logq @ p.T


def reverse_kl(queries: Tensor, keys: Tensor) -> Tensor:
    """KL(q || k): the divergence of the query from the stored pattern."""
    q, logq = _distribution(queries)
    _, logp = _distribution(keys)
    return (q * logq).sum(1, keepdim=True) - q @ logp.T


def jensen_shannon(queries: Tensor, keys: Tensor) -> Tensor:
    """Jensen-Shannon divergence, symmetric and bounded by log 2."""
    q, logq = _distribution(queries)
    p, logp = _distribution(keys)
    own = 0.5 * ((q * logq).sum(1, keepdim=True) + (p * logp).sum(1))
    mix = 0.5 * (q[:, None, :] + p[None, :, :])
    return own - (mix * mix.log()).sum(-1)


def hamming(queries: Tensor, keys: Tensor) -> Tensor:
    """Number of differing bits, reading entries > 0 as 1: binary {0,1} and bipolar {-1,1} alike."""
    q = (queries > 0).to(queries.dtype)
    k = (keys > 0).to(keys.dtype)
    return q.sum(1, keepdim=True) + k.sum(1) - 2 * (q @ k.T)


def _unit(x: Tensor) -> Tensor:
    return x / x.norm(dim=1, keepdim=True).clamp_min(EPS)


def _distribution(x: Tensor) -> tuple[Tensor, Tensor]:
    p = x.clamp_min(0) + EPS
    p = p / p.sum(1, keepdim=True)
    return p, p.log()


SIMILARITIES: dict[str, Similarity] = {
    s.name: s
    for s in (
        Similarity("dot", dot, doc="dot product q.k"),
        Similarity("cosine", cosine, doc="cosine of the angle between q and k"),
        Similarity("euclidean", euclidean, distance=True, doc="L2 distance ||q-k||"),
        Similarity("squared_euclidean", squared_euclidean, distance=True, doc="squared L2 distance"),
        Similarity("manhattan", manhattan, distance=True, doc="L1 distance sum |q-k|", mixed_precision=True),
        Similarity("kl", kl, distance=True, doc="KL(k||q), patterns read as distributions"),
        Similarity("reverse_kl", reverse_kl, distance=True, doc="KL(q||k)"),
        Similarity(
            "jensen_shannon",
            jensen_shannon,
            distance=True,
            per_feature_workspace=True,
            doc="Jensen-Shannon divergence",
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
