"""Retrieval as `import amemctl` offers it: similarities and separations named as a pipeline names them.

`amemctl.core.retrieval` is the math and knows nothing of plugins: it takes objects (and the
built-in names). Here a name, or a similarity or separation written as the YAML writes it
(`{"similarity": "minkowski", "p": 3}`, `{"function": "topk", "k": 5}`), is looked up in the
plugin registry, built-ins and installed plugins alike, and its parameters are checked against
their declarations, through amemctl/choices.py as the `score` and `separate` stages read theirs,
so that both accept and refuse the same things in the same words; then core runs.
"""

from __future__ import annotations

from typing import Any, Mapping

from torch import Tensor

from amemctl.choices import made, named
from amemctl.core import modules
from amemctl.core import retrieval as core
from amemctl.core.retrieval import DEFAULT_BUDGET, Recall, Shard
from amemctl.core.rows import Rows
from amemctl.core.separation import Separation
from amemctl.core.similarity import Similarity
from amemctl.plugins import Registry, get_registry
from amemctl.stage import Param, ParamError

#: What names the similarity in a mapping, `{"similarity": "kl", "eps": 1e-4}`, and its default: the `score` stage's.
SIMILARITY = Param(str, "dot", "the similarity")
SIMILARITY.name = "similarity"
#: What names the separation in a mapping, `{"function": "topk", "k": 5}`, and its default: the `separate` stage's.
SEPARATION = Param(str, "softmax", "the separation function")
SEPARATION.name = "function"


def similarity_of(similarity: "str | Mapping[str, Any] | Similarity", registry: Registry | None = None) -> Similarity:
    """A `Similarity` as given, or the one registered under a name (aliases such as L1 too) or
    `{"similarity": name, **params}` (also `{"name": name, ...}`), as a pipeline's `score:` writes it.

    The parameters are checked against the similarity's declaration as a pipeline's are
    (amemctl/choices.py): a similarity that takes none, or not that one, is named
    ("similarity 'cosine' takes no parameter 'p'"), with what it does take.
    """
    if isinstance(similarity, Similarity):
        return similarity
    name, params = _named(similarity, "similarity", SIMILARITY, 'e.g. similarity="manhattan" or similarity={"similarity": "kl", "eps": 1e-4}')
    return made(registry or get_registry(), "similarities", name, params)


def separation_of(separation: "str | Mapping[str, Any] | Separation", registry: Registry | None = None) -> Separation:
    """A `Separation` as given, or made by the registered function a name or `{"function": name, **params}` names.

    The parameters are checked as a pipeline's `separate:` checks them, through the same code
    (amemctl/choices.py): a value out of range or an unknown parameter is a ParamError naming
    it, with the range or a did-you-mean, in the words `amemctl validate` uses.
    """
    if isinstance(separation, Separation):
        return separation
    example = 'e.g. separation="max", separation={"function": "softmax", "beta": 1000} or Softmax(beta=1000)'
    name, params = _named(separation, "separation", SEPARATION, example)
    return made(registry or get_registry(), "separations", name, params)


def _named(given: object, noun: str, declared: Param, hint: str) -> tuple[str, dict[str, Any]]:
    """The registered name and the parameters of a `noun` given by name or as a mapping (`choices.named`)."""
    if isinstance(given, str):
        return given, {}
    if isinstance(given, Mapping):
        return named(given, declared.name, declared)
    raise ParamError(f"{noun} must be a name, a mapping {{{declared.name!r}: name, ...parameters}} or a {noun.capitalize()}, got {given!r}", hint=hint, param=noun)


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


def sharded_recall(
    queries: Tensor,
    keys: "Tensor | Rows",
    values: "Tensor | Rows | None" = None,
    *,
    group: Any = None,
    similarity: "str | Mapping[str, Any] | Similarity" = "dot",
    separation: "str | Mapping[str, Any] | Separation" = "softmax",
    distance_form: str = "negative",
    normalize_scores: bool = False,
    budget: int = DEFAULT_BUDGET,
) -> Recall:
    """`recall` over a memory split across the ranks of a torch.distributed `group` (None: the default group).

    Every rank passes the same queries and the whole memory (a tensor, or the same store's
    `Rows`, which are then read only where needed); each scores the contiguous shard of rows it
    owns, as `amemctl run --nproc` splits a memory, and the partial states are merged exactly,
    so every rank gets the whole memory's answer. `recall(..., shard=Shard(...))` is the same for
    a rank that holds only its own rows.
    """
    from amemctl.core.distributed import sharded_recall as sharded

    return sharded(
        queries,
        keys,
        values,
        group=group,
        similarity=similarity_of(similarity),
        separation=separation_of(separation),
        distance_form=distance_form,
        normalize_scores=normalize_scores,
        budget=budget,
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
