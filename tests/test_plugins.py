"""Plugin loading: built-ins through the hooks, entry points, and every way a plugin can break."""

from __future__ import annotations

import importlib
import inspect
import sys
import textwrap

import pytest

from amemctl import hookspecs
from amemctl.errors import PluginError
from amemctl.plugins import BUILTIN_PLUGINS, build_registry, stage_class
from tests.conftest import ROOT


@pytest.fixture
def install(tmp_path, monkeypatch):
    """Install a one-module plugin distribution (dist-info + entry point) onto sys.path."""

    def make(dist: str, module: str, source: str, entry: str | None = None) -> None:
        (tmp_path / f"{module}.py").write_text(textwrap.dedent(source))
        info = tmp_path / f"{dist.replace('-', '_')}-0.1.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n")
        (info / "entry_points.txt").write_text(f"[amemctl]\n{entry or module} = {module}\n")
        monkeypatch.syspath_prepend(str(tmp_path))
        importlib.invalidate_caches()
        monkeypatch.delitem(sys.modules, module, raising=False)

    return make


def test_builtins_come_through_the_same_hooks():
    registry = build_registry(entry_points=False)
    assert {"load", "corrupt", "score", "separate", "project", "evaluate", "report"} <= set(registry.stages)
    assert all(registry.package_of("stages", name) == "amemctl" for name in registry.stages)
    assert "manhattan" in registry.similarities and "digits" in registry.datasets


def test_every_hook_is_documented_and_implemented_by_a_builtin():
    guide = (ROOT / "docs" / "plugins.md").read_text()
    implemented = set()
    for module in BUILTIN_PLUGINS:
        implemented |= {n for n, _ in inspect.getmembers(importlib.import_module(module)) if n.startswith("amemctl_")}
    for name, fn in inspect.getmembers(hookspecs, inspect.isfunction):
        if name.startswith("amemctl_"):
            assert fn.__doc__ and name in guide, f"{name} is not documented in docs/plugins.md"
            assert name in implemented, f"no built-in implements {name}"


def test_the_example_plugin_is_installed_from_the_repository():
    from importlib.metadata import distribution

    dist = distribution("amemctl-example")  # make test installs plugins/amemctl-example
    assert [ep.value for ep in dist.entry_points if ep.group == "amemctl"] == ["amemctl_example.plugin"]
    assert stage_class("pca").__module__ == "amemctl_example.pca"


def test_a_plugin_that_fails_to_import_is_named_and_the_rest_load(install):
    install("broken-plugin", "broken_mod", "raise ImportError('needs the moon')\n")
    registry = build_registry()
    (failure,) = [f for f in registry.failures if f.plugin == "broken_mod"]
    assert failure.package == "broken-plugin" and "ImportError: needs the moon" in failure.reason
    assert "score" in registry.stages and "pca" in registry.stages
    with pytest.raises(PluginError, match="unknown stage 'whiten' \\(plugin 'broken_mod' \\(package broken-plugin\\) failed to load"):
        stage_class("whiten", registry)


def test_a_misspelt_hook_is_reported_not_ignored(install):
    install("typo-plugin", "typo_mod", "from amemctl import hookimpl\n\n@hookimpl\ndef amemctl_register_stage():\n    return []\n")
    registry = build_registry()
    (failure,) = [f for f in registry.failures if f.plugin == "typo_mod"]
    assert "amemctl_register_stage" in failure.reason and failure.package == "typo-plugin"


def test_a_hook_that_raises_is_reported(install):
    install("raising-plugin", "raising_mod", "from amemctl import hookimpl\n\n@hookimpl\ndef amemctl_register_stages():\n    raise RuntimeError('boom')\n")
    registry = build_registry()
    assert any(f.plugin == "raising_mod" and "RuntimeError: boom" in f.reason for f in registry.failures)


def test_two_packages_with_one_stage_name_is_an_error_naming_both(install):
    source = """\
        from amemctl import Stage, hookimpl

        class Score(Stage):
            '''Another score.'''
            name = "score"

        @hookimpl
        def amemctl_register_stages():
            return [Score]
        """
    install("clash-plugin", "clash_mod", source)
    with pytest.raises(PluginError, match="two packages provide the stage 'score': amemctl and clash-plugin"):
        build_registry()
