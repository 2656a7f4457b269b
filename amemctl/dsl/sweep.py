"""Sweeps: a matrix of named values, and `${name}` substitution into stage parameters.

Every combination of the sweep's values is one point, run separately, giving one row of
the result tables. `${name}` standing alone keeps the value's type (a number, a list, a
whole mapping of parameters); inside a longer string it is interpolated as text.
"""

from __future__ import annotations

import itertools
import math
import os
import re
from dataclasses import dataclass
from typing import Any, Iterator

#: sweeps with more points than this are refused before any is expanded (environment AMEMCTL_MAX_POINTS)
DEFAULT_MAX_POINTS = 10_000
MAX_POINTS_ENV = "AMEMCTL_MAX_POINTS"

REFERENCE = re.compile(r"\$\{\s*([A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z0-9_-]+)*)\s*\}")
NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class MissingField(LookupError):
    """`${var.field}` where the sweep value has no such field."""

    def __init__(self, reference: str, value: Any) -> None:
        super().__init__(reference)
        self.reference = reference
        self.value = value


def lookup(reference: str, bindings: dict[str, Any]) -> Any:
    """The value of `name` or `name.field.field` among the bindings (KeyError if name is unbound)."""
    name, *fields = reference.split(".")
    value = bindings[name]
    for field in fields:
        if not isinstance(value, dict) or field not in value:
            raise MissingField(reference, bindings[name])
        value = value[field]
    return value


@dataclass(frozen=True)
class Point:
    """One combination of sweep values."""

    index: int
    values: dict[str, Any]
    positions: dict[str, int]  #: which entry of each sweep list was taken

    def label(self) -> str:
        """`similarity=dot, separation=softmax beta=1000`, for progress and file names."""
        return ", ".join(f"{k}={value_label(v)}" for k, v in self.values.items()) or "run"

    def slug(self) -> str:
        """A file-name-safe form of the label, unique within the run."""
        text = "_".join(value_label(v) for v in self.values.values()) or "run"
        text = re.sub(r"[^A-Za-z0-9.=-]+", "-", text).strip("-")[:80]
        return f"{self.index:03d}-{text}"


def value_label(value: Any) -> str:
    """How a sweep value reads in a table: scalars as written, mappings as `name k=v`."""
    if isinstance(value, dict):
        if "name" in value:  # a named alternative reads as its name
            return str(value["name"])
        items = list(value.items())
        head = ""
        if items and items[0][0] in ("function", "kind", "similarity", "model"):
            head = str(items[0][1])
            items = items[1:]
        rest = " ".join(f"{k}={value_label(v)}" for k, v in items)
        return " ".join(p for p in (head, rest) if p)
    if isinstance(value, list):
        return "+".join(value_label(v) for v in value)
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def size(sweep: dict[str, list[Any]]) -> int:
    """How many points the sweep has, computed without expanding it."""
    return math.prod(len(values) for values in sweep.values())


def max_points() -> int:
    """The most points a sweep may have: AMEMCTL_MAX_POINTS, or DEFAULT_MAX_POINTS."""
    try:
        return int(os.environ.get(MAX_POINTS_ENV, DEFAULT_MAX_POINTS))
    except ValueError:
        return DEFAULT_MAX_POINTS


def points(sweep: dict[str, list[Any]]) -> list[Point]:
    """Every combination, the first variable varying slowest (as nested loops read)."""
    names = list(sweep)
    result = []
    for i, combo in enumerate(itertools.product(*(range(len(sweep[n])) for n in names))):
        values = {n: sweep[n][j] for n, j in zip(names, combo)}
        result.append(Point(i, values, dict(zip(names, combo))))
    return result or [Point(0, {}, {})]


def references(value: Any) -> Iterator[tuple[tuple[Any, ...], str]]:
    """(path inside value, variable name) for every `${name}` in a nested value."""
    if isinstance(value, str):
        for match in REFERENCE.finditer(value):
            yield (), match.group(1)
    elif isinstance(value, dict):
        for k, v in value.items():
            for path, name in references(v):
                yield (k, *path), name
    elif isinstance(value, list):
        for i, v in enumerate(value):
            for path, name in references(v):
                yield (i, *path), name


def substitute(value: Any, bindings: dict[str, Any]) -> tuple[Any, dict[tuple[Any, ...], str]]:
    """The value with every `${name}` (or `${name.field}`) replaced, and which paths came whole from which name.

    Raises MissingField when a mapping-valued variable lacks a field a reference asks for.
    """
    whole: dict[tuple[Any, ...], str] = {}

    def bound(reference: str) -> bool:
        return reference.split(".")[0] in bindings

    def walk(v: Any, path: tuple[Any, ...]) -> Any:
        if isinstance(v, str):
            match = REFERENCE.fullmatch(v.strip())
            if match and bound(match.group(1)):
                whole[path] = match.group(1).split(".")[0]
                return lookup(match.group(1), bindings)
            return REFERENCE.sub(lambda m: value_label(lookup(m.group(1), bindings)) if bound(m.group(1)) else m.group(0), v)
        if isinstance(v, dict):
            return {k: walk(x, (*path, k)) for k, x in v.items()}
        if isinstance(v, list):
            return [walk(x, (*path, i)) for i, x in enumerate(v)]
        return v

    return walk(value, ()), whole
