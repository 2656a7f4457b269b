"""`amemctl store ...`: list, inspect, show, export, forget, verify and trim persisted memories."""

from __future__ import annotations

from pathlib import Path

import click
from rich.table import Table
from rich.tree import Tree

from amemctl.console import console, plain
from amemctl.errors import DamagedStore, StoreError


@click.group()
def store() -> None:
    """Inspect and maintain memory stores (zarr v3 folders written by `persist`)."""


@store.command("ls")
@click.argument("root", default="stores", type=click.Path(file_okay=False, path_type=Path))
def list_stores(root: Path) -> None:
    """List the stores under ROOT (default: stores/) with their rows, spaces and size."""
    from amemctl.store.inspect import disk_size
    from amemctl.store.memory import MemoryStore

    table = Table(title=plain(f"stores in {root}"), title_justify="left")
    for column in ("store", "rows", "forgotten", "arrays", "spaces", "size", "updated"):
        table.add_column(column, overflow="fold")
    found = sorted(p.parent for p in root.glob("**/zarr.json") if p.parent.parent == root or p.parent.suffix == ".zarr") if root.exists() else []
    for path in found:
        if any(part.startswith(".") for part in path.relative_to(root).parts):
            continue  # a writer's temporary or discarded copy, never a store
        try:
            s = MemoryStore.open(path)
        except DamagedStore:
            table.add_row(plain(path.relative_to(root)), "damaged", "-", "-", "-", _size(disk_size(path)), plain(f"run `amemctl store verify {path}`"))
            continue
        except StoreError:
            continue  # not a store this amemctl can list (another schema, a locked writer's)
        table.add_row(plain(path.relative_to(root)), str(len(s)), str(s.count - len(s)), plain(", ".join(s.arrays)), plain(", ".join(s.spaces) or "-"), _size(disk_size(path)), plain(s.attrs["updated"]))
    console().print(table if table.row_count else plain(f"no stores under {root}"))


@store.command()
@click.argument("path", type=click.Path(path_type=Path))
def inspect(path: Path) -> None:
    """Show the arrays of the store at PATH (shape, dtype, chunks, codecs, sizes) and its provenance."""
    from amemctl.store.inspect import describe
    from amemctl.store.memory import MemoryStore

    info = describe(MemoryStore.open(path))
    tree = Tree(f"[bold]{plain(info['path'])}[/]  {info['rows']} rows ({info['forgotten']} forgotten), next id {info['next_id']}, schema {info['schema']}")
    for a in info["arrays"]:
        ratio = a["bytes_raw"] / a["bytes_stored"] if a["bytes_stored"] else 0
        tree.add(
            f"[cyan]{plain(a['name'])}[/] {a['shape']} {plain(a['storage'])} (zarr {a['dtype']}), chunks {a['chunks']}, "
            f"{'+'.join(a['codecs']) or 'raw'}: {_size(a['bytes_stored'])} stored of {_size(a['bytes_raw'])} ({ratio:.1f}x)"
        )
    if info["spaces"]:
        spaces = tree.add("key spaces")
        for space, identity in info["spaces"].items():
            spaces.add(plain(f"{space}: " + ", ".join(f"{k}={v}" for k, v in identity.items())))
    history = tree.add("provenance")
    for entry in info["provenance"]:
        history.add(plain(", ".join(f"{k}={_short(v)}" for k, v in entry.items())))
    console().print(tree)
    click.echo(f"created {info['created']}, updated {info['updated']}")


@store.command()
@click.argument("path", type=click.Path(path_type=Path))
@click.option("--ids", "selection", default="0:32", show_default=True, help="Rows to show: START:STOP (live rows, in order) or a list of ids id1,id2,...")
@click.option("--space", default="patterns", show_default=True, help="Array to draw: patterns, values or keys/<space>.")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), required=True, help="PNG file to write.")
def show(path: Path, selection: str, space: str, output: Path) -> None:
    """Draw stored rows of PATH as an image grid (PNG)."""
    import torch

    from amemctl.figures import image_grid
    from amemctl.store.memory import MemoryStore

    s = MemoryStore.open(path)
    ids = s.ids()
    if ":" in selection:
        start, _, stop = selection.partition(":")
        bounds = _integers([start or "0", *([stop] if stop else [])], "--ids", "START:STOP such as 0:32, or ids such as 3,7")
        picked = torch.arange(len(ids))[slice(bounds[0], bounds[1] if stop else None)]
    else:
        wanted = torch.tensor(_integers(selection.split(","), "--ids", "START:STOP such as 0:32, or ids such as 3,7"))
        missing = wanted[~torch.isin(wanted, ids)]
        if len(missing):
            raise StoreError(f"no live rows with ids {missing.tolist()}", hint="list ids with `amemctl store export` or use START:STOP")
        picked = torch.searchsorted(ids, wanted)  # ids increase, so this is each wanted id's position
    if len(picked) == 0:
        raise StoreError(f"the selection {selection!r} picks no rows of {len(ids)}")
    array = f"keys/{space}" if space not in s.arrays and f"keys/{space}" in s.arrays else space
    rows = s.take(array, s.live_rows()[picked.numpy()])
    per_row = 16
    grid = [(f"ids {int(ids[picked[i]])}..", rows[i : i + per_row]) for i in range(0, len(rows), per_row)]
    image_grid(grid, output, title=f"{path} {space}")
    click.echo(f"wrote {output}")


@store.command()
@click.argument("path", type=click.Path(path_type=Path))
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), required=True, help=".npz file to write.")
@click.option("--force", is_flag=True, help="Overwrite OUTPUT if it exists.")
def export(path: Path, output: Path, force: bool) -> None:
    """Write the live rows of every array of PATH (and their ids) to one .npz file, a chunk at a time."""
    from amemctl.store.export import export_npz
    from amemctl.store.memory import MemoryStore

    if output.suffix != ".npz":
        raise StoreError(f"export writes a .npz file, not {output.name}", hint=f"name it {output.with_suffix('.npz').name}")
    if output.exists() and not force:
        raise StoreError(f"{output} already exists", hint="choose another name, or add --force to overwrite it")
    shapes = export_npz(MemoryStore.open(path), output)
    click.echo(f"wrote {output}: " + ", ".join(f"{k} {v}" for k, v in shapes.items()))


@store.command()
@click.argument("path", type=click.Path(path_type=Path))
@click.option("--ids", "id_list", default=None, help="Comma-separated ids to forget.")
@click.option("--label", "labels", multiple=True, type=int, help="Forget every row with this label (repeatable).")
@click.option("--compact", is_flag=True, help="Rewrite the store without forgotten rows afterwards.")
def forget(path: Path, id_list: str | None, labels: tuple[int, ...], compact: bool) -> None:
    """Forget rows of PATH by id or label: they are no longer retrieved; --compact reclaims the space."""
    import torch

    from amemctl.store.memory import MemoryStore

    if id_list is None and not labels:
        raise StoreError("say what to forget", hint="--ids 3,17 or --label 7")
    s = MemoryStore.open(path, mode="a")
    ids = _integers(id_list.split(","), "--ids", "comma-separated ids such as 3,17") if id_list else None
    where = (lambda l: torch.isin(l, torch.tensor(labels))) if labels else None
    n = s.forget(ids=ids, where=where)
    click.echo(f"forgot {n} row(s); {len(s)} remain")
    if compact:
        click.echo(f"compacted: {s.compact()} row(s) dropped")


@store.command()
@click.argument("path", type=click.Path(path_type=Path))
def verify(path: Path) -> None:
    """Check PATH: array lengths agree, ids are sound, every chunk decodes and matches its checksum."""
    from amemctl.store.soundness import trim_hint
    from amemctl.store.verify import verify as check

    report = check(path)
    for note in report.notes:
        click.echo(f"note: {note}")
    if report.ok:
        click.echo(f"ok: {path} ({report.chunks_checked} chunks checked)")
        return
    for problem in report.problems:
        click.echo(f"problem: {problem}", err=True)
    hint = trim_hint(report.path, report.problems)
    if hint:
        click.echo(f"hint: {hint}", err=True)
    raise click.exceptions.Exit(1)


@store.command()
@click.argument("path", type=click.Path(path_type=Path))
def trim(path: Path) -> None:
    """Drop the rows a killed append left past the published ones in PATH; published rows are kept as they are."""
    from amemctl.store.memory import MemoryStore
    from amemctl.store.soundness import problems
    from amemctl.store.trim import trim as drop_unpublished

    dropped = drop_unpublished(path)
    click.echo(f"trimmed {path}: " + (", ".join(f"{n} row(s) of {name}" for name, n in dropped.items()) if dropped else "no unpublished rows"))
    trimmed = MemoryStore.open(path, check=False)
    left = problems(trimmed.path, trimmed.group, trimmed.attrs)
    for problem in left:
        click.echo(f"problem: {problem}", err=True)
    if left:
        click.echo(f"the store is still damaged: run `amemctl store verify {path}`", err=True)
        raise click.exceptions.Exit(1)


def _integers(texts: list[str], option: str, form: str) -> list[int]:
    """The texts as integers; anything else is a StoreError naming the option and its form."""
    try:
        return [int(t) for t in texts]
    except ValueError:
        bad = next(t for t in texts if not t.strip().lstrip("-").isdigit())
        raise StoreError(f"{option}: {bad!r} is not an integer", hint=f"give {form}") from None


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


def _short(value: object) -> str:
    text = str(value)
    return text if len(text) <= 60 else text[:57] + "..."
