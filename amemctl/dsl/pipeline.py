"""A pipeline file, checked and planned: every sweep point with its configured stages.

Reading a pipeline checks everything that can be checked without running it: the
document's shape, unknown keys (with a did-you-mean), stage names, parameter names, types
and ranges, `${name}` references against the sweep, sweep variables nobody uses, and the
wiring (a stage reading a tensor that no earlier stage writes). All problems found are
reported together, each at the file:line:column of the text to change.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from amemctl.dsl import presets
from amemctl.dsl import sweep as sweeps
from amemctl.dsl.source import SourceMap, load_yaml, read_yaml
from amemctl.errors import AmemctlError, Location, PipelineError, StageCrash
from amemctl.plugins import BUILTIN, Registry, culprit, get_registry
from amemctl.stage import ParamError, Stage, declared_metrics
from amemctl.suggest import did_you_mean

#: Top-level keys of a pipeline and what each holds (docs/pipelines.md says more).
TOP_LEVEL = {
    "name": "the pipeline's name, a plain folder name (letters, digits, - _ .); runs go to runs/<name>/ (default: the file name)",
    "description": "free text shown in the report",
    "seed": "integer seed of every random choice, 0 or more (default 0)",
    "repeats": "run every sweep point this many times, with seeds seed, seed+1, ...; tables show mean and std (default 1; points x repeats at most AMEMCTL_MAX_POINTS)",
    "device": "auto, cpu, cuda or cuda:N (default auto)",
    "budget": "bytes of score-sized temporaries a retrieval may hold, e.g. 256MiB (default)",
    "data": "a dataset to load first, as the parameters of a `load` stage",
    "sweep": "variables and their values; every combination is one run",
    "stages": "the stages in order, each `- name: {parameters}`",
    "report": "tables and curves to write across the sweep points, and `formats: [png, svg, pdf]` of the figures",
}

DEVICE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")
_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "kib": 2**10, "mib": 2**20, "gib": 2**30}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$")

EXAMPLE = "name: demo\nstages:\n  - load: {dataset: digits}\n  ..."


class PipelineErrors(PipelineError):
    """Several problems in one pipeline, reported together."""

    def __init__(self, errors: list[AmemctlError]):
        super().__init__(f"{len(errors)} problem(s) in the pipeline")
        self.errors = errors

    def render(self) -> str:
        return "\n".join(e.render() for e in self.errors)


class _Collector:
    def __init__(self) -> None:
        self.errors: list[AmemctlError] = []
        self._seen: set[str] = set()

    def add(self, error: AmemctlError, location: Location | None = None) -> None:
        error.at(location)
        text = error.render()
        if text not in self._seen:
            self._seen.add(text)
            self.errors.append(error)

    def raise_if_any(self) -> None:
        if len(self.errors) == 1:
            raise self.errors[0]
        if self.errors:
            raise PipelineErrors(self._in_reading_order())

    def _in_reading_order(self) -> list[AmemctlError]:
        """The errors by file (in the order first met), then line and column; those without a line last.

        They are found stage by stage and point by point, not top to bottom; read as a list
        they should follow the file as the user does.
        """
        files: dict[str, int] = {}
        for error in self.errors:
            if error.location is not None:
                files.setdefault(error.location.file, len(files))

        def place(error: AmemctlError) -> tuple[int, int, int]:
            where = error.location
            if where is None or where.line is None:
                return (len(files), 0, 0)
            return (files[where.file], where.line, where.column or 0)

        return sorted(self.errors, key=place)


def raise_together(errors: list[AmemctlError]) -> None:
    """Raise `errors` as a pipeline's own problems are raised: each told once, in the file's reading order, one alone as itself."""
    collector = _Collector()
    for error in errors:
        collector.add(error)
    collector.raise_if_any()


@dataclass
class PlannedStage:
    """A configured stage of one sweep point, with where it was written."""

    stage: Stage
    location: Location
    index: int  #: position in `stages:`; -1 for the load implied by `data:`
    #: where a parameter's value was written (the parameter, or the sweep value it took)
    locator: "Callable[[str], Location] | None" = field(default=None, repr=False, compare=False)

    def location_of(self, param: str) -> Location:
        """Where the value of `param` was written: its line, the sweep value it came from, or the stage's line."""
        return self.locator(param) if self.locator is not None else self.location

    @property
    def key(self) -> str:
        """Identity of the stage's configuration, for reusing results across points."""
        return json.dumps([self.stage.name, self.index, self.stage.settings, self.stage.options], sort_keys=True, default=str)


@dataclass
class PointPlan:
    point: sweeps.Point
    stages: list[PlannedStage]
    #: a stage of this point could not be configured (its error is reported): what it would
    #: have written or recorded is unknown, so checks that depend on it are skipped
    incomplete: bool = False


@dataclass(frozen=True)
class TableSpec:
    """A table of one metric: rows and columns are sweep variables."""

    metric: str
    rows: list[str]
    columns: str | None
    title: str
    format: str
    reduce: str = "none"  #: none: one table per value of the other variables; else mean, median, min, max over them


@dataclass(frozen=True)
class CurveSpec:
    """A figure of one metric against a sweep variable, one line per value of the others."""

    metric: str
    x: str
    series: list[str]
    title: str
    log_x: bool


@dataclass
class Pipeline:
    """A checked pipeline, ready to run."""

    name: str
    description: str
    file: str
    text: str
    document: dict[str, Any]
    seed: int
    device: str
    budget: int
    sweep: dict[str, list[Any]]
    plans: list[PointPlan]
    tables: list[TableSpec] = field(default_factory=list)
    curves: list[CurveSpec] = field(default_factory=list)
    repeats: int = 1
    formats: tuple[str, ...] = ()  #: figure formats written beside the PNGs (report.formats)
    #: the registry the pipeline was checked with; the engine hands it to the stages
    registry: Registry | None = field(default=None, repr=False, compare=False)


def load_pipeline(
    path: "str | Path",
    overrides: list[str] | None = None,
    registry: Registry | None = None,
) -> Pipeline:
    """Read, override (`key.path=value`), check and plan the pipeline at `path`."""
    doc, source, text = read_yaml(path)
    if overrides:
        doc = apply_overrides(doc, overrides, source, registry)
    return parse_pipeline(doc, source, text=text, registry=registry)


def parse_text(text: str, file: str = "<pipeline>", registry: Registry | None = None) -> Pipeline:
    """Check and plan a pipeline given as YAML text (tests and notebooks)."""
    doc, source = load_yaml(text, file)
    return parse_pipeline(doc, source, text=text, registry=registry)


def apply_overrides(doc: Any, overrides: list[str], source: SourceMap, registry: Registry | None = None) -> Any:
    """Apply `--set key.path=value` overrides; stages may be addressed by index or unique name.

    The value replaces what is at the path, as YAML reads it. `stages.NAME` is the stage's
    whole entry (`score: {...}`), so its value is an entry too (a stage name, or
    `{name: {parameters}}`); a mapping of parameters there is refused, with the overrides
    that change them (`stages.score.similarity=cosine`). `registry` knows the stage names
    (the process's when None).
    """
    replaced: dict[str, tuple[str, Location]] = {}  # sweep variable -> the override that removed a use of it
    for item in overrides:
        where = Location(f"--set {item}")
        if "=" not in item:
            raise PipelineError("an override reads key.path=value", hint="e.g. --set seed=3", location=where)
        dotted, _, raw = item.partition("=")
        value = load_yaml(raw, str(where))[0] if raw.strip() else ""  # the same limits and tags as files
        if not isinstance(doc, dict):
            raise PipelineError("the pipeline is not a mapping; nothing to override", location=where)
        before = _swept(doc)
        doc = _set_path(doc, [p for p in dotted.strip().split(".") if p], value, where, source, registry)
        replaced.update({var: (dotted.strip(), where) for var in before - _swept(doc)})
    for var, (dotted, where) in replaced.items():
        if isinstance(doc.get("sweep"), dict) and var in doc["sweep"]:
            raise PipelineError(
                f"{dotted} is swept by ${{{var}}}: the override would leave the sweep variable {var!r} unused",
                hint=f"set the sweep's values instead, e.g. --set 'sweep.{var}=[...]'",
                location=where,
            )
    return doc


def _swept(doc: dict) -> set[str]:
    """The sweep variables the document's stages (and anything but the sweep itself) use."""
    return {var.split(".")[0] for key, value in doc.items() if key != "sweep" for _, var in sweeps.references(value)}


def _set_path(doc: dict, parts: list[str], value: Any, where: Location, source: SourceMap, registry: Registry | None = None) -> dict:
    if not parts:
        raise PipelineError("an override needs a key before '='", location=where)
    node: Any = doc
    path: tuple[Any, ...] = ()
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        if isinstance(node, list):
            index = _list_index(node, part, path, where)
            if last:
                if path == ("stages",):
                    _check_entry(node[index], value, parts, where, registry)
                node[index] = value
            else:
                if path == ("stages",) and isinstance(node[index], str):  # a bare `- project`: its parameters are {}
                    node[index] = {node[index]: None}
                node = node[index]
                if isinstance(node, dict) and len(node) == 1 and path == ("stages",):
                    stage_name = next(iter(node))
                    if node[stage_name] is None:
                        node[stage_name] = {}
                    node = node[stage_name]
                    path += (index, stage_name)
                    continue
            path += (index,)
        elif isinstance(node, dict):
            if last:
                node[part] = value
            else:
                if node.get(part) is None:
                    node[part] = {}
                node = node[part]
            path += (part,)
        else:
            raise PipelineError(f"cannot set {'.'.join(parts)}: {'.'.join(map(str, path))} is not a mapping or list", location=where)
    # Errors about the new value (and anything inside it) point at the override.
    for table in (source.values, source.keys):
        for known in [k for k in table if k[: len(path)] == path]:
            del table[known]
        table[path] = where
    return doc


def _check_entry(entry: Any, value: Any, parts: list[str], where: Location, registry: Registry | None) -> None:
    """Refuse a `--set stages.X=VALUE` whose value is not a stage entry, with the overrides that do what it seems to mean.

    `stages.score` is the whole entry `score: {...}`; `--set stages.score={similarity: cosine}`
    made a stage called `similarity` and was told "unknown stage". A value is an entry when it
    names a stage or preset (`project`, `{model: mchn}`) or maps one name to parameters
    (`{score: {similarity: cosine}}`, a misspelt name then told as unknown, with its fix).
    """
    known = set((registry or get_registry()).stages) | {"model"}
    if isinstance(value, str) and value in known:
        return
    if isinstance(value, dict) and len(value) == 1:
        (key, params), = value.items()
        if key in known or params is None or isinstance(params, dict):
            return
    name = entry if isinstance(entry, str) else next(iter(entry), "?") if isinstance(entry, dict) and len(entry) == 1 else "?"
    address = ".".join(parts)
    shown = repr(value) if isinstance(value, str) else _flow(value)
    if isinstance(value, dict) and value:
        each = " ".join(f"--set {_quoted(f'{address}.{k}={_flow(v)}')}" for k, v in value.items())
        hint = f"to change its parameters, set each one: {each}; to replace the whole stage, name it: --set {_quoted(f'{address}={_flow({name: value})}')}"
    else:
        registry = registry or get_registry()
        cls = registry.stages.get(name)
        params = [k for k, p in cls.params.items() if p.role == "param"] if cls is not None else []
        chooses = [k for k, kind in (cls.dispatch.items() if cls is not None else ()) if isinstance(value, str) and value in registry.table(kind)]
        if chooses:  # `--set stages.score=cosine`: the similarity it chooses
            hint = f"to choose it: --set {_quoted(f'{address}.{chooses[0]}={_flow(value)}')}"
        else:
            listed = f" (its parameters: {', '.join(params)})" if params else ""
            hint = f"to change one of its parameters: --set {_quoted(f'{address}.PARAMETER={_flow(value)}')}{listed}"
        hint += f"; to put another stage there: --set {_quoted(f'{address}={{NAME: {{...}}}}')}"
    raise PipelineError(f"{address} is the whole entry of stage {name!r}, and {shown} is not a stage entry (`name` or `{{name: {{parameters}}}}`)", hint=hint, location=where)


def _flow(value: Any) -> str:
    """A value as one line of YAML, as it would be typed after `--set key=`."""
    import yaml

    return yaml.safe_dump(value, default_flow_style=True, sort_keys=False, width=10**6).removesuffix("...\n").strip()


def _quoted(argument: str) -> str:
    """A shell word: quoted when it holds characters a shell would read (in double quotes when it holds a single one)."""
    import shlex

    if "'" in argument and not any(c in argument for c in '"$`\\!'):
        return f'"{argument}"'
    return shlex.quote(argument)


def _list_index(items: list, part: str, path: tuple, where: Location) -> int:
    if part.lstrip("-").isdigit():
        index = int(part)
        if -len(items) <= index < len(items):
            return index % len(items)
        raise PipelineError(f"index {index} is out of range: {'.'.join(map(str, path))} has {len(items)} entries", location=where)
    matches = [i for i, item in enumerate(items) if isinstance(item, dict) and part in item or item == part]
    if len(matches) == 1:
        return matches[0]
    if not matches:
        raise PipelineError(f"no stage named {part!r} to override", location=where)
    raise PipelineError(f"{len(matches)} stages are named {part!r}", hint="address one by its index, e.g. stages.2.beta=10", location=where)


def parse_pipeline(doc: Any, source: SourceMap, *, text: str = "", registry: Registry | None = None) -> Pipeline:
    """Check a loaded pipeline document and plan every sweep point; raise all problems found."""
    registry = registry or get_registry()
    file = source.file
    if doc is None:
        raise PipelineError("the pipeline is empty", hint=f"a pipeline is a mapping, for example:\n{EXAMPLE}", location=Location(file))
    if not isinstance(doc, dict):
        raise PipelineError(
            f"a pipeline is a mapping of keys (name, stages, ...), not a {type(doc).__name__}",
            hint="put the stage list under `stages:`",
            location=source.value(()),
        )

    errors = _Collector()
    for key in doc:
        if key not in TOP_LEVEL:
            errors.add(
                PipelineError(f"unknown key {key!r}", hint=did_you_mean(str(key), TOP_LEVEL) or f"allowed: {', '.join(TOP_LEVEL)}"),
                source.key((key,)),
            )

    name = _name(doc, Path(file).stem, source, errors)
    description = _scalar(doc, "description", str, "", source, errors)
    seed = _scalar(doc, "seed", int, 0, source, errors)
    if seed < 0:  # every stage's seed derives from it (numpy's SeedSequence), which takes no negative number
        errors.add(PipelineError(f"`seed` must be at least 0, got {seed}", hint=TOP_LEVEL["seed"]), source.value(("seed",)))
        seed = 0
    repeats = _scalar(doc, "repeats", int, 1, source, errors)
    if repeats < 1:
        errors.add(PipelineError(f"`repeats` must be at least 1, got {repeats}"), source.value(("repeats",)))
        repeats = 1
    device = _scalar(doc, "device", str, "auto", source, errors)
    if isinstance(device, str) and not DEVICE.match(device):
        errors.add(PipelineError(f"unknown device {device!r}", hint="use auto, cpu, cuda or cuda:N"), source.value(("device",)))
    budget = _budget(doc.get("budget"), source, errors)
    sweep = _sweep(doc.get("sweep"), source, errors)
    _check_size(sweep, repeats, source, errors)

    raw_stages = doc.get("stages")
    if raw_stages is None:
        errors.add(PipelineError("the pipeline has no `stages:`", hint="add a list of stages, e.g. `- load: {dataset: digits}`"), Location(file))
        raw_stages = []
    elif not isinstance(raw_stages, list) or not raw_stages:
        errors.add(PipelineError("`stages:` must be a non-empty list", hint="write each stage as `- name: {parameters}`"), source.value(("stages",)))
        raw_stages = []
    entries = _stage_entries(doc.get("data"), raw_stages, source, errors)
    _check_references(entries, sweep, source, errors)
    errors.raise_if_any()

    plans = [_plan_point(point, entries, sweep, source, registry, errors) for point in sweeps.points(sweep)]
    tables, curves = _report(doc.get("report"), sweep, plans, source, errors)
    formats = _formats(doc.get("report"), source, errors)
    errors.raise_if_any()
    return Pipeline(name, description, file, text, doc, seed, device, budget, sweep, plans, tables, curves, repeats, formats, registry)


# ---------------------------------------------------------------------------------------
# top-level values


def _scalar(doc: dict, key: str, kind: type, default: Any, source: SourceMap, errors: _Collector) -> Any:
    value = doc.get(key, default)
    if value is None:
        return default
    if kind is int and isinstance(value, bool) or not isinstance(value, kind):
        noun = {int: "an integer", str: "a string"}[kind]
        errors.add(PipelineError(f"`{key}` must be {noun}, got {value!r}", hint=TOP_LEVEL[key]), source.value((key,)))
        return default
    return value


#: what a pipeline's `name` may be: one plain folder name, since runs go to <out>/<name>/
NAME = re.compile(r"^[A-Za-z0-9_.-]+$")


def _name(doc: dict, default: str, source: SourceMap, errors: _Collector) -> str:
    """The pipeline's name: a plain folder name (letters, digits, - _ .), so its runs stay inside --out.

    `name: ../../elsewhere` or `--set name=/tmp/x` would put the run folder outside it. The
    default, the file's name, is one path component already and is kept, less the characters
    no portable folder name has (`parse_text`'s file `<pipeline>` names runs `pipeline`).
    """
    value = doc.get("name")
    # parse_text's "<pipeline>" would make runs/<pipeline>/: no folder name to type in a shell, nor to have on Windows
    default = re.sub(r'[<>:"/\\|?*]', "", default)
    if not isinstance(value, str):  # absent: the file's name; another type: _scalar's error
        return _scalar(doc, "name", str, default if default not in ("", ".", "..") else "pipeline", source, errors)
    if NAME.match(value) and value not in (".", ".."):
        return value
    errors.add(
        PipelineError(
            f"`name` must be a plain folder name (letters, digits, - _ .), got {value!r}",
            hint="runs go to <out>/<name>/<time>/: give a name such as `name: quickstart`, and choose where runs go with --out",
        ),
        source.value(("name",)),
    )
    return default


def _check_size(sweep: dict[str, list[Any]], repeats: int, source: SourceMap, errors: _Collector) -> None:
    """Refuse a sweep whose points, or points x repeats (each a run of its own), pass the limit, before any is expanded."""
    points, limit = sweeps.size(sweep), sweeps.max_points()
    if points * repeats <= limit:
        return
    shape = " x ".join(f"{len(v):,} {k}" for k, v in sweep.items())
    if points > limit:
        message = f"the sweep has {points:,} points ({shape}), more than the limit of {limit:,}"
        hint, where = "sweep fewer values", ("sweep",)
    else:
        message = f"{points:,} sweep point(s) x {repeats:,} repeats are {points * repeats:,} point runs, more than the limit of {limit:,}"
        hint, where = "lower `repeats` or sweep fewer values", ("repeats",)
    errors.add(PipelineError(message, hint=f"{hint}, or raise the limit with the environment variable {sweeps.MAX_POINTS_ENV}=N"), source.value(where))
    errors.raise_if_any()


def parse_size(value: Any) -> int:
    """Bytes from an integer or a string such as `256MiB` or `1.5GB`."""
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    match = _SIZE.match(str(value))
    if match and match.group(2).lower() in _UNITS and float(match.group(1)) > 0:
        return int(float(match.group(1)) * _UNITS[match.group(2).lower()])
    raise ValueError(value)


def _budget(value: Any, source: SourceMap, errors: _Collector) -> int:
    from amemctl.core.retrieval import DEFAULT_BUDGET

    if value is None:
        return DEFAULT_BUDGET
    try:
        return parse_size(value)
    except ValueError:
        errors.add(
            PipelineError(f"`budget` must be a positive size, got {value!r}", hint="e.g. 268435456, 256MiB or 1GB"),
            source.value(("budget",)),
        )
        return DEFAULT_BUDGET


def _sweep(value: Any, source: SourceMap, errors: _Collector) -> dict[str, list[Any]]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        errors.add(PipelineError("`sweep:` must map variable names to lists of values", hint="e.g. sweep: {beta: [1, 10, 100]}"), source.value(("sweep",)))
        return {}
    result = {}
    for var, values in value.items():
        if not isinstance(var, str) or not sweeps.NAME.fullmatch(var):
            errors.add(PipelineError(f"sweep variable {var!r} is not a valid name", hint="use letters, digits and _"), source.key(("sweep", var)))
            continue
        if not isinstance(values, list) or not values:
            errors.add(
                PipelineError(f"sweep variable {var!r} needs a non-empty list of values", hint=f"write `{var}: [{values!r}]` for a single value"),
                source.value(("sweep", var)),
            )
            continue
        labels = Counter(sweeps.value_label(v) for v in values)
        twice = sorted(label for label, n in labels.items() if n > 1)
        if twice:
            errors.add(
                PipelineError(f"values of sweep variable {var!r} read the same in tables: {', '.join(repr(t) for t in twice)}", hint="give mapping values distinct `name:` fields"),
                source.value(("sweep", var)),
            )
            continue
        result[var] = values
    return result


# ---------------------------------------------------------------------------------------
# stages


@dataclass
class _Entry:
    """A stage as written: its name, raw parameters, and the path of its entry."""

    name: str
    params: Any
    path: tuple[Any, ...]  #: ("stages", i) or ("data",)
    params_path: tuple[Any, ...]
    index: int


def _stage_entries(data: Any, raw: list, source: SourceMap, errors: _Collector) -> list[_Entry]:
    entries = []
    if data is not None:
        if isinstance(data, dict):
            entries.append(_Entry("load", data, ("data",), ("data",), -1))
        else:
            errors.add(PipelineError("`data:` must be a mapping of `load` parameters", hint="e.g. data: {dataset: digits}"), source.value(("data",)))
    for i, item in enumerate(raw):
        path = ("stages", i)
        if isinstance(item, str):
            entries.append(_Entry(item, {}, path, path, i))
        elif isinstance(item, dict) and len(item) == 1:
            (name, params), = item.items()
            entries.append(_Entry(str(name), {} if params is None else params, path, (*path, name), i))
        elif isinstance(item, dict) and item:
            first = next(iter(item))
            others = ", ".join(map(str, list(item)[1:]))
            errors.add(
                PipelineError(
                    f"a stage entry has one key, the stage's name; this one has {len(item)} ({', '.join(map(str, item))})",
                    hint=f"indent {others} under `{first}:` so they become its parameters",
                ),
                source.value(path),
            )
        else:
            errors.add(PipelineError(f"a stage entry is `- name: {{parameters}}`, got {item!r}"), source.value(path))
    return entries


def _check_references(entries: list[_Entry], sweep: dict, source: SourceMap, errors: _Collector) -> None:
    """Every ${var} names a sweep variable and every sweep variable is used.

    One misspelling gives one error: a variable referenced several times is reported once
    (at its first use), and an unused sweep variable that a wrong reference resembles is
    named in that error rather than reported again.
    """
    used: set[str] = set()
    unknown: dict[str, list[tuple]] = {}
    for entry in entries:
        for sub, reference in sweeps.references(entry.params):
            var = reference.split(".")[0]
            used.add(var)
            if var not in sweep:
                unknown.setdefault(var, []).append((*entry.params_path, *sub))
    unused = [var for var in sweep if var not in used]
    explained: set[str] = set()
    for var, paths in unknown.items():
        times = f" (used {len(paths)} times)" if len(paths) > 1 else ""
        close = did_you_mean(var, unused)
        if close:
            match = next(v for v in unused if close == did_you_mean(var, [v]))
            explained.add(match)
            hint = f"the sweep defines {match!r}, which nothing uses: rename one of them"
        else:
            hint = did_you_mean(var, sweep) or (f"defined: {', '.join(sweep)}" if sweep else "add it under `sweep:`")
        errors.add(PipelineError(f"${{{var}}} is not a sweep variable{times}", hint=hint), source.value(paths[0]))
    for var in unused:
        if var not in explained:
            errors.add(
                PipelineError(f"sweep variable {var!r} is never used", hint=f"write ${{{var}}} in a stage parameter, or remove it"),
                source.key(("sweep", var)),
            )


def _plan_point(
    point: sweeps.Point,
    entries: list[_Entry],
    sweep: dict,
    source: SourceMap,
    registry: Registry,
    errors: _Collector,
) -> PointPlan:
    from amemctl.plugins import stage_class

    planned: list[PlannedStage] = []
    available: dict[str, str] = {}  # tensor -> stage that writes it
    incomplete = False
    blind = False  # after an unknown stage, what later stages read cannot be checked
    for entry in _expanded(entries, point, sweep, source, errors):
        where = source.key(entry.path) if entry.index < 0 else source.value(entry.path)
        try:
            cls = stage_class(entry.name, registry)
        except AmemctlError as exc:
            errors.add(exc, source.key((*entry.path, entry.name)) if entry.index >= 0 else where)
            incomplete = blind = True
            continue
        try:
            params, whole = sweeps.substitute(entry.params, point.values)
        except sweeps.MissingField as exc:
            _missing_field(exc, point, source, errors)
            _assume_outputs(cls, entry.params if isinstance(entry.params, dict) else {}, entry, available)
            incomplete = True
            continue
        if () in whole and isinstance(params, dict):
            params = {k: v for k, v in params.items() if k != "name"}  # `name` labels a sweep value; no stage takes it
        if not isinstance(params, dict):
            errors.add(PipelineError(f"the parameters of stage {entry.name!r} must be a mapping, got {params!r}"), source.value(entry.params_path))
            incomplete = True
            continue
        try:
            stage = cls(registry, **params)  # the registry checked against: its functions, not the process's
        except AmemctlError as exc:
            if isinstance(exc, ParamError):
                for problem in exc.each():  # a stage's several mistakes, each at its own line
                    errors.add(_locate(problem, entry, whole, point, sweep, source))
            else:
                errors.add(exc, where)
            _assume_outputs(cls, params, entry, available)
            incomplete = True
            continue
        except Exception as exc:  # a bug in the stage's check() or a function's check=: one message, not a traceback
            errors.add(_check_crash(exc, cls, registry), where)
            _assume_outputs(cls, params, entry, available)
            incomplete = True
            continue
        if not blind:
            _check_wiring(stage, entry, available, source, errors)
        for name in stage.outputs():
            available[name] = stage.name
        planned.append(PlannedStage(stage, where, entry.index, _locator(entry, whole, point, sweep, source)))
    return PointPlan(point, planned, incomplete)


def _locator(entry: _Entry, whole: dict, point: sweeps.Point, sweep: dict, source: SourceMap) -> Callable[[str], Location]:
    """Where each parameter of a configured stage was written, found as its errors are (_locate), when asked."""

    def locate(param: str) -> Location:
        located = _locate(ParamError("", param=param), entry, whole, point, sweep, source).location
        return located if located is not None else source.value(entry.path)

    return locate


def _check_crash(exc: Exception, cls: type, registry: Registry) -> StageCrash:
    """A stage (or a function it chose) raised while checking its parameters: whose bug, and where in its code."""
    found = culprit(exc, registry)
    blamed = registry.blamed_plugin(exc)  # a function it chose that amemctl could not use (a separation class that cannot be made)
    if found is not None:
        whose = f"a bug in the package {found.package} at {found.where}"
    elif blamed is not None:
        whose = f"a bug in the package {blamed[0]} ({blamed[1]})"
    else:
        whose = f"a bug in the package {registry.package_of('stages', cls.name)}"
    return StageCrash(
        f"stage {cls.name!r} crashed while checking its parameters: {type(exc).__name__}: {exc}",
        hint=f"{whose}, not a mistake in the pipeline; parameters that do not go together "
        "raise amemctl.ParamError(message, hint=..., param=NAME), which names the line to change",
    )


def _missing_field(exc: sweeps.MissingField, point: sweeps.Point, source: SourceMap, errors: _Collector) -> None:
    """`${var.field}` where this point's value of var lacks the field: reported at that sweep value."""
    var = exc.reference.split(".")[0]
    errors.add(
        PipelineError(f"${{{exc.reference}}}: the sweep value {sweeps.value_label(exc.value)!r} of {var!r} has no such field", hint="give every value of the variable that field"),
        source.value(("sweep", var, point.positions[var])),
    )


def _assume_outputs(cls: type, params: dict, entry: _Entry, available: dict[str, str]) -> None:
    """After a stage's own error, let later stages read what it would have written (no cascade of errors).

    A misspelt output parameter (`outptu: test_images`) counts as the output it resembles.
    """
    for key, param in cls.params.items():
        if param.role == "output" and params.get(key, param.default) is not None:
            available[str(params.get(key, param.default))] = entry.name
    outputs = [key for key, param in cls.params.items() if param.role == "output"]
    for key, value in params.items():
        if key not in cls.params and isinstance(value, str) and did_you_mean(str(key), outputs):
            available[value] = entry.name


def _expanded(entries: list[_Entry], point: sweeps.Point, sweep: dict, source: SourceMap, errors: _Collector) -> list[_Entry]:
    """Entries with every `model:` preset replaced by the stages it stands for (after substitution)."""
    result = []
    for entry in entries:
        if entry.name != "model":
            result.append(entry)
            continue
        try:
            params, whole = sweeps.substitute(entry.params, point.values)
            stages = presets.expand(params)
        except sweeps.MissingField as exc:
            _missing_field(exc, point, source, errors)
            continue
        except PipelineError as exc:
            var = whole.get(()) or whole.get(("name",))
            errors.add(exc, source.value(("sweep", var, point.positions[var])) if var else source.value(entry.params_path))
            continue
        result += [_Entry(name, stage_params, entry.path, entry.params_path, entry.index) for name, stage_params in stages]
    return result


def _locate(exc: ParamError, entry: _Entry, whole: dict, point: sweeps.Point, sweep: dict, source: SourceMap) -> ParamError:
    """Point a parameter error at the text to change: the sweep value it came from, or the parameter.

    A parameter inside a choice (`similarity: {name: kl, eps: 0}`) has a path of two keys; a
    sweep variable may stand for the whole stage mapping, the choice, or the value itself.
    """
    keys = exc.param if isinstance(exc.param, tuple) else () if exc.param is None else (exc.param,)
    if exc.about == "key" and keys and _written(entry.params, keys):  # a misspelt key is in the stage's text, not in the sweep value it takes
        return exc.at(source.key((*entry.params_path, *keys)))
    for depth in range(len(keys) + 1):
        var = whole.get(keys[:depth])
        if var is None:
            continue
        index = point.positions[var]
        exc.message += f" (from sweep variable {var!r}, value {index + 1})"
        rest = keys[depth:]
        if rest:  # a mapping from the sweep: the parameter inside it, where written
            inside = ("sweep", var, index, *rest)
            return exc.at(source.key(inside) if exc.about == "key" else source.value(inside))
        return exc.at(source.value(("sweep", var, index)))
    if keys:
        path = (*entry.params_path, *keys)
        return exc.at(source.value(path) if exc.about == "value" and path in source.values else source.key(path))
    return exc.at(source.key((*entry.path, entry.name)) if entry.index >= 0 else source.key(entry.path))


def _written(params: Any, keys: tuple) -> bool:
    """Whether the stage's own text holds the key at `keys` (not a `${var}` standing for a mapping that holds it)."""
    for key in keys:
        if not isinstance(params, dict) or key not in params:
            return False
        params = params[key]
    return True


def _check_wiring(stage: Stage, entry: _Entry, available: dict[str, str], source: SourceMap, errors: _Collector) -> None:
    for tensor in stage.inputs():
        if tensor in available:
            continue
        key = next((k for k, v in stage.settings.items() if v == tensor or (isinstance(v, list) and tensor in v)), None)
        if available:
            hint = did_you_mean(tensor, available) or f"tensors written so far: {', '.join(available)}"
        else:
            hint = "no stage before it writes anything; start with a `load` stage or a `data:` section"
        path = (*entry.params_path, key)
        where = source.value(path) if path in source.values else source.key((*entry.path, entry.name))
        errors.add(PipelineError(f"stage {stage.name!r} reads tensor {tensor!r} ({key}), which no earlier stage writes", hint=hint), where)


# ---------------------------------------------------------------------------------------
# report


def _report(value: Any, sweep: dict, plans: list[PointPlan], source: SourceMap, errors: _Collector) -> tuple[list[TableSpec], list[CurveSpec]]:
    if value is None:
        return [], []
    if not isinstance(value, dict):
        errors.add(PipelineError("`report:` must be a mapping with `tables:` and/or `curves:`"), source.value(("report",)))
        return [], []
    for key in value:
        if key not in ("tables", "curves", "formats"):
            errors.add(PipelineError(f"unknown report key {key!r}", hint=did_you_mean(str(key), ["tables", "curves", "formats"]) or "use tables, curves or formats"), source.key(("report", key)))
    # a stage that could not be configured records metrics nobody knows: check none then
    declared = set() if any(plan.incomplete for plan in plans) else set(declared_metrics(s.stage for plan in plans for s in plan.stages))
    silent = _silent(plans)
    tables = [t for i, raw in enumerate(_list(value, "tables", source, errors)) if (t := _table(raw, ("report", "tables", i), sweep, declared, source, errors, silent))]
    curves = [c for i, raw in enumerate(_list(value, "curves", source, errors)) if (c := _curve(raw, ("report", "curves", i), sweep, declared, source, errors, silent))]
    return tables, curves


FIGURE_FORMATS = ("png", "svg", "pdf")


def _formats(value: Any, source: SourceMap, errors: _Collector) -> tuple[str, ...]:
    """`report.formats`: figure formats written beside the PNGs (svg, pdf)."""
    if not isinstance(value, dict) or value.get("formats") is None:
        return ()
    formats = value["formats"]
    if not isinstance(formats, list) or not all(isinstance(f, str) for f in formats):
        errors.add(PipelineError("`report.formats` must be a list of figure formats", hint="e.g. formats: [png, svg]"), source.value(("report", "formats")))
        return ()
    for i, f in enumerate(formats):
        if f not in FIGURE_FORMATS:
            errors.add(PipelineError(f"unknown figure format {f!r}", hint=did_you_mean(f, list(FIGURE_FORMATS)) or "use png, svg or pdf"), source.value(("report", "formats", i)))
    return tuple(f for f in formats if f in FIGURE_FORMATS and f != "png")


def _list(value: dict, key: str, source: SourceMap, errors: _Collector) -> list:
    items = value.get(key) or []
    if not isinstance(items, list):
        errors.add(PipelineError(f"`report.{key}` must be a list"), source.value(("report", key)))
        return []
    return items


_TABLE_KEYS = {"metric", "rows", "columns", "title", "format", "reduce"}
REDUCTIONS = ("none", "mean", "median", "min", "max")
_CURVE_KEYS = {"metric", "x", "series", "title", "log_x"}
FORMATS = ("percent", "float", "seconds", "int")


def default_format(metric: str) -> str:
    """How a metric reads when a table does not say: error rates (fractions) in percent, durations (`seconds` a word of the name) in seconds, the rest as numbers.

    `seconds.retrieve` and `simclr_seconds_per_epoch` are seconds; `images_per_second` is a rate, not one.
    """
    if "error" in metric:
        return "percent"
    return "seconds" if "seconds" in re.split(r"[^a-z0-9]+", metric.lower()) else "float"


def _fields(raw: Any, path: tuple, allowed: set[str], source: SourceMap, errors: _Collector) -> dict | None:
    if not isinstance(raw, dict) or "metric" not in raw:
        errors.add(PipelineError("each report entry is a mapping with at least `metric:`"), source.value(path))
        return None
    for key in raw:
        if key not in allowed:
            errors.add(PipelineError(f"unknown key {key!r}", hint=did_you_mean(str(key), allowed) or f"allowed: {', '.join(sorted(allowed))}"), source.key((*path, key)))
    return raw


def _silent(plans: list[PointPlan]) -> list[str]:
    """Plugin stages of the pipeline that declare no metrics: the likely recorders of a metric `report:` names that nobody declares."""
    silent = []
    for plan in plans:
        for planned in plan.stages:
            stage = planned.stage
            registry = stage.registry
            package = registry.package_of("stages", stage.name) if registry is not None else "?"
            if package not in (BUILTIN, "?") and not stage.metrics() and stage.name not in silent:
                silent.append(stage.name)
    return silent


def _metric(raw: dict, path: tuple, declared: set[str], source: SourceMap, errors: _Collector, silent: list[str] = ()) -> str:
    metric = str(raw["metric"])
    if declared and metric not in declared and not metric.startswith("seconds"):
        hint = did_you_mean(metric, declared) or f"recorded: {', '.join(sorted(declared))}"
        if silent:  # a plugin stage that records it with ctx.metric but forgot to say so
            hint += f"; plugin stage(s) {', '.join(repr(n) for n in silent)} declare no metrics: a stage lists what it records in `metrics(self)`"
        errors.add(PipelineError(f"no stage records the metric {metric!r}", hint=hint), source.value((*path, "metric")))
    return metric


def _vars(raw: Any, path: tuple, sweep: dict, source: SourceMap, errors: _Collector) -> list[str]:
    """Sweep variables named by a report entry; `var.field` reads a field of mapping values."""
    names = [] if raw is None else raw if isinstance(raw, list) else [raw]
    for name in names:
        if str(name).split(".")[0] not in sweep:
            errors.add(
                PipelineError(f"{name!r} is not a sweep variable", hint=did_you_mean(str(name), sweep) or f"sweep variables: {', '.join(sweep) or 'none'}"),
                source.value(path),
            )
    return [str(n) for n in names]


def _table(raw: Any, path: tuple, sweep: dict, declared: set[str], source: SourceMap, errors: _Collector, silent: list[str] = ()) -> TableSpec | None:
    if _fields(raw, path, _TABLE_KEYS, source, errors) is None:
        return None
    metric = _metric(raw, path, declared, source, errors, silent)
    names = list(sweep)
    columns_given = _vars(raw.get("columns"), (*path, "columns"), sweep, source, errors)
    columns = columns_given[0] if columns_given else (names[-1] if names and "rows" not in raw else None)
    rows = _vars(raw.get("rows"), (*path, "rows"), sweep, source, errors) if "rows" in raw else [n for n in names if n != (columns or "").split(".")[0]]
    fmt = raw.get("format", default_format(metric))
    if fmt not in FORMATS:
        errors.add(PipelineError(f"unknown format {fmt!r}", hint=f"use one of {', '.join(FORMATS)}"), source.value((*path, "format")))
    reduce = raw.get("reduce", "none")
    if reduce not in REDUCTIONS:
        errors.add(PipelineError(f"unknown reduction {reduce!r}", hint=f"use one of {', '.join(REDUCTIONS)}"), source.value((*path, "reduce")))
    return TableSpec(metric, rows, columns, str(raw.get("title", metric)), fmt, reduce)


def _curve(raw: Any, path: tuple, sweep: dict, declared: set[str], source: SourceMap, errors: _Collector, silent: list[str] = ()) -> CurveSpec | None:
    if _fields(raw, path, _CURVE_KEYS, source, errors) is None:
        return None
    metric = _metric(raw, path, declared, source, errors, silent)
    if "x" not in raw:
        errors.add(PipelineError("a curve needs `x:`, the sweep variable on the horizontal axis"), source.value(path))
        return None
    x = _vars(raw["x"], (*path, "x"), sweep, source, errors)
    shown = {v.split(".")[0] for v in x}
    series = _vars(raw.get("series"), (*path, "series"), sweep, source, errors) if "series" in raw else [n for n in sweep if n not in shown]
    return CurveSpec(metric, x[0] if x else "", series, str(raw.get("title", metric)), bool(raw.get("log_x", False)))


def _explained(stage: Stage) -> dict[str, Any]:
    """The settings a reader of the plan needs: the functions chosen, and every value not at its declared default.

    A chosen function's parameter named like one of the stage's own (given inside the choice)
    reads `similarity.normalize`.
    """
    from amemctl.functions import as_function

    shown = {k: v for k, v in stage.settings.items() if k in stage.params and (k in stage.dispatch or v != stage.params[k].default)}
    for key in stage.dispatch:
        declared = getattr(as_function(stage.chosen(key)), "params", {})
        for name, value in stage.options.get(key, {}).items():
            if name not in declared or value != declared[name].default:
                shown[f"{key}.{name}" if name in stage.params else name] = value
    return shown


def explain(pipeline: Pipeline) -> str:
    """Each distinct plan of the pipeline's sweep points: the stages with their resolved settings."""
    groups: dict[str, list[PointPlan]] = {}
    for plan in pipeline.plans:
        groups.setdefault("|".join(s.key for s in plan.stages), []).append(plan)
    lines = []
    for plans in groups.values():
        labels = [p.point.label() for p in plans]
        head = labels[0] if len(labels) == 1 else f"{labels[0]} (and {len(labels) - 1} more point(s) with the same plan)"
        lines.append(f"{head}:")
        for i, planned in enumerate(plans[0].stages, 1):
            stage = planned.stage
            given = _explained(stage)
            shown = " ".join(f"{k}={v!r}" if isinstance(v, str) else f"{k}={v}" for k, v in given.items())
            lines.append(f"  {i}. {stage.name}" + (f": {shown}" if shown else "") + f"    ({planned.location})")
    return "\n".join(lines)
