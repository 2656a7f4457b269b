"""What a run leaves behind: metrics.json, report.md with its tables, curves and overviews."""

from __future__ import annotations

import json
import statistics
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from rich.console import Console
from rich.table import Table

from amemctl import figures
from amemctl.dsl.pipeline import CurveSpec, Pipeline, TableSpec
from amemctl.dsl.sweep import MissingField, Point, lookup, value_label
from amemctl.engine.runner import PointResult, RunResult, environment


@dataclass
class Grid:
    """A table of one metric, ready to print: row headers, column labels and cells."""

    title: str
    row_names: list[str]
    columns: list[str]
    rows: list[tuple[tuple[str, ...], list[float | None]]]
    format: str
    spread: dict[tuple[tuple[str, ...], str], float] | None = None  #: (row, column) -> std over repeats


def write_inputs(run_dir: Path, pipeline: Pipeline, device: torch.device) -> None:
    """The pipeline as written and as resolved (overrides applied), and the environment."""
    (run_dir / "pipeline.yaml").write_text(pipeline.text or yaml.safe_dump(pipeline.document, sort_keys=False))
    resolved = dict(pipeline.document, device=str(device))
    (run_dir / "resolved.yaml").write_text(yaml.safe_dump(resolved, sort_keys=False, allow_unicode=True))
    (run_dir / "environment.json").write_text(json.dumps(environment(device), indent=2) + "\n")


def write_outputs(run: RunResult, console: Console) -> None:
    """metrics.json, the tables (printed and in report.md), curves and sweep overviews."""
    pipeline = run.pipeline
    (run.run_dir / "metrics.json").write_text(json.dumps(_metrics_document(run), indent=2) + "\n")
    grids = [grid for spec in pipeline.tables for grid in build_grids(spec, run.points)]
    curve_paths = [path for spec in pipeline.curves for path in _write_curves(spec, run)]
    overviews = _write_example_figures(run)
    for grid in grids:
        console.print(_rich_table(grid))
    (run.run_dir / "report.md").write_text(_markdown(run, grids, curve_paths, overviews))
    if run.status != "ok":
        console.print(f"[yellow]run stopped after {len(run.points)} of {len(pipeline.plans)} point(s); what finished is in {run.run_dir}")
    else:
        console.print(f"run folder: {run.run_dir}")


def _metrics_document(run: RunResult) -> dict[str, Any]:
    return {
        "pipeline": run.pipeline.name,
        "status": run.status,
        **({"error": run.error} if run.error else {}),
        "device": str(run.device),
        "points": [
            {
                "index": p.point.index,
                "sweep": {k: value_label(v) for k, v in p.point.values.items()},
                "metrics": p.metrics,
                "repeats": p.repeats,
                "figures": [str(f.relative_to(run.run_dir)) for f in p.figures],
            }
            for p in run.points
        ],
    }


def axis_label(point: Point, reference: str) -> str | None:
    """How a point reads on a table or curve axis (`var` or `var.field`); None when the field is absent."""
    try:
        return value_label(lookup(reference, point.values))
    except MissingField:
        return None


def _others(point: Point, shown: set[str]) -> tuple:
    return tuple((k, value_label(v)) for k, v in point.values.items() if k not in shown)


def build_grids(spec: TableSpec, points: list[PointResult]) -> list[Grid]:
    """One grid per combination of the sweep variables the table does not show (or one, reduced over them)."""
    axes = [*spec.rows, *([spec.columns] if spec.columns else [])]
    shown = {a.split(".")[0] for a in axes}
    usable = [p for p in points if all(axis_label(p.point, a) is not None for a in axes)]
    groups: "OrderedDict[tuple, list[PointResult]]" = OrderedDict()
    for p in usable:
        groups.setdefault(() if spec.reduce != "none" else _others(p.point, shown), []).append(p)
    grids = []
    for others, members in groups.items():
        columns: list[str] = []
        cells: "OrderedDict[tuple[str, ...], dict[str, list[float]]]" = OrderedDict()
        spread: dict[tuple[tuple[str, ...], str], list[float]] = {}
        for p in members:
            row = tuple(axis_label(p.point, r) for r in spec.rows) or (spec.metric,)
            column = axis_label(p.point, spec.columns) if spec.columns else spec.metric
            if column not in columns:
                columns.append(column)
            if spec.metric in p.metrics:
                cells.setdefault(row, {}).setdefault(column, []).append(p.metrics[spec.metric])
                if f"{spec.metric}.std" in p.metrics:
                    spread.setdefault((row, column), []).append(p.metrics[f"{spec.metric}.std"])
            else:
                cells.setdefault(row, {})
        title = spec.title + (" (" + ", ".join(f"{k}={v}" for k, v in others) + ")" if others else "")
        if spec.reduce != "none" and len(points) > len(cells) * max(len(columns), 1):
            title += f" ({spec.reduce} over the other sweep variables)"
        rows = [(row, [_reduce(values.get(c), spec.reduce) for c in columns]) for row, values in cells.items()]
        single = {k: v[0] for k, v in spread.items() if len(v) == 1}  # a std is shown only for one point per cell
        grids.append(Grid(title, list(spec.rows) or ["metric"], columns, rows, spec.format, single or None))
    return grids


def _reduce(values: list[float] | None, how: str) -> float | None:
    if not values:
        return None
    if how in ("none", "mean"):
        return statistics.fmean(values)
    return {"median": statistics.median, "min": min, "max": max}[how](values)


def cell(grid: Grid, row: tuple[str, ...], column: str, value: float | None) -> str:
    """A table cell: the value, and ± its standard deviation over repeats when there is one."""
    text = format_value(value, grid.format)
    std = (grid.spread or {}).get((row, column))
    return text if std is None or value is None else f"{text} ± {format_value(std, grid.format)}"


def format_value(value: float | None, fmt: str) -> str:
    if value is None:
        return "-"
    if fmt == "percent":
        return f"{100 * value:.1f}"
    if fmt == "seconds":
        return f"{value:.3f}"
    if fmt == "int":
        return f"{value:.0f}"
    return f"{value:.4g}"


def _unit(fmt: str) -> str:
    return {"percent": " (%)", "seconds": " (s)"}.get(fmt, "")


def _rich_table(grid: Grid) -> Table:
    table = Table(title=grid.title + _unit(grid.format), title_justify="left")
    for name in grid.row_names:
        table.add_column(name, style="bold", overflow="fold")
    for column in grid.columns:
        table.add_column(column, justify="right", overflow="fold")
    for row, values in grid.rows:
        table.add_row(*row, *(cell(grid, row, c, v) for c, v in zip(grid.columns, values)))
    return table


def markdown_table(grid: Grid) -> str:
    head = [*grid.row_names, *grid.columns]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] * len(grid.row_names) + ["---:"] * len(grid.columns)) + "|"]
    for row, values in grid.rows:
        lines.append("| " + " | ".join([*row, *(cell(grid, row, c, v) for c, v in zip(grid.columns, values))]) + " |")
    return "\n".join(lines)


def _write_curves(spec: CurveSpec, run: RunResult) -> list[Path]:
    shown = {a.split(".")[0] for a in (spec.x, *spec.series)}
    groups: "OrderedDict[tuple, list[PointResult]]" = OrderedDict()
    for p in run.points:
        if axis_label(p.point, spec.x) is not None and spec.metric in p.metrics:
            groups.setdefault(_others(p.point, shown), []).append(p)
    paths = []
    for n, (others, members) in enumerate(groups.items()):
        series: "OrderedDict[str, tuple[list, list, list]]" = OrderedDict()
        for p in members:
            name = ", ".join(axis_label(p.point, s) or "-" for s in spec.series)
            xs, ys, errs = series.setdefault(name, ([], [], []))
            x = lookup(spec.x, p.point.values)
            xs.append(x if isinstance(x, (int, float)) else value_label(x))
            ys.append(p.metrics[spec.metric])
            errs.append(p.metrics.get(f"{spec.metric}.std", 0.0))
        if not series:
            continue
        title = spec.title + (" (" + ", ".join(f"{k}={v}" for k, v in others) + ")" if others else "")
        stem = "".join(ch if ch.isalnum() else "-" for ch in f"{spec.metric}-vs-{spec.x}") + (f"-{n}" if len(groups) > 1 else "")
        paths.append(
            figures.curves(
                series,
                run.run_dir / "figures" / f"curve-{stem}.png",
                title=title,
                xlabel=spec.x,
                ylabel=spec.metric,
                log_x=spec.log_x,
                percent="error" in spec.metric,
            )
        )
    return paths


def _write_example_figures(run: RunResult) -> list[Path]:
    """figures/<figure>.png for each figure the points showed examples in.

    A row several points share (the same originals, the same queries, or retrievals that
    came out identical) is drawn once, labelled with the sweep values those points share.
    """
    names: list[str] = []
    for p in run.points:
        names += [n for n in p.examples if n not in names]
    paths = []
    for figure in names:
        clusters: list[tuple[str, Any, list[PointResult]]] = []
        for p in run.points:
            for label, images in p.examples.get(figure, []):
                same = next((c for c in clusters if c[0] == label and _same(c[1], images)), None)
                if same is not None:
                    same[2].append(p)
                else:
                    clusters.append((label, images, [p]))
        rows = [(_row_label(label, members, run), images) for label, images, members in clusters]
        paths.append(figures.image_grid(rows, run.run_dir / "figures" / f"{figure}.png", title=run.pipeline.name))
    return paths


def _same(a: Any, b: Any) -> bool:
    return a.shape == b.shape and torch.equal(a, b)


def _row_label(label: str, members: list[PointResult], run: RunResult) -> str:
    if len(members) == len(run.points):
        return label
    first = members[0].point.values
    shared = [value_label(first[k]) for k in first if all(value_label(m.point.values[k]) == value_label(first[k]) for m in members)]
    alike = f" ({len(members)} points alike)" if len(members) > 1 else ""
    return label + "\n" + ", ".join(shared) + alike


def _markdown(run: RunResult, grids: list[Grid], curve_paths: list[Path], overviews: list[Path]) -> str:
    pipeline = run.pipeline
    env = json.loads((run.run_dir / "environment.json").read_text())
    lines = [f"# {pipeline.name}", ""]
    if pipeline.description:
        lines += [pipeline.description.strip(), ""]
    lines += [
        f"- pipeline: `{pipeline.file}`",
        f"- status: {run.status} ({len(run.points)} of {len(pipeline.plans)} sweep points)",
        f"- device: {env.get('gpu', env['device'])}; torch {env['torch']}; amemctl {env['amemctl']}",
        f"- seed: {pipeline.seed}",
        "",
    ]
    for grid in grids:
        lines += [f"## {grid.title}{_unit(grid.format)}", "", markdown_table(grid), ""]
    timing = _timing(run.points)
    if timing:
        lines += ["## Time per step (s, median over sweep points)", "", timing, ""]
    for p in run.points:
        for title, text in p.notes:
            lines += [f"## {title}" + (f" ({p.point.label()})" if len(run.points) > 1 else ""), "", text.strip(), ""]
    own = list(dict.fromkeys(f for p in run.points for f in p.figures if f.exists()))[:24]
    pictures = [*curve_paths, *overviews, *own]
    if pictures:
        lines += ["## Figures", ""]
        lines += [f"![{p.stem}](figures/{p.name})" for p in pictures]
        lines.append("")
    return "\n".join(lines)


def _timing(points: list[PointResult]) -> str:
    names: list[str] = []
    for p in points:
        names += [k for k in p.metrics if k.startswith("seconds.") and k not in names]
    if not names:
        return ""
    rows = []
    for name in names:
        values = sorted(p.metrics[name] for p in points if name in p.metrics)
        rows.append(f"| {name[len('seconds.'):]} | {values[len(values) // 2]:.4f} | {len(values)} |")
    return "\n".join(["| step | median | runs |", "|---|---:|---:|", *rows])
