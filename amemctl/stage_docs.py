"""The stage reference as Markdown, generated from the stages' and functions' own declarations.

docs/stages.md is this text for the built-in stages, similarities, separations, corruptions
and encoders; a test regenerates it, so the reference cannot drift from the code.
"""

from __future__ import annotations

import inspect

from amemctl.plugins import KINDS, Registry
from amemctl.stage import Metric

ROLES = {"param": "parameter", "input": "reads", "output": "writes"}


def stage_reference(registry: Registry, package: str | None = "amemctl") -> str:
    """Markdown describing every stage (of `package`, or all when None), in name order."""
    lines = [
        "# Stage reference",
        "",
        "Generated from the stage declarations by `amemctl stages --markdown`; do not edit by hand.",
        "Parameters marked *reads* and *writes* name context tensors: change them to rewire a pipeline.",
        "",
    ]
    for name in sorted(registry.stages):
        if package is not None and registry.package_of("stages", name) != package:
            continue
        cls = registry.stages[name]
        lines += [f"## `{name}`", "", cls.summary, ""]
        body = inspect.cleandoc(cls.__doc__ or "").splitlines()[1:]
        if any(line.strip() for line in body):
            lines += ["\n".join(body).strip(), ""]
        lines += ["| name | role | type | default | meaning |", "|---|---|---|---|---|"]
        for key, param in cls.params.items():
            default = "required" if param.required else (f"`{param.default!r}`" if param.default is not None else param.default_text().replace("|", "/"))
            doc = param.described()
            lines.append(f"| `{key}` | {ROLES[param.role]} | {param.type_text()} | {default} | {doc.replace('|', '/')} |")
        for key, kind in cls.dispatch.items():
            lines += ["", f"`{key}` chooses one of the [{kind}](#{kind}); {choice_text(cls, key)}."]
        recorded = default_metrics(cls)
        if recorded:
            lines += ["", f"Records (with its defaults), for `report:` tables and curves: {'; '.join(described(m, '`') for m in recorded)}."]
        lines.append("")
    for kind in ("similarities", "separations", "corruptions", "encoders"):
        lines += _functions(registry, kind, package)
    lines += _datasets(registry, package)
    return "\n".join(lines)


def choice_text(cls: type, key: str) -> str:
    """How the parameters of the function a dispatching parameter chose are written, and which may stand beside any."""
    text = f"its parameters go beside it, or inside it (`{key}: {{name: NAME, ...}}`), where one named like a parameter of the stage must go"
    lenient = cls.lenient.get(key, ())
    if lenient:
        text += f"; {' and '.join(lenient)} may stand beside any of them: one that does not take them ignores them"
    return text


def described(metric: Metric, quote: str = "") -> str:
    """A metric's name, and what it is when its stage says."""
    name = f"{quote}{metric.name}{quote}"
    return f"{name}: {metric.description}" if metric.description else name


def default_metrics(cls: type) -> "list[Metric]":
    """The metrics a stage records when configured with its defaults.

    `metrics()` belongs to a configured stage (evaluate's depend on its `prefix` and `labels`).
    A stage with required parameters is asked unconfigured, its other parameters at their
    defaults: most name their metrics without the required ones (persist's path, open_store's
    store); one whose names need them cannot say, and lists none.
    """
    try:
        return [Metric.of(m) for m in cls().metrics()]
    except Exception:  # a required parameter, or a plugin stage that cannot be built bare
        pass
    bare = cls.__new__(cls)
    bare.registry, bare.options = None, {}
    bare.settings = {key: param.default for key, param in cls.params.items() if not param.required}
    try:
        return [Metric.of(m) for m in bare.metrics()]
    except Exception:  # its metric names need a required parameter, or a plugin's metrics() needs more
        return []


def _functions(registry: Registry, kind: str, package: str | None) -> list[str]:
    """One table row per function of a kind, with its parameters, for docs/stages.md."""
    lines = [f"## {kind}", "", f"Chosen by name; each {KINDS[kind][1]}'s parameters go beside its name.", "", "| name | meaning | parameters |", "|---|---|---|"]
    for name, entry in sorted(registry.table(kind).items()):
        if package is not None and registry.package_of(kind, name) != package:
            continue
        doc = (getattr(entry, "doc", "") or "").strip().splitlines()
        params = "; ".join(
            f"`{key}` ({param.type_text()}, default `{param.default!r}`): {param.described()}" for key, param in getattr(entry, "params", {}).items()
        )
        lines.append(f"| `{name}` | {(doc[0] if doc else '').replace('|', '/')} | {params.replace('|', '/') or 'none'} |")
    return [*lines, ""]


def _datasets(registry: Registry, package: str | None) -> list[str]:
    """One table row per dataset `load` can read (the section `load`'s `dataset` links to)."""
    lines = ["## datasets", "", "Chosen by `load`'s `dataset`; its `split` picks one of the splits (the default first).", "", "| name | what | splits | image shape |", "|---|---|---|---|"]
    for name, entry in sorted(registry.table("datasets").items()):
        if package is not None and registry.package_of("datasets", name) != package:
            continue
        splits = [entry.default_split, *(split for split in entry.splits if split != entry.default_split)]
        shape = " x ".join(str(size) for size in entry.shape) or "varies"
        lines.append(f"| `{name}` | {entry.summary.replace('|', '/')} | {', '.join(f'`{split}`' for split in splits)} | {shape} |")
    return [*lines, ""]
