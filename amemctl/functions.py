"""What a stage dispatches to by name: similarities, separations, corruptions, encoder architectures.

A `Function` is declared like a stage: a name, a docstring-like `doc`, and its own `Param`s.
A stage that chooses one by a parameter (`separate`'s `function`, `corrupt`'s `kind`) says
so in its `dispatch`; the chosen function's parameters are then written beside the stage's
own (or inside the choice, `similarity: {name: kl, eps: 1e-4}`), and checked at their YAML
line against the function's declaration (amemctl/choices.py reads a choice for pipelines
and notebooks alike):

    SeparationFunction(
        "sparsemax",
        lambda beta: Sparse("sparsemax", beta),
        {"beta": Param(float, 1.0, "inverse temperature", min=0)},
        doc="Euclidean projection of beta * scores onto the simplex (sparse weights)",
    )

Built-ins and plugins register them through the same hooks (amemctl/hookspecs.py).
"""

from __future__ import annotations

from typing import Any, Callable, ClassVar, Mapping, Sequence

from amemctl.errors import blame_function, blaming, made_by
from amemctl.stage import Param, ParamError
from amemctl.suggest import did_you_mean


class Function:
    """A named, documented callable with declared parameters, chosen by name in a pipeline."""

    #: the noun for this kind of function in messages ("separation", "corruption", ...)
    kind: ClassVar[str] = "function"

    def __init__(
        self,
        name: str,
        make: Callable[..., Any],
        params: "Mapping[str, Param] | None" = None,
        doc: str = "",
        check: "Callable[[dict[str, Any]], None] | None" = None,
    ) -> None:
        self.name = name
        self.make = make
        self.doc = doc
        #: raises ParamError when parameters that are each valid do not go together
        self.check = check
        self.params: dict[str, Param] = dict(params or {})
        for key, param in self.params.items():
            param.name = param.name or key

    @property
    def summary(self) -> str:
        """The first line of the documentation."""
        return self.doc.strip().splitlines()[0] if self.doc.strip() else ""

    def configure(self, given: Mapping[str, Any]) -> dict[str, Any]:
        """Every parameter: the given values checked against their declarations, defaults for the rest.

        Every unknown, missing or unfitting parameter is found before a ParamError is raised
        (one listing them all when there are several); `check` runs once each one fits.
        """
        problems = [self.no_parameter(key) for key in given if key not in self.params]
        values: dict[str, Any] = {}
        for key, param in self.params.items():
            try:
                values[key] = param.value_in(key, given, f"{self.kind} {self.name!r}", locate_missing=True)
            except ParamError as exc:
                problems.append(exc)
        if problems:
            raise ParamError.together(problems, f"{self.kind} {self.name!r}")
        if self.check is not None:
            self.check(values)
        return values

    def no_parameter(self, key: str, besides: "Sequence[str]" = (), owner: str = "") -> ParamError:
        """The error for a parameter `key` this function does not declare: a did-you-mean, or what it does take.

        `besides` are the parameters of the stage that chose it (`owner`), written beside the
        choice: a name close to one of them is suggested too, and the hint lists them after the
        function's own. A notebook's message is the pipeline's without them.
        """
        takes = f"{self.name} accepts {', '.join(self.params)}" if self.params else f"{self.name} takes no parameters"
        if besides:
            takes += f"; {owner} takes {', '.join(besides)}"
        hint = did_you_mean(key, [*self.params, *besides]) or takes
        return ParamError(f"{self.kind} {self.name!r} takes no parameter {key!r}", hint=hint, param=key, about="key")

    def __call__(self, *args: Any, **given: Any) -> Any:
        """`make(*args, **parameters)` with the parameters checked and completed.

        What `make` raises (a class that cannot be made, a bug in it) is marked as this
        function's, so a crash names the package that registered it rather than amemctl.
        """
        values = self.configure(given)
        with blaming(self.kind, self.name):
            return self.make(*args, **values)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"


class SeparationFunction(Function):
    """A separation: `make(**parameters)` returns an `amemctl.core.separation.Separation`."""

    kind = "separation"

    def __call__(self, *args: Any, **given: Any) -> Any:
        """The separation, tagged with this function's registered name (`errors.made_by`).

        Retrieval marks what the separation's code raises with that name rather than the
        object's own `name`, which may differ: the crash is then placed at the stage that
        chose this function, also where one plugin provides the similarity too.
        """
        return made_by(super().__call__(*args, **given), self.kind, self.name)


class SimilarityFunction(Function):
    """A similarity with parameters of its own: `make(**parameters)` returns the `amemctl.Similarity` they configure.

    A plain `Similarity` registers itself and takes none (but its kernel's options). One whose
    kernel has a parameter (Minkowski's p, a kernel's scale, a divergence's eps) registers a
    SimilarityFunction, and a pipeline writes its parameters beside its name, `score:
    {similarity: minkowski, p: 3}`, or inside it, `score: {similarity: {name: minkowski, p:
    3}}`, where one named like a parameter of `score` itself must go; they are checked at their
    line (the rule: `Stage._configure_choices`). `distance` says whether what it makes is a
    distance (`amemctl stages` tells users).
    """

    kind = "similarity"

    def __init__(
        self,
        name: str,
        make: Callable[..., Any],
        params: "Mapping[str, Param] | None" = None,
        doc: str = "",
        check: "Callable[[dict[str, Any]], None] | None" = None,
        distance: bool = False,
    ) -> None:
        super().__init__(name, make, params, doc, check)
        self.distance = distance

    def __call__(self, *args: Any, **given: Any) -> Any:
        """The similarity, under this function's registered name (what blames a bug in its kernel on it)."""
        from dataclasses import replace

        from amemctl.core.similarity import Similarity

        made = super().__call__(*args, **given)
        if not isinstance(made, Similarity):
            error = TypeError(f"similarity {self.name!r} made {made!r}, not an amemctl.Similarity")
            raise blame_function(error, self.kind, self.name)
        return made if made.name == self.name else replace(made, name=self.name)


def as_function(entry: Any) -> Any:
    """A registered entry as the `Function` that takes its parameters: a plain `Similarity` becomes
    the `SimilarityFunction` taking its kernel's keyword options (none for most, which are then
    refused by name: "similarity 'cosine' takes no parameter 'p'"); anything else is itself."""
    from amemctl.core.similarity import Similarity

    if not isinstance(entry, Similarity):
        return entry
    options = {option: Param(None, None, "a keyword option of its kernel") for option in entry.options}
    return SimilarityFunction(entry.name, entry.with_options, options, doc=entry.doc, distance=entry.distance)


class EncoderArchitecture(Function):
    """An encoder (phi) architecture: `make(cifar_stem: bool, **parameters)` returns an
    `nn.Module` mapping N x 3 x H x W images to N x `width` embeddings."""

    kind = "encoder"

    def __init__(
        self,
        name: str,
        make: Callable[..., Any],
        width: int,
        params: "Mapping[str, Param] | None" = None,
        doc: str = "",
        check: "Callable[[dict[str, Any]], None] | None" = None,
    ) -> None:
        super().__init__(name, make, params, doc, check)
        self.width = width
