"""What a stage is: a name, typed parameters, the tensors it reads and writes, and `run`.

Built-in and third-party stages are written the same way:

    class Whiten(Stage):
        \"\"\"Centre and scale stored patterns and queries by the patterns' statistics.\"\"\"

        name = "whiten"
        eps = Param(float, 1e-5, "added to the variance", min=0)
        memory = Input("patterns", "stored patterns to take the statistics of")
        queries = Input("queries", "queries to whiten the same way")
        memory_out = Output("patterns", "whitened patterns")
        queries_out = Output("queries", "whitened queries")

        def run(self, ctx):
            ...

Parameters are class attributes; on an instance they read as the validated values
(`self.eps` is a float). `Input` and `Output` parameters hold the names of context tensors,
so a pipeline can rewire any stage, and `amemctl validate` can check the wiring without
running anything. A stage never modifies a tensor it read in place: it writes new ones,
which lets the engine reuse results shared by several sweep points (the engine checks each
tensor's version counter after every stage: `amemctl.engine.plan.ModifiedInPlace`).
"""

from __future__ import annotations

import math
import operator
import re
import string
import textwrap
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Iterable, Mapping, Sequence

from amemctl.errors import AmemctlError, PipelineError
from amemctl.suggest import did_you_mean

if TYPE_CHECKING:
    from amemctl.context import Context
    from amemctl.plugins import Registry


class _Required:
    def __repr__(self) -> str:
        return "required"


#: Default of a parameter that every pipeline must give.
REQUIRED: Any = _Required()

_FLOAT = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$|^[-+]?(inf|infinity)$", re.IGNORECASE)
_COMPARE = {">=": operator.ge, ">": operator.gt, "<=": operator.le, "<": operator.lt}
_TYPE_NAMES = {int: "integer", float: "number", str: "string", bool: "boolean", list: "list", dict: "mapping"}


class ParamError(PipelineError):
    """A parameter that does not fit its declaration, or every such parameter of one stage or function.

    `param` names it when known (a pair such as `("similarity", "eps")` for a parameter inside
    a choice, `similarity: {name: kl, eps: 1e-4}`); `about` says whether the fault is the
    parameter's value (reported at the value) or its presence (reported at its key). A stage
    or function checks all its parameters before it gives up, and raises what it found as one error
    (`ParamError.together`) whose `problems` are the single errors: a user fixes every mistake of
    a stage in one pass, rather than one per `amemctl validate`, which reports each at its line.
    """

    def __init__(
        self,
        message: str,
        *,
        hint: str | None = None,
        param: "str | tuple[str, ...] | None" = None,
        about: str = "value",
        problems: "Sequence[ParamError]" = (),
    ) -> None:
        super().__init__(message, hint=hint)
        self.param = param
        self.about = about
        #: the single errors this one gathers; empty for a single error
        self.problems: list[ParamError] = list(problems)

    @classmethod
    def together(cls, errors: "Sequence[ParamError]", owner: str = "") -> "ParamError":
        """One error for all of `errors` (gathered ones flattened): a lone error unchanged, so one
        mistake reads as it always did, else one listing each; `owner` names whose parameters they are."""
        single = [problem for error in errors for problem in error.each()]
        if not single:
            raise ValueError("ParamError.together needs at least one error")
        if len(single) == 1:
            return single[0]
        return cls(f"{owner + ' has ' if owner else ''}{len(single)} parameter errors", problems=single)

    def each(self) -> "list[ParamError]":
        """The single errors this one stands for: its problems, or itself."""
        return list(self.problems) or [self]

    def render(self) -> str:
        """A single error as any other; gathered ones as a head line and each error indented under it."""
        if not self.problems:
            return super().render()
        listed = "\n".join(textwrap.indent(problem.render(), "  ") for problem in self.problems)
        return f"{super().render()}:\n{listed}"


class Param:
    """A typed stage parameter with a default and a line of documentation.

    type: int, float, str, bool, list, dict, or a tuple of them; None allows anything.
    default: the value when the pipeline omits it; REQUIRED when it must be given.
    choices: the allowed values, or a function returning them (looked up when checked).
    min / max: inclusive bounds for numbers (value >= min, value <= max).
    above / below: exclusive bounds for numbers (value > above, value < below): a beta or a
        temperature that must be positive, a fraction that must stay under 1. A side takes
        one of its two bounds; `amemctl stages` and the messages show them as `> 0`, `>= 1`.
    items: the type of a list's items.
    nullable: whether `null` is accepted (always true when the default is None).
    validate: a function of the converted value raising an AmemctlError when it does not fit
        (checks the other options cannot say, e.g. "two numbers, low <= high").
    finite: whether infinities (YAML .inf, "inf") are refused, as NaN always is; true unless
        the stage gives inf a meaning, since a number meant to be finite overflows later, elsewhere.
    reads / writes: the parameter is the path of a file, folder or store (a key of PATH_KINDS)
        that the stage reads, or writes. `amemctl validate` and `amemctl run` check, before
        anything runs, that every path a stage reads is there (a store: that it opens as an
        amemctl store) unless an earlier stage writes it; a resumed run refuses to reuse
        points whose inputs changed since (Stage.files, amemctl.engine.files).
    """

    role = "param"

    def __init__(
        self,
        type: Any = str,
        default: Any = REQUIRED,
        doc: str = "",
        *,
        choices: "Iterable[Any] | Callable[[], Iterable[Any]] | None" = None,
        min: float | None = None,
        max: float | None = None,
        above: float | None = None,
        below: float | None = None,
        items: Any = None,
        nullable: bool = False,
        validate: "Callable[[Any], Any] | None" = None,
        finite: bool = True,
        reads: str | None = None,
        writes: str | None = None,
    ) -> None:
        self.type = type
        self.default = default
        self.doc = doc
        self._choices = choices
        self.min = min
        self.max = max
        self.above = above
        self.below = below
        self.items = items
        self.nullable = nullable or default is None
        self.validate = validate
        self.finite = finite
        self.reads = reads
        self.writes = writes
        self.name = ""
        self._check_declaration()

    def _check_declaration(self) -> None:
        """Refuse two bounds on one side, or a default the bounds refuse, where the parameter is declared.

        Either would otherwise surface only in a user's pipeline: which of two lower bounds
        holds is anyone's guess, and a default outside the bounds is accepted when omitted and
        refused when written out.
        """
        if self.min is not None and self.above is not None:
            raise TypeError("Param: give min (inclusive) or above (exclusive), not both")
        if self.max is not None and self.below is not None:
            raise TypeError("Param: give max (inclusive) or below (exclusive), not both")
        default = self.default
        if isinstance(default, (int, float)) and not isinstance(default, bool) and not self._within(default):
            raise TypeError(f"Param: the default {default!r} is not {self.bounds_text()}")
        if self.reads is not None and self.writes is not None:
            raise TypeError("Param: give reads= or writes=, not both (a stage that updates a file reads it: reads=)")
        kind = self.path_kind
        if kind is not None and kind not in PATH_KINDS:
            raise TypeError(f"Param: reads= and writes= take one of {', '.join(PATH_KINDS)}, not {kind!r}")
        if kind is not None and self.type is not str:
            raise TypeError("Param: a path parameter (reads= or writes=) has the type str")

    @property
    def path_kind(self) -> str | None:
        """What the parameter's path names (a key of PATH_KINDS), or None when it is no path."""
        return self.reads if self.reads is not None else self.writes

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, instance: "Stage | None", owner: type) -> Any:
        if instance is None:
            return self
        return instance.settings[self.name]

    @property
    def required(self) -> bool:
        return self.default is REQUIRED

    @property
    def choices(self) -> list[Any] | None:
        if self._choices is None:
            return None
        return list(self._choices() if callable(self._choices) else self._choices)

    def described(self) -> str:
        """The documentation line with the allowed choices appended (when there are few)."""
        choices = self.choices
        return self.doc + (f" (one of: {', '.join(map(str, choices))})" if choices and len(choices) <= 12 else "")

    def default_text(self) -> str:
        """The default as a reader needs it: `required`, the value, or what the doc says an unset (None) value means."""
        if self.required:
            return "required"
        if self.default is None:
            said = re.findall(r"\(default:? ([^()]*(?:\([^()]*\)[^()]*)*)\)", self.doc)
            return said[0].strip() if len(said) == 1 else ("see meaning" if said else "none")
        return repr(self.default)

    def bounds(self) -> list[tuple[str, float]]:
        """The declared bounds as (operator, limit) pairs, lower first: [('>', 0), ('<=', 1)]."""
        declared = ((">=", self.min), (">", self.above), ("<=", self.max), ("<", self.below))
        return [(op, limit) for op, limit in declared if limit is not None]

    def bounds_text(self) -> str:
        """The bounds as a reader checks them: `> 0 and <= 1`; empty when there are none."""
        return " and ".join(f"{op} {limit:g}" for op, limit in self.bounds())

    def type_text(self) -> str:
        """The type with its bounds (`number > 0`), as `amemctl stages` and docs/stages.md show it."""
        bounds = self.bounds_text()
        return f"{self.type_name()} {bounds}" if bounds else self.type_name()

    def _within(self, value: float) -> bool:
        return all(_COMPARE[op](value, limit) for op, limit in self.bounds())

    def type_name(self) -> str:
        types = self.type if isinstance(self.type, tuple) else (self.type,)
        if self.type is None:
            return "any"
        if self.reads is not None:
            return f"path of an existing {self.reads}"
        if self.writes is not None:
            return f"path of a {self.writes} it writes"
        name = " or ".join(_TYPE_NAMES.get(t, getattr(t, "__name__", str(t))) for t in types)
        if list in types and self.items is not None:
            name += f" of {_TYPE_NAMES.get(self.items, self.items.__name__)}"
        return name

    def coerce(self, value: Any) -> Any:
        """The value converted to the declared type, or a ParamError saying what fits."""
        if value is None:
            if self.nullable:
                return None
            raise ParamError(f"parameter {self.name!r} may not be null", hint=self._expect())
        if self.type is not None:
            value = _convert(value, self.type, self.items, self)
        self._check_bounds(value)
        choices = self.choices
        if choices is not None and value not in choices:
            raise ParamError(
                f"{value!r} is not a valid {self.name!r}",
                hint=did_you_mean(str(value), map(str, choices)) or f"choose one of {', '.join(map(str, choices))}",
            )
        if self.validate is not None:
            try:
                self.validate(value)
            except ParamError:
                raise
            except AmemctlError as exc:
                raise ParamError(exc.message, hint=exc.hint, param=self.name) from None
        return value

    def _check_bounds(self, value: Any) -> None:
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            return
        if value != value:  # NaN passes every comparison; it would only fail later, elsewhere
            raise ParamError(f"parameter {self.name!r} is NaN", hint=self._expect())
        if self.finite and isinstance(value, float) and math.isinf(value):
            raise ParamError(f"parameter {self.name!r} is {value}, not a finite number", hint=self._expect())
        if not self._within(value):
            raise ParamError(f"parameter {self.name!r} is {value}, out of range", hint=self._expect())
        if isinstance(value, int) and not -(2**63) <= value < 2**63:  # torch's integers are 64-bit: a larger one overflows in the stage
            raise ParamError(f"parameter {self.name!r} is {value}, too large for a 64-bit integer", hint=self._expect() + " below 2**63")

    def value_in(self, key: str, given: "Mapping[str, Any]", owner: str, *, locate_missing: bool = False) -> Any:
        """This parameter's checked value in `given` (under `key`), or its default; a ParamError naming it otherwise.

        `owner` says whose parameter it is ("stage 'score'", "separation 'top_k'"); with
        `locate_missing` a missing required one is reported at its key, else at its owner.
        """
        if key in given:
            try:
                return self.coerce(given[key])
            except ParamError as exc:
                exc.param = key
                raise
        if self.required:
            where: dict[str, Any] = {"param": key, "about": "key"} if locate_missing else {}
            raise ParamError(f"{owner} needs parameter {key!r}", hint=self._expect() + (f": {self.doc}" if self.doc else ""), **where)
        return self.default

    def _expect(self) -> str:
        """What fits, as a hint: `beta takes a number > 0`."""
        return f"{self.name} takes {_a(self.type_text())}"


def _convert(value: Any, types: Any, items: Any, param: Param) -> Any:
    types = types if isinstance(types, tuple) else (types,)
    for t in types:
        ok, converted = _try(value, t)
        if ok:
            if t is list and items is not None:
                return [_convert(v, items, None, param) for v in converted]
            return converted
    raise ParamError(
        f"parameter {param.name!r} must be {_a(param.type_name())}, got {value!r}",
        hint=param._expect(),
    )


def _try(value: Any, t: Any) -> tuple[bool, Any]:
    if t is bool:
        return isinstance(value, bool), value
    if isinstance(value, bool):
        return False, None
    if t is int:
        if isinstance(value, int):
            return True, value
        if isinstance(value, float) and value.is_integer():
            return True, int(value)
        return False, None
    if t is float:
        if isinstance(value, (int, float)):
            return True, float(value)
        # YAML 1.1 reads 1e4 (no dot) as a string; accept what is plainly a number.
        if isinstance(value, str) and _FLOAT.match(value.strip()):
            return True, float(value)
        return False, None
    if t is str:
        return isinstance(value, str), value
    if t is list:
        return isinstance(value, list), value
    if t is dict:
        return isinstance(value, dict), value
    return isinstance(value, t), value


def _a(noun: str) -> str:
    return ("an " if noun[:1] in "aeiou" else "a ") + noun


#: what a path parameter (Param reads= / writes=) may name, and how a message says it
PATH_KINDS = {"file": "file", "folder": "folder", "store": "amemctl store"}


@dataclass(frozen=True)
class FileUse:
    """A file, folder or store that a configured stage reads or writes, named by one of its parameters."""

    param: str  #: the parameter whose value it is (where `validate` points)
    path: str  #: as the pipeline gives it: relative to the directory the run is started in
    kind: str  #: a key of PATH_KINDS
    writes: bool = False  #: written (created or replaced) by the stage, not read


class Input(Param):
    """A parameter naming a context tensor the stage reads."""

    role = "input"

    def __init__(self, default: "str | None", doc: str = "", *, optional: bool = False) -> None:
        super().__init__(str, default, doc, nullable=optional)


class Output(Param):
    """A parameter naming a context tensor the stage writes."""

    role = "output"

    def __init__(self, default: "str | None", doc: str = "", *, optional: bool = False) -> None:
        super().__init__(str, default, doc, nullable=optional)


@dataclass(frozen=True)
class Fusion:
    """What a stage offers to run together with the stages after it (see `Stage.fuse`).

    stages: how many stages the fused run covers, this one included.
    run: runs them all on a context, writing the last stage's outputs.
    unformed: tensors the covered stages would write that the fused run never forms; the
        engine fuses only when no later stage reads them.
    name: the step's name in timings (`seconds.<name>`) and progress bars.
    """

    stages: int
    run: "Callable[[Context], None]"
    unformed: tuple[str, ...] = ()
    name: str = "fused"


@dataclass(frozen=True)
class Metric:
    """A metric a stage records with `ctx.metric(name, value)`, and how a reader is told what it is.

    A stage's `metrics()` lists these (or bare names) so that `report:` is checked before a run
    and figures read in words: `description` titles a curve, `axis` (a few words) labels its y
    axis, and `low`/`high` bound it (0 and 1: a fraction, drawn in percent). A metric declared
    by its bare name is titled by that name.
    """

    name: str
    description: str = ""
    axis: str = ""
    low: float | None = None
    high: float | None = None

    @classmethod
    def of(cls, declared: "str | Metric") -> "Metric":
        """A declared metric as a Metric: a bare name reads as itself."""
        if isinstance(declared, Metric):
            return declared
        if isinstance(declared, str) and declared:
            return cls(declared)
        raise TypeError(f"metrics() listed {declared!r}: a stage lists the metrics it records as names or amemctl.Metric")

    @property
    def title(self) -> str:
        """What a curve of this metric is titled: its description, else its name."""
        return self.description or self.name

    @property
    def label(self) -> str:
        """A y axis's label: a few words, else the description, else the name."""
        return self.axis or self.title

    def prefixed(self, prefix: str) -> "Metric":
        """The same metric recorded under `prefix` + name (evaluate's `pass1_`), its words led by the prefix ("pass1: ...")."""
        if not prefix:
            return self
        words = prefix.rstrip(_SEPARATORS)
        return Metric(prefix + self.name, f"{words}: {self.title}", f"{words}: {self.label}", self.low, self.high)


#: what may end a metric prefix (pass1_, pass1., pass1-, pass1/), left out of its words
_SEPARATORS = string.punctuation + string.whitespace


def declared_metrics(stages: "Iterable[Stage]") -> "dict[str, Metric]":
    """Every metric the given configured stages declare, by name."""
    return {m.name: m for stage in stages for m in map(Metric.of, stage.metrics())}


_RESERVED = {"settings", "name", "summary", "params", "run", "check", "inputs", "outputs", "metrics", "describe",
             "registry", "dispatch", "lenient", "options", "chosen", "made", "fusion", "materialize", "files"}


class Stage:
    """Base class of every stage; subclasses declare `name` and Params and implement `run`."""

    #: The name pipelines use; unique across built-ins and plugins.
    name: ClassVar[str] = ""
    #: One line for `amemctl stages`; defaults to the first line of the docstring.
    summary: ClassVar[str] = ""
    #: Parameters in declaration order, collected from the class and its bases.
    params: ClassVar[dict[str, Param]] = {}
    #: Parameters that choose a registered function, and the registry table they choose from,
    #: e.g. {"function": "separations"}: the chosen function's own parameters are accepted
    #: beside the stage's (or inside the choice, `function: {name: topk, k: 5}`), checked
    #: against its declaration, and kept in `options` (see `_configure_choices` for the rule).
    dispatch: ClassVar[dict[str, str]] = {}
    #: Per dispatching parameter, parameters of the functions it may choose that a pipeline
    #: may write beside it whichever function it chose: given to one that declares them,
    #: ignored by one that does not. `score` lets the divergences' eps and smoothing stand
    #: beside any similarity, so that one score stage sweeps divergences and distances alike.
    lenient: ClassVar[dict[str, tuple[str, ...]]] = {}
    #: Input parameters whose stored rows the engine reads into one tensor before `run`
    #: (within the budget), for stages that index or reshape their inputs as tensors. Other
    #: inputs may arrive as `Rows` (a store opened lazily); see `amemctl.Rows`.
    materialize: ClassVar[tuple[str, ...]] = ()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        params: dict[str, Param] = {}
        for klass in reversed(cls.__mro__):
            params.update({k: v for k, v in vars(klass).items() if isinstance(v, Param)})
        clash = sorted(set(params) & _RESERVED)
        if clash:
            raise TypeError(f"stage {cls.__name__}: parameter name(s) {', '.join(clash)} are reserved by Stage")
        cls.params = params
        wrong = [k for k in cls.materialize if k not in params or params[k].role != "input"]
        if wrong:
            raise TypeError(f"stage {cls.__name__}: `materialize` names {', '.join(wrong)}, which are not Input parameters")
        if not cls.summary and cls.__doc__:
            cls.summary = cls.__doc__.strip().splitlines()[0]

    def __init__(self, registry: "Registry | None" = None, /, **values: Any) -> None:
        """Configure from parameter values, checking names and types, then `check()`.

        `registry` is the one the pipeline is checked with (the process's when None); a
        stage looks up the functions it dispatches to there, never in a global.
        """
        self.registry = registry
        self.settings: dict[str, Any] = {}
        #: dispatching parameter -> the chosen function's checked parameters
        self.options: dict[str, dict[str, Any]] = {}
        values, inside, problems = self._open_choices(values)
        extra = {k: v for k, v in values.items() if k not in self.params}
        if not self.dispatch:
            problems += [self._no_parameter(key) for key in extra]
        for key, param in self.params.items():
            if key in inside and inside[key] is None:  # a choice whose mapping was refused: among the problems
                continue
            try:
                self.settings[key] = param.value_in(key, values, f"stage {self.name!r}")
            except ParamError as exc:
                problems.append(exc)
        if self.dispatch:
            problems += self._configure_choices(values, extra, inside)
        if problems:  # every one of them, so that one `validate` shows all a stage's mistakes
            raise ParamError.together(problems, f"stage {self.name!r}")
        self.check()  # cross-parameter checks need each parameter valid

    def _no_parameter(self, key: str) -> ParamError:
        return ParamError(
            f"stage {self.name!r} has no parameter {key!r}",
            hint=did_you_mean(key, self.params) or f"its parameters are {', '.join(self.params) or 'none'}",
            param=key,
            about="key",
        )

    def _open_choices(self, values: "Mapping[str, Any]") -> "tuple[dict[str, Any], dict[str, dict[str, Any] | None], list[ParamError]]":
        """The values with each choice written as a mapping (`similarity: {name: kl, eps: 1e-4}`) replaced by its name,
        the parameters inside each such mapping (None where the mapping itself was refused), and what was refused."""
        from amemctl.choices import named

        values = dict(values)
        inside: dict[str, dict[str, Any] | None] = {}
        problems: list[ParamError] = []
        for key in self.dispatch:
            if not isinstance(values.get(key), Mapping):
                continue
            try:
                values[key], inside[key] = named(values[key], key, self.params[key])
            except ParamError as exc:
                exc.param = (key, exc.param) if exc.param != key else key
                problems.append(exc)
                inside[key] = None
                del values[key]
        return values, inside, problems

    def _configure_choices(self, values: "Mapping[str, Any]", extra: "Mapping[str, Any]", inside: "Mapping[str, dict[str, Any] | None]") -> list[ParamError]:
        """Give each chosen function its parameters, checked against its declaration; every problem found.

        The rule, the same for every stage: a parameter belongs to whoever declares it. One
        written beside the choice goes to the stage when the stage declares it, else to the
        chosen function that does; one inside the choice (`similarity: {name: kl, eps: 1e-4}`)
        to that function alone. A name that the stage and a chosen function both declare, or
        two chosen functions, is refused beside the choice unless each function that declares
        it is given its own inside: which one was meant cannot be told, and taking it for one
        silently would leave the other at its default. A name no one declares is refused,
        unless `lenient` lets it stand beside that choice. A dispatching parameter that is
        itself wrong (an unknown name) leaves the names no chosen function takes unjudged:
        they may be meant for the function it failed to name.
        """
        problems: list[ParamError] = []
        chosen: dict[str, Any] = {}
        for key in self.dispatch:
            if key not in self.settings:  # its own value was refused, and is among the problems
                continue
            try:
                chosen[key] = self._function(key)
            except ParamError as exc:
                problems.append(exc)
        declared = {key: getattr(function, "params", {}) for key, function in chosen.items()}
        given = {key: dict(inside.get(key) or {}) for key in chosen}
        for name, value in extra.items():
            takers = [key for key in chosen if name in declared[key]]
            if len(takers) > 1 and not all(name in given[key] for key in takers):
                problems.append(self._ambiguous(name, takers, chosen))
            elif len(takers) == 1 and name in given[takers[0]]:
                problems.append(self._given_twice(name, takers[0], chosen[takers[0]]))
            elif len(takers) == 1:
                given[takers[0]][name] = value
            elif not takers and not any(name in self.lenient.get(key, ()) for key in chosen) and len(chosen) == len(self.dispatch):
                problems.append(self._taken_by_none(name, chosen))
        for name in (name for name in values if name in self.params and name not in self.dispatch):  # the stage's own, written beside the choices
            clash = [key for key in chosen if name in declared[key] and name not in given[key]]
            if clash:
                problems.append(self._ambiguous(name, clash, chosen, own=True))
        for key, function in chosen.items():
            problems += self._configure_choice(key, function, given[key], inside.get(key))
        return problems

    def _configure_choice(self, key: str, function: Any, given: dict[str, Any], inside: "dict[str, Any] | None") -> list[ParamError]:
        """Check one chosen function's parameters into `options`; its problems, each at its parameter:
        inside the choice when written there (`inside`), or missing from a choice written as a mapping."""
        if function is None or not hasattr(function, "configure"):  # a dataset, or nothing chosen (null): no parameters
            from amemctl.plugins import KINDS

            self.options[key] = {}
            what = f"{KINDS[self.dispatch[key]][1]} {self.settings[key]!r}" if function is not None else f"`{key}: null`"
            hint = f"it takes no parameters; one of stage {self.name!r} goes beside `{key}:`"
            return [ParamError(f"{what} takes no parameter {name!r}", hint=hint, param=(key, name), about="key") for name in given]
        try:
            self.options[key] = function.configure(given)
        except ParamError as exc:
            problems = exc.each()
            for problem in problems:
                if inside is not None and problem.param is not None and (problem.param in inside or problem.param not in given):
                    problem.param = (key, problem.param)
            return problems
        self.settings.update({k: v for k, v in self.options[key].items() if k not in self.params})
        return []

    def _ambiguous(self, name: str, keys: list[str], chosen: dict[str, Any], own: bool = False) -> ParamError:
        """A name written beside the choices that more than one of this stage and its chosen functions declare."""
        whose = [f"{chosen[key].kind} {chosen[key].name!r}'s" for key in keys]
        owners = [f"stage {self.name!r}'s parameter", *whose] if own else whose
        inside = " and ".join(f"`{key}: {{name: {chosen[key].name}, {name}: ...}}`" for key in keys)
        beside = f"; beside it, {name!r} is the stage's" if own else ""
        return ParamError(
            f"{name!r} is both {' and '.join(owners)}",
            hint=f"give the {' and the '.join(chosen[key].kind for key in keys)}'s inside the choice: {inside}{beside}",
            param=name,
            about="key",
        )

    def _given_twice(self, name: str, key: str, function: Any) -> ParamError:
        return ParamError(
            f"{function.kind} {function.name!r} is given {name!r} twice, inside `{key}:` and beside it",
            hint=f"keep one of the two {name!r}",
            param=name,
            about="key",
        )

    def _taken_by_none(self, key: str, chosen: dict[str, Any]) -> ParamError:
        """A parameter neither this stage nor the functions it chose take: the function's own words when it chose one."""
        takers = [function for function in chosen.values() if hasattr(function, "configure")]
        if not takers:
            return self._no_parameter(key)
        if len(takers) == 1:
            return takers[0].no_parameter(key, list(self.params), f"stage {self.name!r}")
        own = [k for k, p in self.params.items() if p.role == "param"]
        taken = [name for function in takers for name in function.params]
        what = " nor ".join(f"{function.kind} {function.name!r}" for function in takers)
        return ParamError(
            f"neither {what} takes a parameter {key!r}",
            hint=did_you_mean(key, [*self.params, *taken]) or f"they accept {', '.join(taken) or 'no parameters'} (and the stage's own: {', '.join(own)})",
            param=key,
            about="key",
        )

    def __getattr__(self, name: str) -> Any:
        """A dispatched function's parameter reads like the stage's own (`separate.beta`)."""
        settings = self.__dict__.get("settings")
        if settings is not None and name in settings:
            return settings[name]
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def chosen(self, param: str) -> Any:
        """The registered function a dispatching parameter names (None when the parameter is null)."""
        from amemctl.plugins import get_registry, lookup

        name = self.settings[param]
        if name is None:
            return None
        try:
            return lookup(self.registry or get_registry(), self.dispatch[param], name)
        except ParamError as exc:
            exc.param = param
            raise

    def _function(self, param: str) -> Any:
        """The chosen function as a `Function` where it takes parameters (a plain Similarity's are its kernel's options)."""
        from amemctl.functions import as_function

        return as_function(self.chosen(param))

    def made(self, param: str, *args: Any) -> Any:
        """What the function a dispatching parameter chose makes with its checked parameters (and `args` before them):
        `self.made("similarity")` is the `Similarity`, `self.made("function")` the `Separation`.

        The same call as `amemctl.recall` makes for a similarity or separation it is given by
        name (amemctl/choices.py), so a pipeline and a notebook make the same object.
        """
        from amemctl.choices import make

        return make(self._function(param), *args, **self.options[param])

    def check(self) -> None:
        """Validate parameters against each other; raise ParamError. Runs before anything runs."""

    def fuse(self, following: "Sequence[Stage]") -> Fusion | None:
        """A run of this stage fused with some of the `following` ones, or None to run alone.

        The engine asks every stage; `score` offers score -> separate -> project as one
        streaming retrieval, which never forms the Q x N scores.
        """
        return None

    def inputs(self) -> list[str]:
        """Names of the context tensors this stage reads (from its Input parameters)."""
        return [self.settings[k] for k, p in self.params.items() if p.role == "input" and self.settings[k] is not None]

    def outputs(self) -> list[str]:
        """Names of the context tensors this stage writes (from its Output parameters)."""
        return [self.settings[k] for k, p in self.params.items() if p.role == "output" and self.settings[k] is not None]

    def files(self) -> list[FileUse]:
        """The files, folders and stores this configured stage reads or writes: its `reads=` / `writes=` parameters that are set.

        `amemctl validate` and `run` check that what it reads is there before anything runs,
        and a resumed run that its contents did not change. Override it when whether a
        parameter is a path depends on the others (`load`'s root is the image folder itself
        only for `dataset: folder`).
        """
        uses = []
        for key, param in self.params.items():
            value = self.settings.get(key)
            if param.path_kind is not None and isinstance(value, str) and value:
                uses.append(FileUse(key, value, param.path_kind, writes=param.writes is not None))
        return uses

    def run(self, ctx: "Context") -> None:
        """Read inputs from ctx, write outputs to ctx, record metrics; raise StageError on bad data."""
        raise NotImplementedError(f"stage {self.name!r} does not implement run()")

    def metrics(self) -> "list[str | Metric]":
        """The metrics this stage records: names, or `Metric`s that also say how figures read them.

        `report:` is checked against them before a run; a figure of a declared `Metric` is
        titled by its description, not its key.
        """
        return []

    def describe(self) -> str:
        """A short label of this configured stage for progress bars and tables."""
        return self.name

    def __repr__(self) -> str:
        shown = ", ".join(f"{k}={v!r}" for k, v in self.settings.items())
        return f"{type(self).__name__}({shown})"
