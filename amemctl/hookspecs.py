"""The hooks through which stages, similarities and datasets reach amemctl.

Built-in stages use these hooks exactly as a third-party package does: each built-in
module is registered with the plugin manager like any entry point. A plugin implements
any of them with `@amemctl.hookimpl` and exposes its module in the `amemctl` entry-point
group (see plugins/amemctl-example). Every hook is called once per process, with no
arguments, when the registry is built; each implementation's results are merged, and a
name given twice is an error naming both packages.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    from amemctl.core.similarity import Similarity
    from amemctl.data.datasets import Dataset
    from amemctl.stage import Stage

hookspec = pluggy.HookspecMarker("amemctl")


@hookspec
def amemctl_register_stages() -> "list[type[Stage]]":
    """Return the Stage subclasses this plugin provides.

    Each class declares its `name` (unique across all plugins), its parameters and its
    inputs and outputs as class attributes, and implements `run(ctx)`.
    """


@hookspec
def amemctl_register_similarities() -> "list[Similarity]":
    """Return extra similarity functions, usable by name in `score` stages.

    A `Similarity` wraps a kernel (queries Q x d, keys n x d) -> Q x n scores. Retrieval
    calls it chunk by chunk over the stored memories, so it never sees all of them at once.
    """


@hookspec
def amemctl_register_datasets() -> "list[Dataset]":
    """Return extra datasets, usable by name in `load` stages and the `data:` section."""
