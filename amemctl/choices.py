"""A registered function chosen by name with its parameters: one reading for pipelines and notebooks.

A pipeline chooses a similarity, separation, corruption, encoder or dataset with a stage
parameter (`score: {similarity: minkowski, p: 3}`), a notebook with an argument
(`recall(..., similarity={"similarity": "minkowski", "p": 3})`). Both read the choice here, so
they accept and refuse the same things in the same words:

- `named` reads a choice written as a mapping: `{name: NAME, **parameters}` (or the kind's
  own key, `{"similarity": NAME, ...}`, as a stage's mapping writes it);
- `function_of` finds the registered function, a plain `Similarity` seen as the
  `SimilarityFunction` that takes its kernel's options (`functions.as_function`);
- the function's `configure` checks the parameters against its declaration, and calling it
  makes the object (a `Similarity`, a `Separation`).

`made` is the three in a row, what `amemctl.recall` does with a name or a mapping; a stage
does the same steps in `Stage.__init__` (where the parameters written beside the choice are
also routed: see `Stage._configure_choices`) and `Stage.made`, both making the object with
`make`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Mapping

from amemctl.functions import Function, as_function
from amemctl.stage import Param, ParamError

if TYPE_CHECKING:
    from amemctl.plugins import Registry

#: The key a choice may always be named under inside its mapping: `similarity: {name: kl, eps: 1e-4}`.
NAME = "name"


def named(given: Mapping[str, Any], key: str, declared: Param) -> tuple[Any, dict[str, Any]]:
    """The name and the parameters of a choice written as a mapping `{name: NAME, **parameters}`.

    The name may stand under `key` instead (`{"function": "softmax", "beta": 3}`, as the
    `separate` stage's own mapping writes it), and is checked against `declared`, the
    parameter that chooses (a stage's `function`): a mapping naming none chooses its default,
    as a stage given no `function:` does.
    """
    params = dict(given)
    under = [k for k in dict.fromkeys((NAME, key)) if k in params]
    if len(under) > 1:
        shown = {NAME: params[NAME], **{k: v for k, v in params.items() if k not in under}}
        raise ParamError(f"{dict(given)!r} names it twice, under {NAME!r} and {key!r}", hint=f"keep one: {shown!r}", param=key)
    where = under[0] if under else key
    name = declared.value_in(where, params, f"the choice {dict(given)!r}")
    params.pop(where, None)
    return name, params


def function_of(registry: "Registry", kind: str, name: str) -> Any:
    """The registered entry `name` of a kind (a key of plugins.KINDS) as a `Function` where it takes parameters.

    A plain `Similarity` becomes the `SimilarityFunction` taking its kernel's options; a
    dataset, which takes none, stays as registered. An unknown name is a ParamError with the
    closest one.
    """
    from amemctl.plugins import lookup

    return as_function(lookup(registry, kind, name))


def made(registry: "Registry", kind: str, name: str, params: Mapping[str, Any]) -> Any:
    """What the function `name` of a kind makes with `params`, checked against its declaration."""
    return make(function_of(registry, kind, name), **params)


def make(function: Any, *args: Any, **params: Any) -> Any:
    """What a chosen function makes with its parameters (and `args` before them).

    A separation that retrieval could not run (a class with neither a reducer nor
    `needs_full_rows`) is refused here, where it is named: by `amemctl validate` and by
    `recall`, rather than by the first retrieval after every stage before it.
    """
    from amemctl.core.separation import Separation

    if not isinstance(function, Function):
        raise TypeError(f"{function!r} is not made from parameters")
    thing = function(*args, **params)
    if isinstance(thing, Separation):
        thing.check_streams()
    return thing
