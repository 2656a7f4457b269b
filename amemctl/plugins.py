"""The plugin manager and the registry of everything plugins provide.

Loading order: the built-in modules (registered exactly like external plugins), then every
entry point of the `amemctl` group, then pluggy's check_pending(). A plugin that fails to
import, registers an unknown hook, or raises inside a hook is recorded as a failure and
named wherever it matters; the others still load. Two plugins providing the same name is
an error naming both packages.
"""

from __future__ import annotations

import functools
import importlib
import importlib.metadata
from dataclasses import dataclass, field
from typing import Any, Callable

import pluggy

from amemctl import hookspecs
from amemctl.errors import PluginError

hookimpl = pluggy.HookimplMarker("amemctl")

ENTRY_POINT_GROUP = "amemctl"

#: Modules of the built-in plugins, registered through the same hooks as third-party ones.
BUILTIN_PLUGINS = (
    "amemctl.stages.load",
    "amemctl.stages.corrupt",
    "amemctl.stages.retrieval",
    "amemctl.stages.evaluate",
    "amemctl.stages.report",
    "amemctl.stages.store",
    "amemctl.stages.embed",
    "amemctl.stages.generative",
    "amemctl.stages.stories",
    "amemctl.stages.transform",
    "amemctl.stages.dam",
)

BUILTIN = "amemctl"


@dataclass(frozen=True)
class PluginFailure:
    """A plugin that could not be used, and why."""

    plugin: str
    package: str
    reason: str

    def __str__(self) -> str:
        return f"plugin {self.plugin!r} (package {self.package}) failed to load: {self.reason}"


@dataclass
class Registry:
    """Stages, similarities and datasets by name, with the package that provides each."""

    stages: dict[str, Any] = field(default_factory=dict)
    similarities: dict[str, Any] = field(default_factory=dict)
    datasets: dict[str, Any] = field(default_factory=dict)
    origin: dict[tuple[str, str], str] = field(default_factory=dict)
    failures: list[PluginFailure] = field(default_factory=list)

    def package_of(self, kind: str, name: str) -> str:
        return self.origin.get((kind, name), "?")

    def failure_note(self) -> str:
        """A sentence naming plugins that failed to load, for errors about unknown names."""
        if not self.failures:
            return ""
        return " (" + "; ".join(str(f) for f in self.failures) + ")"


def build_registry(entry_points: bool = True) -> Registry:
    """Load every plugin and collect what they provide; see the module docstring for order."""
    pm = pluggy.PluginManager(ENTRY_POINT_GROUP)
    pm.add_hookspecs(hookspecs)
    registry = Registry()
    packages: dict[str, str] = {}

    for module_name in BUILTIN_PLUGINS:
        pm.register(importlib.import_module(module_name), name=module_name)
        packages[module_name] = BUILTIN

    if entry_points:
        for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
            package = ep.dist.name if ep.dist is not None else ep.value
            if pm.get_plugin(ep.name) is not None or pm.is_blocked(ep.name):
                continue
            try:
                pm.register(ep.load(), name=ep.name)
            except Exception as exc:  # a broken plugin must not take the others down
                registry.failures.append(PluginFailure(ep.name, package, _reason(exc)))
                continue
            packages[ep.name] = package

    while True:
        try:
            pm.check_pending()
            break
        except pluggy.PluginValidationError as exc:  # e.g. a misspelt hook name
            name = pm.get_name(exc.plugin) or "?"
            registry.failures.append(PluginFailure(name, packages.get(name, "?"), str(exc)))
            pm.unregister(exc.plugin)

    _collect(pm, packages, registry, "stages", pm.hook.amemctl_register_stages, lambda s: s.name)
    _collect(pm, packages, registry, "similarities", pm.hook.amemctl_register_similarities, lambda s: s.name)
    _collect(pm, packages, registry, "datasets", pm.hook.amemctl_register_datasets, lambda d: d.name)
    return registry


def _collect(
    pm: pluggy.PluginManager,
    packages: dict[str, str],
    registry: Registry,
    kind: str,
    hook: Any,
    name_of: Callable[[Any], str],
) -> None:
    """Call one hook per implementation, so each result is known by the package that gave it."""
    table: dict[str, Any] = getattr(registry, kind)
    for impl in hook.get_hookimpls():
        package = packages.get(impl.plugin_name, impl.plugin_name)
        try:
            provided = impl.function() or []
        except Exception as exc:
            registry.failures.append(PluginFailure(impl.plugin_name, package, _reason(exc)))
            continue
        for item in provided:
            name = name_of(item)
            if name in table:
                raise PluginError(
                    f"two packages provide the {kind[:-1] if kind != 'similarities' else 'similarity'} "
                    f"{name!r}: {registry.package_of(kind, name)} and {package}",
                    hint="uninstall one of them, or rename the plugin's item",
                )
            table[name] = item
            registry.origin[(kind, name)] = package


def _reason(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


@functools.lru_cache(maxsize=1)
def get_registry() -> Registry:
    """The registry of this process (built once; tests call build_registry directly)."""
    return build_registry()


def stage_class(name: str, registry: Registry | None = None) -> Any:
    """The Stage class called `name`, or a PluginError naming the closest and any broken plugins."""
    from amemctl.suggest import did_you_mean

    registry = registry or get_registry()
    if name in registry.stages:
        return registry.stages[name]
    hint = did_you_mean(name, registry.stages) or "run `amemctl stages` to list them"
    raise PluginError(f"unknown stage {name!r}{registry.failure_note()}", hint=hint)
