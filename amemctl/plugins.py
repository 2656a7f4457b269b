"""The plugin manager and the registry of everything plugins provide.

Loading order: the built-in modules (registered exactly like external plugins), then every
entry point of the `amemctl` group, then pluggy's check_pending(). A plugin that fails to
import, implements a hook that does not exist (a misspelt name), raises inside a hook, or
provides a name another package already provides is disabled as a whole, recorded as a
failure and named wherever it matters; the others still load and every command still works.
`AMEMCTL_DISABLE_PLUGINS=name,...` (or `amemctl --no-plugin NAME`) skips plugins by
entry-point or distribution name, like pytest's `-p no:NAME`.
"""

from __future__ import annotations

import functools
import importlib
import importlib.metadata
import os
from dataclasses import dataclass, field
from typing import Any, Iterable

import pluggy

from amemctl import hookspecs
from amemctl.errors import PluginError

hookimpl = pluggy.HookimplMarker("amemctl")

ENTRY_POINT_GROUP = "amemctl"

#: The environment variable naming plugins not to load (comma-separated).
DISABLE_ENV = "AMEMCTL_DISABLE_PLUGINS"

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

#: Registry table -> (the hook that fills it, the noun for one of its entries).
KINDS: dict[str, tuple[str, str]] = {
    "stages": ("amemctl_register_stages", "stage"),
    "similarities": ("amemctl_register_similarities", "similarity"),
    "separations": ("amemctl_register_separations", "separation"),
    "corruptions": ("amemctl_register_corruptions", "corruption"),
    "encoders": ("amemctl_register_encoders", "encoder"),
    "datasets": ("amemctl_register_datasets", "dataset"),
}


@dataclass(frozen=True)
class PluginFailure:
    """A plugin that could not be used, and why."""

    plugin: str
    package: str
    reason: str
    hint: str = ""

    def __str__(self) -> str:
        return f"plugin {self.plugin!r} (package {self.package}) is disabled: {self.reason}"

    def warning(self) -> str:
        """The warning the CLI prints: what happened and what to do."""
        return f"{self}\n  hint: {self.hint}" if self.hint else str(self)


@dataclass
class Registry:
    """Everything the plugins provide, by kind and name, with the package that provides each."""

    stages: dict[str, Any] = field(default_factory=dict)
    similarities: dict[str, Any] = field(default_factory=dict)
    separations: dict[str, Any] = field(default_factory=dict)
    corruptions: dict[str, Any] = field(default_factory=dict)
    encoders: dict[str, Any] = field(default_factory=dict)
    datasets: dict[str, Any] = field(default_factory=dict)
    origin: dict[tuple[str, str], str] = field(default_factory=dict)
    failures: list[PluginFailure] = field(default_factory=list)
    #: plugins skipped on request (AMEMCTL_DISABLE_PLUGINS, --no-plugin)
    disabled: list[str] = field(default_factory=list)

    def package_of(self, kind: str, name: str) -> str:
        return self.origin.get((kind, name), "?")

    def table(self, kind: str) -> dict[str, Any]:
        """The entries of one kind (a key of KINDS)."""
        return getattr(self, kind)

    def find(self, name: str) -> list[tuple[str, Any]]:
        """Every (kind, entry) called `name`, of any kind (a stage and a similarity may share one)."""
        return [(kind, self.table(kind)[name]) for kind in KINDS if name in self.table(kind)]

    def failure_note(self) -> str:
        """A sentence naming plugins that failed to load, for errors about unknown names."""
        if not self.failures:
            return ""
        return " (" + "; ".join(str(f) for f in self.failures) + ")"


def disabled_names(extra: Iterable[str] = ()) -> set[str]:
    """Plugins not to load: $AMEMCTL_DISABLE_PLUGINS and `extra` (entry-point or package names)."""
    names = {n.strip() for n in os.environ.get(DISABLE_ENV, "").split(",")}
    return {n for n in (*names, *extra) if n}


def installed_plugins() -> set[str]:
    """The entry-point and package names of the installed plugins (nothing is imported)."""
    names = set()
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        names |= {ep.name, ep.dist.name if ep.dist is not None else ep.value}
    return names


def build_registry(entry_points: bool = True, disable: Iterable[str] = ()) -> Registry:
    """Load every plugin and collect what they provide; see the module docstring for order."""
    pm = pluggy.PluginManager(ENTRY_POINT_GROUP)
    pm.add_hookspecs(hookspecs)
    registry = Registry()
    packages: dict[str, str] = {}
    order: list[str] = []
    skip = disabled_names(disable)

    for module_name in BUILTIN_PLUGINS:
        pm.register(importlib.import_module(module_name), name=module_name)
        packages[module_name] = BUILTIN
        order.append(module_name)

    if entry_points:
        for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
            package = ep.dist.name if ep.dist is not None else ep.value
            if ep.name in skip or package in skip:
                registry.disabled.append(f"{ep.name} ({package})")
                continue
            if pm.get_plugin(ep.name) is not None or pm.is_blocked(ep.name):
                continue
            try:
                pm.register(ep.load(), name=ep.name)
            except Exception as exc:  # a broken plugin must not take the others down
                registry.failures.append(PluginFailure(ep.name, package, _reason(exc), _disable_hint(ep.name)))
                continue
            packages[ep.name] = package
            order.append(ep.name)

    while True:
        try:
            pm.check_pending()
            break
        except pluggy.PluginValidationError as exc:  # e.g. a misspelt hook name
            name = pm.get_name(exc.plugin) or "?"
            reason, hint = _unknown_hooks(exc.plugin, str(exc))
            registry.failures.append(PluginFailure(name, packages.get(name, "?"), reason, hint))
            pm.unregister(exc.plugin)
            order.remove(name)

    for plugin_name in order:
        _collect(pm, plugin_name, packages.get(plugin_name, plugin_name), registry)
    return registry


def _collect(pm: pluggy.PluginManager, plugin_name: str, package: str, registry: Registry) -> None:
    """Call every hook this plugin implements; add all it provides, or nothing when any of it fails."""
    provided: dict[str, dict[str, Any]] = {}
    for kind, (hook_name, noun) in KINDS.items():
        impls = [i for i in getattr(pm.hook, hook_name).get_hookimpls() if i.plugin_name == plugin_name]
        items: dict[str, Any] = {}
        for impl in impls:
            try:
                result = list(impl.function() or [])
                names = [_name_of(kind, item) for item in result]
            except Exception as exc:
                registry.failures.append(PluginFailure(plugin_name, package, f"{hook_name}() raised {_reason(exc)}", _disable_hint(plugin_name)))
                return
            for name, item in zip(names, result):
                clash = registry.package_of(kind, name) if name in registry.table(kind) else (package if name in items else None)
                if clash is not None:
                    registry.failures.append(
                        PluginFailure(
                            plugin_name,
                            package,
                            f"it provides the {noun} {name!r}, which {'it provides twice' if clash == package else f'package {clash} provides already'}",
                            f"rename the plugin's {noun}, uninstall one of the two, or {_disable_hint(plugin_name)}",
                        )
                    )
                    return
                items[name] = item
        provided[kind] = items
    for kind, items in provided.items():
        registry.table(kind).update(items)
        registry.origin.update({(kind, name): package for name in items})


def _name_of(kind: str, item: Any) -> str:
    """The registered name of one provided entry; a TypeError says what a hook returned instead."""
    name = getattr(item, "name", None)
    if not isinstance(name, str) or not name:
        raise TypeError(f"{item!r} has no `name`; amemctl_register_{kind} must return named {kind}")
    if kind == "stages":
        from amemctl.stage import Stage

        if not (isinstance(item, type) and issubclass(item, Stage)):
            raise TypeError(f"{item!r} is not a subclass of amemctl.Stage")
    return name


def _unknown_hooks(plugin: object, fallback: str) -> tuple[str, str]:
    """The reason a plugin failed hook validation, naming its unknown hooks with a did-you-mean."""
    from amemctl.suggest import did_you_mean

    known = [name for name in dir(hookspecs) if name.startswith("amemctl_")]
    unknown = [n for n in dir(plugin) if n.startswith("amemctl_") and n not in known and callable(getattr(plugin, n))]
    if not unknown:
        return fallback, ""
    hints = [h for h in (did_you_mean(n, known) for n in unknown) if h]
    names = ", ".join(repr(n) for n in unknown)
    return f"it implements the unknown hook(s) {names}", " ".join(hints) or f"the hooks are {', '.join(known)}"


def _disable_hint(plugin: str) -> str:
    return f"set {DISABLE_ENV}={plugin} or pass --no-plugin {plugin} to silence this"


def _reason(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


@functools.lru_cache(maxsize=1)
def get_registry() -> Registry:
    """The registry of this process (built once; tests call build_registry directly).

    Only the CLI and library entry points (parse_text, load_pipeline, a stage made without a
    registry) fall back to it; stages receive the registry they were checked with.
    """
    return build_registry()


def lookup(registry: Registry, kind: str, name: str) -> Any:
    """The entry `name` of one kind (similarity aliases such as L1 allowed), or a ParamError
    with the closest name and any disabled plugins."""
    from amemctl.stage import ParamError
    from amemctl.suggest import did_you_mean

    table = registry.table(kind)
    if name in table:
        return table[name]
    names = list(table)
    if kind == "similarities":
        from amemctl.core.similarity import ALIASES

        key = ALIASES.get(str(name).lower(), str(name).lower())
        if key in table:
            return table[key]
        names += list(ALIASES)
    noun = KINDS[kind][1]
    hint = did_you_mean(str(name), names) or f"choose one of {', '.join(table)}"
    raise ParamError(f"unknown {noun} {name!r}{registry.failure_note()}", hint=hint)


def stage_class(name: str, registry: Registry | None = None) -> Any:
    """The Stage class called `name`, or a PluginError naming the closest and any broken plugins."""
    from amemctl.suggest import did_you_mean

    registry = registry or get_registry()
    if name in registry.stages:
        return registry.stages[name]
    hint = did_you_mean(name, registry.stages) or "run `amemctl stages` to list them"
    raise PluginError(f"unknown stage {name!r}{registry.failure_note()}", hint=hint)
