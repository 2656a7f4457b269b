"""The import graph: cli -> engine -> dsl -> stages -> training -> models -> core, stores beside
core, and no arrow back up.

Every `import` in the package is read with ast (function-level ones included, since a lazy
import is a dependency too); a module may import its own layer and the layers below it,
never one above. The math (core) knows nothing of the DSL, the plugins or the store.
"""

from __future__ import annotations

import ast

from tests.conftest import ROOT

PACKAGE = ROOT / "amemctl"

#: layer -> modules (prefixes) it must never import
FORBIDDEN = {
    "core": ("amemctl.stages", "amemctl.engine", "amemctl.cli", "amemctl.dsl", "amemctl.plugins", "amemctl.store", "amemctl.launch", "amemctl.stage"),
    "stages": ("amemctl.engine", "amemctl.cli", "amemctl.launch"),
    "engine": ("amemctl.cli", "amemctl.launch", "amemctl.stages"),
    # networks (models) are trained by loops (training), which stages call
    "models": ("amemctl.training", "amemctl.stages", "amemctl.engine", "amemctl.cli", "amemctl.dsl", "amemctl.plugins", "amemctl.launch", "amemctl.stage"),
    "training": ("amemctl.stages", "amemctl.engine", "amemctl.cli", "amemctl.dsl", "amemctl.plugins", "amemctl.launch", "amemctl.stage"),
    # stores hold tensors on disk: the engine, stages and CLI use them, never the reverse
    "store": ("amemctl.stages", "amemctl.engine", "amemctl.cli", "amemctl.dsl", "amemctl.plugins", "amemctl.launch", "amemctl.stage", "amemctl.training", "amemctl.models"),
    # the pipeline language checks stages; the engine runs what it checked
    "dsl": ("amemctl.engine", "amemctl.cli", "amemctl.launch"),
}


def _module(path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names}
    return {name for name in found if name.startswith("amemctl")}


def _layer(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in FORBIDDEN else None


def _edges() -> dict[str, set[str]]:
    return {_module(path): _imports(path) for path in PACKAGE.rglob("*.py")}


def _violations(edges: dict[str, set[str]]) -> list[str]:
    bad = []
    for module, imported in sorted(edges.items()):
        layer = _layer(module)
        if layer is None:
            continue
        for name in sorted(imported):
            if any(name == f or name.startswith(f + ".") for f in FORBIDDEN[layer]):
                bad.append(f"{module} ({layer}) imports {name}")
    return bad


def test_no_module_imports_a_layer_above_its_own():
    assert _violations(_edges()) == []


def test_the_check_sees_an_arrow_back_up():
    # the checker itself: a stage importing the engine, or the math importing a stage, is caught
    edges = {"amemctl.stages.x": {"amemctl.engine.plan"}, "amemctl.core.y": {"amemctl.stages.retrieval"}, "amemctl.engine.z": {"amemctl.core.rows"}}
    assert _violations(edges) == ["amemctl.core.y (core) imports amemctl.stages.retrieval", "amemctl.stages.x (stages) imports amemctl.engine.plan"]


def test_the_imports_are_really_read():
    edges = _edges()
    assert "amemctl.core.rows" in edges["amemctl.engine.plan"] and "amemctl.context" in edges["amemctl.stages.retrieval"]
