"""Reading YAML safely while remembering where every key and value came from.

Errors about a pipeline must name the file, line and column of the offending text, so the
loader keeps a `SourceMap` from each path in the document (`("stages", 2, "score", "beta")`)
to the place of its key and of its value. Only YAML's safe tags are accepted (on lists and
mappings too); duplicate keys, which YAML silently collapses, are an error. A small file must
not take the machine down: the text is parsed once, and nesting is bounded as the parser hands
each list or mapping to the composer, before composing (which recurses) goes a level deeper;
the nodes built, aliases and merge keys (<<) expanded included, are bounded too (an "alias
bomb" of a few hundred bytes otherwise expands to gigabytes), and so is the file's size.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from amemctl.errors import Location, PipelineError

Path_ = tuple[Any, ...]

#: deepest nesting of lists and mappings a pipeline may have
MAX_DEPTH = 64
#: most values a pipeline document may hold once its aliases are expanded
MAX_NODES = 250_000
#: largest pipeline file read (the largest shipped one is a few kilobytes)
MAX_BYTES = 1 << 20
_MERGE_TAG = "tag:yaml.org,2002:merge"
_PLAIN_TAGS = (yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, yaml.resolver.BaseResolver.DEFAULT_SEQUENCE_TAG)


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
    loader = _DepthBoundedLoader(text, file)
    try:
        node = loader.get_single_node()
        if node is None:
            return None, source
        return _build(loader, node, (), source, [0]), source
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
    except RecursionError:  # a backstop: _DepthBoundedLoader refuses deep nesting before this can happen
        raise PipelineError(f"the YAML nests too deeply (more than {MAX_DEPTH} levels)", location=Location(file)) from None
    finally:
        loader.dispose()


def read_yaml(path: "str | Path") -> tuple[Any, SourceMap, str]:
    """Load a YAML file; a missing, unreadable, special or oversized file is a PipelineError naming it."""
    path = Path(path)
    try:
        if not path.is_file():
            raise PipelineError(
                f"{path} is not a pipeline file" if path.exists() else f"no such pipeline file: {path}",
                hint="give the path of a YAML file" if path.exists() else "check the path",
            )
        with path.open("rb") as handle:
            raw = handle.read(MAX_BYTES + 1)
        if len(raw) > MAX_BYTES:
            raise PipelineError(f"{path} is larger than {MAX_BYTES >> 20} MiB: not a pipeline", hint="check the path; pipelines are a few kilobytes")
        text = raw.decode("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise PipelineError(f"cannot read {path}: {exc}", hint="a pipeline is a UTF-8 text file") from None
    data, source = load_yaml(text, str(path))
    return data, source, text


def _where(file: str, node: yaml.Node) -> Location:
    return Location(file, node.start_mark.line + 1, node.start_mark.column + 1)


class _DepthBoundedLoader(yaml.SafeLoader):
    """A SafeLoader that refuses nesting deeper than MAX_DEPTH while it composes.

    The composer takes each list or mapping's start event from `get_event` before it recurses
    into the contents, so counting there stops a deep file at the first level too many, in the
    same single pass over the text that builds the document.
    """

    def __init__(self, text: str, file: str) -> None:
        super().__init__(text)
        self._file = file
        self._depth = 0

    def get_event(self) -> yaml.Event:
        event = super().get_event()
        if isinstance(event, (yaml.MappingStartEvent, yaml.SequenceStartEvent)):
            self._depth += 1
            if self._depth > MAX_DEPTH:
                raise PipelineError(
                    f"the YAML nests more than {MAX_DEPTH} lists and mappings deep",
                    hint="a pipeline needs a few levels; flatten this part",
                    location=Location(self._file, event.start_mark.line + 1, event.start_mark.column + 1),
                )
        elif isinstance(event, (yaml.MappingEndEvent, yaml.SequenceEndEvent)):
            self._depth -= 1
        return event


def _build(loader: yaml.SafeLoader, node: yaml.Node, path: Path_, source: SourceMap, built: list[int]) -> Any:
    built[0] += 1
    if built[0] > MAX_NODES:
        raise PipelineError(
            f"the YAML holds more than {MAX_NODES:,} values once its aliases (*name) and merges (<<) are expanded",
            hint="a pipeline this large is almost certainly a mistake (or an alias bomb); write sweeps as lists of values",
            location=_where(source.file, node),
        )
    source.values[path] = _where(source.file, node)
    if isinstance(node, (yaml.MappingNode, yaml.SequenceNode)) and node.tag not in _PLAIN_TAGS:
        raise PipelineError(
            f"the YAML tag {node.tag.replace('tag:yaml.org,2002:', '!!')} is not allowed",
            hint="pipelines are plain YAML: lists, mappings, strings, numbers, booleans and null",
            location=_where(source.file, node),
        )
    if isinstance(node, yaml.MappingNode):
        return _mapping(loader, node, path, source, built)
    if isinstance(node, yaml.SequenceNode):
        return [_build(loader, item, path + (i,), source, built) for i, item in enumerate(node.value)]
    return loader.construct_object(node, deep=True)


def _mapping(loader: yaml.SafeLoader, node: yaml.MappingNode, path: Path_, source: SourceMap, built: list[int]) -> dict[Any, Any]:
    """A mapping's keys and values; merge keys (<<) give defaults that its own keys override.

    Merges are resolved here rather than by PyYAML's flatten_mapping, which copies every nested
    merge before anything counts it: each merged value is built, and counted, like any other.
    """
    merged: dict[Any, Any] = {}
    merged_source = SourceMap(source.file)
    out: dict[Any, Any] = {}
    for key_node, value_node in node.value:
        if key_node.tag == _MERGE_TAG:
            for each in value_node.value if isinstance(value_node, yaml.SequenceNode) else [value_node]:
                if not isinstance(each, yaml.MappingNode):
                    raise PipelineError("a merge key (<<) takes a mapping or a list of mappings", location=_where(source.file, each))
                for key, value in _build(loader, each, path, merged_source, built).items():
                    merged.setdefault(key, value)  # the first mapping merged wins, as YAML says
            continue
        if not isinstance(key_node, yaml.ScalarNode):
            raise PipelineError("mapping keys must be plain names, not lists or mappings", location=_where(source.file, key_node))
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
        out[key] = _build(loader, value_node, path + (key,), source, built)
    inherited = [key for key in merged if key not in out]
    for table, merged_table in ((source.values, merged_source.values), (source.keys, merged_source.keys)):
        table.update({p: where for p, where in merged_table.items() if len(p) > len(path) and p[len(path)] in inherited})
    return {**{key: merged[key] for key in inherited}, **out}
