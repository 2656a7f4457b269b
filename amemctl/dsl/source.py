"""Reading YAML safely while remembering where every key and value came from.

Errors about a pipeline must name the file, line and column of the offending text, so the
loader keeps a `SourceMap` from each path in the document (`("stages", 2, "score", "beta")`)
to the place of its key and of its value. Only YAML's safe tags are accepted; duplicate
keys, which YAML silently collapses, are an error.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from amemctl.errors import Location, PipelineError

Path_ = tuple[Any, ...]


@dataclass
class SourceMap:
    """Where each part of a loaded document was written."""

    file: str
    values: dict[Path_, Location] = field(default_factory=dict)
    keys: dict[Path_, Location] = field(default_factory=dict)

    def value(self, path: Path_) -> Location:
        """Location of the value at `path`, or of its nearest written ancestor."""
        return self._nearest(self.values, path)

    def key(self, path: Path_) -> Location:
        """Location of the key naming `path` (falls back to the value, then ancestors)."""
        if path in self.keys:
            return self.keys[path]
        return self.value(path)

    def _nearest(self, table: dict[Path_, Location], path: Path_) -> Location:
        for cut in range(len(path), -1, -1):
            if path[:cut] in table:
                return table[path[:cut]]
        return Location(self.file)


def load_yaml(text: str, file: str) -> tuple[Any, SourceMap]:
    """Parse `text` (the contents of `file`) into plain Python data and its SourceMap."""
    source = SourceMap(file)
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None, source
        return _build(loader, node, (), source), source
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = Location(file, mark.line + 1, mark.column + 1) if mark else Location(file)
        problem = " ".join(str(p) for p in (exc.context, exc.problem) if p)
        raise PipelineError(
            f"invalid YAML: {problem}",
            hint="check indentation, colons and quotes at this place",
            location=where,
        ) from None
    except yaml.YAMLError as exc:
        raise PipelineError(f"invalid YAML: {exc}", location=Location(file)) from None
    finally:
        loader.dispose()


def read_yaml(path: "str | Path") -> tuple[Any, SourceMap, str]:
    """Load a YAML file; a missing or unreadable file is a PipelineError naming it."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise PipelineError(f"no such pipeline file: {path}", hint="check the path") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise PipelineError(f"cannot read {path}: {exc}") from None
    data, source = load_yaml(text, str(path))
    return data, source, text


def _where(file: str, node: yaml.Node) -> Location:
    return Location(file, node.start_mark.line + 1, node.start_mark.column + 1)


def _build(loader: yaml.SafeLoader, node: yaml.Node, path: Path_, source: SourceMap) -> Any:
    source.values[path] = _where(source.file, node)
    if isinstance(node, yaml.MappingNode):
        loader.flatten_mapping(node)  # resolves YAML merge keys (<<)
        out: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            key = loader.construct_object(key_node, deep=True)
            if not isinstance(key, (str, int, float, bool)) or key is None:
                raise PipelineError(
                    f"mapping keys must be plain names, got {key!r}", location=_where(source.file, key_node)
                )
            if key in out:
                raise PipelineError(
                    f"key {key!r} appears twice in the same mapping",
                    hint=f"the first is at line {source.keys[path + (key,)].line}; keep one",
                    location=_where(source.file, key_node),
                )
            source.keys[path + (key,)] = _where(source.file, key_node)
            out[key] = _build(loader, value_node, path + (key,), source)
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_build(loader, item, path + (i,), source) for i, item in enumerate(node.value)]
    return loader.construct_object(node, deep=True)
