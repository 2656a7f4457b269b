"""The stage reference as Markdown, generated from the stages' own declarations.

docs/stages.md is this text for the built-in stages; a test regenerates it, so the
reference cannot drift from the code.
"""

from __future__ import annotations

import inspect

from amemctl.plugins import Registry

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
            lines.append(f"| `{key}` | {ROLES[param.role]} | {param.type_name()} | {default} | {doc.replace('|', '/')} |")
        lines.append("")
    return "\n".join(lines)
