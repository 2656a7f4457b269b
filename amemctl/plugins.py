"""The plugin manager and the registry of everything plugins provide.

Loading order: the built-in modules (registered exactly like external plugins), then every
entry point of the `amemctl` group, then pluggy's check_pending(). A plugin that fails to
import, implements a hook that does not exist (a misspelt name), raises inside a hook, or
provides a name amemctl provides is disabled as a whole, recorded as a failure and named
wherever it matters; the others still load and every command still works. Two plugins
providing the same name are both disabled (entry points load in the file system's listing
order, so "the first one wins" would differ between machines).
`AMEMCTL_DISABLE_PLUGINS=name,...` (or `amemctl --no-plugin NAME`) skips plugins by
entry-point or distribution name, like pytest's `-p no:NAME`.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import importlib.metadata
import os
import re
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

import pluggy

from amemctl import hookspecs
from amemctl.errors import PluginError, blamed_function

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
    "amemctl.stages.sdm",
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
    #: the (kind, name)s it would have provided, when known (a clash); None: unknown (it failed to load)
    provides: frozenset[tuple[str, str]] | None = None

    def may_provide(self, kind: str | None, name: str) -> bool:
        """Whether `name` (of `kind`, or of any kind) may be one of this plugin's."""
        return self.provides is None or any(n == name and kind in (None, k) for k, n in self.provides)

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
    #: top-level module of each loaded plugin -> its package, to tell whose code raised
    modules: dict[str, str] = field(default_factory=dict)
    #: without_entry_point(), read once: it scans every installed distribution (30 ms for 70 of
    #: them) and the modules of those requiring amemctl, and an unknown name is refused once per sweep point
    _unhooked: list[tuple[str, bool | None]] | None = field(default=None, repr=False, compare=False)

    def package_of(self, kind: str, name: str) -> str:
        return self.origin.get((kind, name), "?")

    def blamed_plugin(self, exc: BaseException) -> tuple[str, str] | None:
        """The plugin package whose function amemctl found at fault (errors.blame_function) and "its NOUN 'NAME'"; None when unmarked or amemctl's own."""
        marked = blamed_function(exc)
        if marked is None:
            return None
        noun, name = marked
        owner = next((self.package_of(kind, name) for kind, (_, each) in KINDS.items() if each == noun), "?")
        return (owner, f"its {noun} {name!r}") if owner not in (BUILTIN, "?") else None

    def plugin_bug(self, exc: BaseException) -> str | None:
        """Whose bug a crash is when a plugin's: the package whose code raised (culprit), else the one whose function amemctl found at fault; None when neither."""
        found = culprit(exc, self)
        if found is not None:
            return f"a bug in the plugin package {found.package} (at {found.where})"
        blamed = self.blamed_plugin(exc)
        return f"a bug in the plugin package {blamed[0]} ({blamed[1]})" if blamed is not None else None

    def table(self, kind: str) -> dict[str, Any]:
        """The entries of one kind (a key of KINDS)."""
        return getattr(self, kind)

    def find(self, name: str) -> list[tuple[str, Any]]:
        """Every (kind, entry) called `name`, of any kind (a stage and a similarity may share one)."""
        return [(kind, self.table(kind)[name]) for kind in KINDS if name in self.table(kind)]

    def failure_note(self, kind: str | None = None, name: str | None = None) -> str:
        """A sentence naming plugins that failed to load or were skipped, for an error about the unknown `name`.

        A name a skipped plugin provides is unknown too; without the note an
        AMEMCTL_DISABLE_PLUGINS set long ago reads as a missing plugin. A plugin disabled for a
        clash is named only where it provides `name` (what the others provide is known). So is
        an installed package that requires amemctl, defines hooks (or cannot be read to tell)
        but declares no entry point, which amemctl never loads: the plugin author's usual first
        mistake. One that only uses amemctl as a library is no plugin, and not named.
        """
        notes = [str(f) for f in self.failures if name is None or f.may_provide(kind, name)]
        if self.disabled:
            notes.append(f"plugins skipped on request ({DISABLE_ENV} or --no-plugin): {', '.join(self.disabled)}")
        if self._unhooked is None:
            self._unhooked = without_entry_point()
        notes += [_unhooked_note(package, hooks) for package, hooks in self._unhooked]
        return " (" + "; ".join(notes) + ")" if notes else ""

    def clash_hint(self, kind: str | None, name: str) -> str | None:
        """What to do when `name` is unknown because the plugins providing it clashed (None if they did not)."""
        clashing = [f for f in self.failures if f.provides is not None and f.may_provide(kind, name)]
        if len(clashing) < 2:
            return clashing[0].hint if clashing else None
        keep = ", ".join(" ".join(f"--no-plugin {o.plugin}" for o in clashing if o is not f) + f" keeps {f.package}'s" for f in clashing)
        return f"packages {', '.join(f.package for f in clashing)} all provide {name!r}: rename it in all but one, or choose one ({keep}; or {DISABLE_ENV})"


def _unhooked_note(package: str, hooks: bool | None) -> str:
    """The note on an installed package without an `amemctl` entry point: a plugin when it defines hooks, perhaps one when that cannot be told."""
    if hooks:
        return f"package {package} defines amemctl hooks but declares no `{ENTRY_POINT_GROUP}` entry point, so amemctl never loads it (docs/plugins.md)"
    return f"package {package} requires amemctl but declares no `{ENTRY_POINT_GROUP}` entry point: if it is a plugin, amemctl never loads it (docs/plugins.md)"


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


def without_entry_point() -> list[tuple[str, bool | None]]:
    """Installed packages that require amemctl but declare no `amemctl` entry point (plugins whose entry point was forgotten), each with whether it defines a hook (None: cannot tell).

    A package whose modules can be read and define no hook is left out: an application that
    uses amemctl as a library, not a plugin. Only the modules of the few packages requiring
    amemctl are read, never imported.
    """
    found: dict[str, bool | None] = {}
    for dist in importlib.metadata.distributions():
        try:  # a damaged install's metadata must not turn the error this note joins into a traceback
            name = dist.metadata["Name"] or ""
            if name.lower() == BUILTIN or any(ep.group == ENTRY_POINT_GROUP for ep in dist.entry_points):
                continue
            requires = [r for r in dist.requires or [] if "extra ==" not in r]
        except Exception:
            continue
        if any(_requirement_name(r) == BUILTIN for r in requires):
            hooks = _defines_hooks(dist)
            if hooks is not False:
                found[name] = hooks
    return sorted(found.items())


#: what every plugin module defines: its hooks are all named amemctl_register_<what>
HOOK_PREFIX = "amemctl_register_"

#: the most module files of one package read to tell whether it defines a hook; past them, it cannot be told
MOST_MODULES = 500


def _defines_hooks(dist: importlib.metadata.Distribution) -> bool | None:
    """Whether a module of `dist` defines an amemctl hook (its text names one); None when its modules cannot be found or are too many."""
    read = 0
    try:  # a damaged install (an unreadable RECORD, a folder gone) cannot be told, not a traceback
        for path in _module_files(dist):
            read += 1
            if read > MOST_MODULES:
                return None
            with contextlib.suppress(OSError):
                if HOOK_PREFIX in path.read_text(encoding="utf-8", errors="replace"):
                    return True
    except Exception:
        return None
    return False if read else None


def _module_files(dist: importlib.metadata.Distribution) -> Iterator[Path]:
    """The Python files of `dist`: those its RECORD lists, and those of an editable install's source folders (named by the .pth it lists)."""
    for file in dist.files or []:
        if file.suffix == ".py" and not file.name.startswith("__editable__"):  # setuptools' editable finder is not the package's
            yield Path(dist.locate_file(file))
        elif file.suffix == ".pth":
            pth = Path(dist.locate_file(file))
            for line in map(str.strip, pth.read_text(errors="replace").splitlines()):
                folder = pth.parent / line  # a relative folder is the site folder's
                if line and not line.startswith(("#", "import")) and folder.is_dir():
                    yield from folder.glob("*.py")  # its top-level modules and packages, not whatever else the folder holds
                    for package in sorted(p for p in folder.iterdir() if (p / "__init__.py").is_file()):
                        yield from package.rglob("*.py")


def _requirement_name(requirement: str) -> str:
    """The normalised project name a requirement line starts with ("amemctl>=0.1; ..." -> "amemctl")."""
    head = re.match(r"[\w.-]*", requirement.strip()).group()
    return head.lower().replace("_", "-").replace(".", "-")


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
                module = ep.load()
            except Exception as exc:  # a broken plugin must not take the others down
                registry.failures.append(PluginFailure(ep.name, package, _reason(exc) + _where(exc, ep.module), _disable_hint(ep.name)))
                continue
            try:
                pm.register(module, name=ep.name)
            except pluggy.PluginValidationError as exc:  # a hook that takes arguments
                reason, hint = _bad_signatures(module, str(exc))
                registry.failures.append(PluginFailure(ep.name, package, reason, hint or _disable_hint(ep.name)))
                continue
            except Exception as exc:
                registry.failures.append(PluginFailure(ep.name, package, _reason(exc), _disable_hint(ep.name)))
                continue
            packages[ep.name] = package
            order.append(ep.name)
            if ep.module.split(".")[0] != BUILTIN:
                registry.modules.setdefault(ep.module.split(".")[0], package)

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

    provided = {}
    for plugin_name in order:
        items = _collect(pm, plugin_name, packages.get(plugin_name, plugin_name), registry)
        if items is not None:
            provided[plugin_name] = items
    _merge(provided, packages, registry)
    return registry


def _collect(pm: pluggy.PluginManager, plugin_name: str, package: str, registry: Registry) -> dict[str, dict[str, Any]] | None:
    """What one plugin provides, by kind and name; None (a failure recorded) when a hook raises or repeats a name."""
    provided: dict[str, dict[str, Any]] = {}
    for kind, (hook_name, noun) in KINDS.items():
        impls = [i for i in getattr(pm.hook, hook_name).get_hookimpls() if i.plugin_name == plugin_name]
        items: dict[str, Any] = {}
        for impl in impls:
            try:
                result = list(impl.function() or [])
                names = [_name_of(kind, item) for item in result]
            except Exception as exc:
                where = _where(exc, getattr(impl.plugin, "__name__", ""))
                registry.failures.append(PluginFailure(plugin_name, package, f"{hook_name}() raised {_reason(exc)}{where}", _disable_hint(plugin_name)))
                return None
            for name, item in zip(names, result):
                if name in items:
                    registry.failures.append(PluginFailure(plugin_name, package, f"it provides the {noun} {name!r} twice", f"rename one of the two, or {_disable_hint(plugin_name)}"))
                    return None
                items[name] = item
        provided[kind] = items
    return provided


def _merge(provided: dict[str, dict[str, dict[str, Any]]], packages: dict[str, str], registry: Registry) -> None:
    """Register what every plugin provides, except plugins whose names clash: disabled whole.

    Built-ins keep their names. Two plugins providing the same name are both disabled: which
    one loads first depends on the order the file system lists installed packages in, so
    keeping either would silently swap implementations from one machine to the next.
    """
    owners: dict[tuple[str, str], list[str]] = {}
    for plugin, kinds in provided.items():
        for kind, items in kinds.items():
            for name in items:
                owners.setdefault((kind, name), []).append(plugin)
    clashes: dict[str, PluginFailure] = {}
    for (kind, name), plugins in owners.items():
        if len(plugins) < 2:
            continue
        builtin = any(packages.get(p) == BUILTIN for p in plugins)
        for plugin in plugins:
            if packages.get(plugin) == BUILTIN or plugin in clashes:
                continue
            provides = frozenset((k, n) for k, items in provided[plugin].items() for n in items)
            clashes[plugin] = _clash(plugin, packages, kind, name, [packages.get(p, p) for p in plugins if p != plugin], builtin, provides)
    registry.failures.extend(clashes.values())
    for plugin, kinds in provided.items():
        if plugin in clashes:
            continue
        for kind, items in kinds.items():
            registry.table(kind).update(items)
            registry.origin.update({(kind, name): packages.get(plugin, plugin) for name in items})


def _clash(plugin: str, packages: dict[str, str], kind: str, name: str, others: list[str], builtin: bool, provides: frozenset[tuple[str, str]] | None = None) -> PluginFailure:
    """The failure of a plugin providing a name that amemctl or another plugin also provides."""
    noun = KINDS[kind][1]
    package = packages.get(plugin, plugin)
    if builtin:
        reason = f"it provides the {noun} {name!r}, which package {BUILTIN} provides already"
        hint = f"rename the plugin's {noun}, or {_disable_hint(plugin)}"
    else:
        which = f"package {others[0]} provides too (both are disabled)" if len(others) == 1 else f"packages {', '.join(others)} provide too (all are disabled)"
        reason = f"it provides the {noun} {name!r}, which {which}"
        rest = "the other" if len(others) == 1 else "the others"
        hint = f"rename the {noun} in all but one package, uninstall all but one, or {_disable_hint(plugin, f'to use {rest}')}"
    return PluginFailure(plugin, package, reason, hint, provides)


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


def _bad_signatures(plugin: object, fallback: str) -> tuple[str, str]:
    """The reason pluggy refused a plugin's hooks: hooks that take arguments, named with their file and line and the fix."""
    import inspect

    bad = []
    for name in dir(hookspecs):
        function = getattr(plugin, name, None)
        if name.startswith("amemctl_") and callable(function):
            try:
                parameters = list(inspect.signature(function).parameters)
            except (TypeError, ValueError):
                continue
            if parameters:
                bad.append((name, parameters, _source_line(function)))
    if not bad:
        return f"PluginValidationError: {fallback}", ""
    reasons = ", ".join(f"{name}({', '.join(params)}){at}" for name, params, at in bad)
    fixes = " and ".join(f"`def {name}():`" for name, _, _ in bad)
    return f"its hook(s) {reasons} take arguments, but amemctl calls every hook with none", f"define them without arguments: {fixes} (docs/plugins.md, Hooks)"


def _source_line(function: Any) -> str:
    """` at file:line` of a function's definition, or nothing."""
    import inspect

    try:
        return f" at {inspect.getsourcefile(function)}:{inspect.getsourcelines(function)[1]}"
    except (OSError, TypeError):
        return ""


def _where(exc: BaseException, module: str) -> str:
    """` (at file:line)` of the innermost frame of `exc` in the plugin's own package (top-level module of `module`), or nothing."""
    top = module.split(".")[0]
    found = ""
    for frame, line in traceback.walk_tb(exc.__traceback__):
        if top and str(frame.f_globals.get("__name__", "")).split(".")[0] == top:
            found = f" (at {frame.f_code.co_filename}:{line})"
    return found


def _disable_hint(plugin: str, purpose: str = "to silence this") -> str:
    return f"set {DISABLE_ENV}={plugin} or pass --no-plugin {plugin} {purpose}"


def _reason(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


@dataclass(frozen=True)
class Culprit:
    """The plugin code an exception came from: its package and the innermost line of it that ran."""

    package: str
    where: str  #: "file:line in function"


def culprit(exc: BaseException, registry: Registry) -> Culprit | None:
    """The innermost frame of `exc`'s traceback in a plugin's module, or None when no plugin code ran.

    A similarity, separation or corruption of a plugin runs inside a built-in stage, and a
    plugin's stage calls amemctl and torch: the innermost plugin frame says whose bug it is.
    """
    found = None
    for frame, line in traceback.walk_tb(exc.__traceback__):
        module = str(frame.f_globals.get("__name__", "")).split(".")[0]
        if module in registry.modules:
            found = Culprit(registry.modules[module], f"{frame.f_code.co_filename}:{line} in {frame.f_code.co_name}")
    return found


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
    hint = registry.clash_hint(kind, str(name)) or did_you_mean(str(name), names) or f"choose one of {', '.join(table)}"
    raise ParamError(f"unknown {noun} {name!r}{registry.failure_note(kind, str(name))}", hint=hint)


def stage_class(name: str, registry: Registry | None = None) -> Any:
    """The Stage class called `name`, or a PluginError naming the closest and any broken plugins."""
    from amemctl.suggest import did_you_mean

    registry = registry or get_registry()
    if name in registry.stages:
        return registry.stages[name]
    hint = registry.clash_hint("stages", name) or did_you_mean(name, registry.stages) or "run `amemctl stages` to list them"
    raise PluginError(f"unknown stage {name!r}{registry.failure_note('stages', name)}", hint=hint)
