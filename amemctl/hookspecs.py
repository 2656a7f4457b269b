"""The hooks through which everything a researcher varies reaches amemctl.

Stages, similarities, separations, corruptions, encoder architectures and datasets are all
registered here, by the built-ins exactly as by a third-party package: each built-in module
is registered with the plugin manager like any entry point. A plugin implements any of these
with `@amemctl.hookimpl` and exposes its module in the `amemctl` entry-point group (see
plugins/amemctl-example).

Calling rule, the same for every hook: called once per process, with no arguments, when the
registry is built (built-ins first, then entry points in the order the file system lists the
installed packages); returns a list of named objects; the results of all plugins are merged
by name. A plugin whose hook raises, returns something unnamed, or provides a name amemctl
provides is disabled as a whole (nothing of it is registered) and named in a warning; two
plugins providing the same name are both disabled, since which one loads first is not
something to rely on. Every hook is
documented in docs/plugins.md; a test fails when one is not.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    from amemctl.core.similarity import Similarity
    from amemctl.corruptions import Corruption
    from amemctl.data.datasets import Dataset
    from amemctl.functions import EncoderArchitecture, SeparationFunction, SimilarityFunction
    from amemctl.stage import Stage

hookspec = pluggy.HookspecMarker("amemctl")


@hookspec
def amemctl_register_stages() -> "list[type[Stage]]":
    """Return the Stage subclasses this plugin provides.

    Each class declares its `name` (unique across all plugins), its parameters and its
    inputs and outputs as class attributes, and implements `run(ctx)`.
    """


@hookspec
def amemctl_register_similarities() -> "list[Similarity | SimilarityFunction]":
    """Return extra similarity functions, usable by name in `score` stages.

    A `Similarity` wraps a kernel (queries Q x d, keys n x d) -> Q x n scores. Retrieval
    calls it chunk by chunk over the stored memories, so it never sees all of them at once.
    A `SimilarityFunction` declares `Param`s (written beside `similarity:`, or inside it:
    `similarity: {name: NAME, ...}`) and makes the `Similarity` they configure.
    """


@hookspec
def amemctl_register_separations() -> "list[SeparationFunction]":
    """Return extra separation functions, usable by name as `separate: {function: NAME}`.

    A `SeparationFunction` declares its `Param`s (written flat beside `function:`) and
    makes an `amemctl.core.separation.Separation` from them; an elementwise one or one with
    a streaming reducer keeps retrieval within its memory budget.
    """


@hookspec
def amemctl_register_corruptions() -> "list[Corruption]":
    """Return extra corruptions, usable by name as `corrupt: {kind: NAME}`.

    A `Corruption` declares its `Param`s (written flat beside `kind:`) and applies itself
    to a batch N x ... in [0, 1] with a seeded generator, returning the same shape.
    """


@hookspec
def amemctl_register_encoders() -> "list[EncoderArchitecture]":
    """Return extra encoder (phi) architectures, usable by name as `embed: {arch: NAME}`.

    An `EncoderArchitecture` gives the embedding `width`, declares its `Param`s (written
    beside `arch:`) and makes an `nn.Module` mapping N x 3 x H x W images to N x width
    embeddings (`make(cifar_stem, **parameters)`), seeded by `embed`'s `seed` or loaded
    from a `checkpoint` state dict. (`train-simclr` trains the built-in architectures.)
    """


@hookspec
def amemctl_register_datasets() -> "list[Dataset]":
    """Return extra datasets, usable by name in `load` stages and the `data:` section."""
