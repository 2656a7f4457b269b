"""Retrieval as `import amemctl` offers it: similarities and separations named as a pipeline names them.

`amemctl.core.retrieval` is the math and knows nothing of plugins: it takes objects (and the
built-in names). Here a name, or a similarity or separation written as the YAML writes it
(`{"similarity": "minkowski", "p": 3}`, `{"function": "topk", "k": 5}`), is looked up in the plugin registry, built-ins and
installed plugins alike, and its parameters are checked against their declarations, through
the same `lookup` and `Function` calls as the `score` and `separate` stages; then core runs.
"""

from __future__ import annotations

from typing import Any, Mapping

from torch import Tensor

from amemctl.core import modules
from amemctl.core import retrieval as core
from amemctl.core.retrieval import DEFAULT_BUDGET, Recall, Shard
from amemctl.core.rows import Rows
from amemctl.core.separation import Separation
from amemctl.core.similarity import Similarity
from amemctl.functions import similarity_made
from amemctl.plugins import Registry, get_registry, lookup
from amemctl.stage import ParamError


def similarity_of(similarity: "str | Mapping[str, Any] | Similarity", registry: Registry | None = None) -> Similarity:
    """A `Similarity` as given, or the one registered under a name (aliases such as L1 too) or
    `{"similarity": name, **params}`, as a pipeline's `score:` writes it.

    A similarity with parameters of its own (a `SimilarityFunction`) is made with them, checked
    against their declarations; a divergence takes `eps` and `smoothing`.
    """
    if isinstance(similarity, Similarity):
        return similarity
    name, params = _named(similarity, "similarity", "similarity", "score", {"similarity": "manhattan"}, 'e.g. similarity="manhattan"')
    return similarity_made(lookup(registry or get_registry(), "similarities", name), params)


def separation_of(separation: "str | Mapping[str, Any] | Separation", registry: Registry | None = None) -> Separation:
    """A `Separation` as given, or made by the registered function a name or `{"function": name, **params}` names.

    The parameters are checked as a pipeline's `separate:` checks them: a value out of range
    or an unknown parameter is a ParamError naming it, with the range or a did-you-mean.
    """
    if isinstance(separation, Separation):
        return separation
    name, params = _named(
        separation, "separation", "function", "separate", {"function": "softmax"},
        'e.g. separation="max", separation={"function": "softmax", "beta": 1000} or Softmax(beta=1000)',
    )
    return lookup(registry or get_registry(), "separations", name)(**params)


def _named(given: object, noun: str, key: str, stage: str, example: dict[str, Any], hint: str) -> tuple[str, dict[str, Any]]:
    """The registered name and the parameters of a `noun` given by name or as a pipeline's `stage:` writes it, `{key: name, **params}`."""
    if isinstance(given, str):
        return given, {}
    if isinstance(given, Mapping):
        params = dict(given)
        name = params.pop(key, None)
        if isinstance(name, str):
            return name, params
        raise ParamError(
            f"{noun} {dict(given)!r} names no {key}" if name is None else f"a {noun}'s {key!r} must be a name, got {name!r}",
            hint=f"name it under {key!r}, as a pipeline's `{stage}:` does: {({**example, **params})!r}",
            param=key,
        )
    raise ParamError(f"{noun} must be a name, a mapping {{{key!r}: name, ...parameters}} or a {noun.capitalize()}, got {given!r}", hint=hint, param=noun)


def retrieve(queries: Tensor, keys: "Tensor | Rows", values: "Tensor | Rows | None" = None, **options: Any) -> Tensor:
    """The retrieved values for each query: `recall(...).output`, with the same options."""
    return recall(queries, keys, values, **options).output


def recall(
    queries: Tensor,
    keys: "Tensor | Rows",
    values: "Tensor | Rows | None" = None,
    *,
    similarity: "str | Mapping[str, Any] | Similarity" = "dot",
    separation: "str | Mapping[str, Any] | Separation" = "softmax",
    distance_form: str = "negative",
    normalize_scores: bool = False,
    budget: int = DEFAULT_BUDGET,
    shard: Shard | None = None,
) -> Recall:
    """Retrieve for Q queries from N stored keys and values (default: the keys), and which memory scored best.

    As `amemctl.core.retrieval.recall`, with the similarity and separation also named as a
    pipeline names them, plugins' too: "manhattan", {"function": "topk", "k": 5}.
    """
    return core.recall(
        queries,
        keys,
        values,
        similarity=similarity_of(similarity),
        separation=separation_of(separation),
        distance_form=distance_form,
        normalize_scores=normalize_scores,
        budget=budget,
        shard=shard,
    )


class UniversalHopfield(modules.UniversalHopfield):
    """A universal Hopfield network (`amemctl.core.modules.UniversalHopfield`) whose similarity and separation may be named as `recall`'s."""

    def __init__(
        self,
        memories: Tensor,
        values: Tensor | None = None,
        *,
        similarity: "str | Mapping[str, Any] | Similarity" = "dot",
        separation: "str | Mapping[str, Any] | Separation" = "softmax",
        budget: int = DEFAULT_BUDGET,
    ) -> None:
        super().__init__(memories, values, similarity=similarity_of(similarity), separation=separation_of(separation), budget=budget)
