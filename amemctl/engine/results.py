"""What a run leaves behind: metrics.json, report.md with its tables, curves and overviews."""

from __future__ import annotations

import json
import math
import re
import statistics
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from rich.console import Console
from rich.measure import Measurement
from rich.table import Table

from amemctl import figures
from amemctl.atomic import write_atomically
from amemctl.console import plain
from amemctl.dsl.pipeline import CurveSpec, Pipeline, TableSpec
from amemctl.dsl.sweep import MissingField, Point, lookup, value_label
from amemctl.engine.records import closing_line, json_object
from amemctl.engine.runner import PointResult, RunResult, environment
from amemctl.stage import Metric, declared_metrics

#: how common sweep variables read on an axis
VARIABLES = {
    "n": "patterns stored (n)",
    "beta": "inverse temperature (beta)",
    "variance": "noise variance",
    "corruption.mean": "mean of the Gaussian noise",
    "corruption.variance": "variance of the Gaussian noise",
    "corruption.fraction": "fraction masked",
    "fraction": "fraction masked",
}


def declared_by(run: RunResult) -> dict[str, Metric]:
    """The metrics the run's stages declare, by name: how its figures read them."""
    return declared_metrics(planned.stage for plan in run.pipeline.plans for planned in plan.stages)


def describe_variable(reference: str) -> str:
    return VARIABLES.get(reference, reference.replace(".", " "))


@dataclass
class Grid:
    """A table of one metric, ready to print: row headers, column labels and cells."""

    title: str
    row_names: list[str]
    columns: list[str]
    rows: list[tuple[tuple[str, ...], list[float | None]]]
    format: str
    spread: dict[tuple[tuple[str, ...], str], float] | None = None  #: (row, column) -> std over repeats
    column_name: str | None = None  #: the sweep variable across the columns

    def headers(self) -> list[str]:
        """Row-variable names, the last one naming the column variable too (`similarity \\ separation`)."""
        names = list(self.row_names)
        if self.column_name and names:
            names[-1] = f"{names[-1]} \\ {self.column_name}"
        return names


def write_inputs(run_dir: Path, pipeline: Pipeline, device: torch.device) -> None:
    """The pipeline as written and as resolved (overrides applied), and the environment.

    Each is written whole or not at all: on `--resume` pipeline.yaml is what the run resumes
    from, and a write cut short (a full disk) must not leave it truncated.
    """
    write_atomically(run_dir / "pipeline.yaml", pipeline.text or yaml.safe_dump(pipeline.document, sort_keys=False))
    resolved = dict(pipeline.document, device=str(device))
    write_atomically(run_dir / "resolved.yaml", yaml.safe_dump(resolved, sort_keys=False, allow_unicode=True))
    write_atomically(run_dir / "environment.json", json.dumps(environment(device), indent=2) + "\n")


def write_outputs(run: RunResult, console: Console, stop_line: bool = True) -> None:
    """metrics.json, metrics.csv, the tables (printed and in report.md), curves and sweep overviews.

    Without `stop_line`, a run that did not finish ends without its closing line: rank 0 of
    an `--nproc` run leaves it to the launcher, which alone knows how every rank ended.
    """
    pipeline = run.pipeline
    document = _metrics_document(run)
    write_atomically(run.run_dir / "metrics.json", json.dumps(document, indent=2, default=str) + "\n")
    write_csv(rows_of(document), run.run_dir / "metrics.csv")
    grids = [grid for spec in pipeline.tables for grid in build_grids(spec, run.points)]
    curve_paths = [path for spec in pipeline.curves for path in _write_curves(spec, run)]
    overviews = _write_example_figures(run)
    for grid in grids:
        print_table(console, grid)
    write_atomically(run.run_dir / "report.md", _markdown(run, grids, curve_paths, overviews))
    if run.status == "ok" or stop_line:
        console.print(_closing_line(run), style="yellow" if run.status != "ok" else None, markup=False, highlight=False, soft_wrap=True)


def _closing_line(run: RunResult) -> str:
    """The run's last line: its folder; for a stopped run how far it got and, interrupted, how to go on."""
    if run.status == "ok":
        return f"run folder: {run.run_dir}"
    return closing_line(run.status, run.progress(), run.run_dir)


def restate(run_dir: Path, status: str, error: str | None) -> None:
    """Make metrics.json and report.md say how the run ended (`failed` or `interrupted`), as its corrected run.json does.

    An `--nproc` launcher corrects rank 0's record when another rank ended the run (records.
    RunRecord.fail_elsewhere, interrupt_elsewhere); what rank 0 wrote beside it said what
    rank 0 saw. Files absent or not as write_outputs wrote them are left alone.
    """
    metrics = run_dir / "metrics.json"
    try:
        document = json_object(metrics)
    except ValueError:
        document = None
    if document is not None:
        document["status"] = status
        document.pop("error", None)
        if error:
            document["error"] = error
        write_atomically(metrics, json.dumps(document, indent=2, default=str) + "\n")
    report = run_dir / "report.md"
    try:
        text = report.read_text()
    except OSError:
        return
    write_atomically(report, re.sub(r"^- status: \w+(?= \(\d+ of \d+ sweep points\)$)", f"- status: {status}", text, count=1, flags=re.MULTILINE))


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
                "values": p.point.values,
                "seeds": p.seeds,
                "metrics": p.metrics,
                "repeats": p.repeats,
                "figures": [str(f.relative_to(run.run_dir)) for f in p.figures],
            }
            for p in run.points
        ],
    }


def rows_of(document: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per sweep point and repeat, from a metrics.json document: a DataFrame-ready table.

    Columns: `point` (its index), `repeat`, `seed`, each sweep variable (its value when a
    scalar, else its label as tables show it, with `var.field` columns for a mapping's
    scalar fields), then the metrics of that repeat (means with `.std` columns for runs
    written before seeds were recorded).
    """
    rows: list[tuple[dict[str, Any], dict[str, float]]] = []
    for p in document.get("points", []):
        sweep: dict[str, Any] = {}
        values = p.get("values")
        for name, label in p.get("sweep", {}).items():
            value = values.get(name, label) if isinstance(values, dict) else label
            if isinstance(value, dict):
                sweep[name] = label
                sweep.update({f"{name}.{k}": v for k, v in value.items() if _scalar(v)})
            else:
                sweep[name] = value if _scalar(value) else label
        repeats = p.get("repeats") or [p.get("metrics", {})]
        seeds = p.get("seeds") or []
        for r, metrics in enumerate(repeats):
            rows.append(({"point": p.get("index"), "repeat": r, "seed": seeds[r] if r < len(seeds) else None, **sweep}, metrics))
    columns: list[str] = []  # every row gets every sweep column, so they come before the metrics
    for head, _ in rows:
        columns += [c for c in head if c not in columns]
    return [{**{c: head.get(c) for c in columns}, **metrics} for head, metrics in rows]


def _scalar(value: Any) -> bool:
    return value is None or isinstance(value, (str, int, float, bool))


def write_csv(rows: list[dict[str, Any]], path: Path) -> None:
    """The rows as CSV, columns in order of first appearance (empty where a row lacks one)."""
    import csv
    import io

    columns: list[str] = []
    for row in rows:
        columns += [c for c in row if c not in columns]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, restval="", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_atomically(path, buffer.getvalue())


def results(run: "str | Path | RunResult", **options: Any) -> list[dict[str, Any]]:
    """The results of a run as a table: a list of rows (dicts), one per sweep point and repeat.

    `run` is a RunResult, a run folder (runs/<pipeline>/<stamp>), or a pipeline file
    (.yaml), which is then run first (`options`: overrides=[...], out_root, device,
    progress; see run_file). `pandas.DataFrame(rows)` makes a DataFrame of it; see rows_of
    for the columns.
    """
    from amemctl.errors import RunFolderError

    if isinstance(run, (str, Path)) and Path(run).suffix in (".yaml", ".yml") and Path(run).is_file():
        run = run_file(run, **options)
    if isinstance(run, RunResult):
        return rows_of(_metrics_document(run))
    path = Path(run)
    path = path / "metrics.json" if path.is_dir() else path
    if not path.exists():
        raise RunFolderError(f"no metrics.json at {path}", hint="give a run folder, runs/<pipeline>/<stamp>")
    try:
        document = json_object(path)
    except ValueError as exc:  # unreadable, not JSON, nested too deep, not an object
        raise RunFolderError(f"cannot read {path}: {exc}") from None
    return rows_of(document)


def run_file(
    path: "str | Path", overrides: "list[str] | None" = None, *, out_root: "str | Path" = "runs", device: str | None = None, progress: bool = False
) -> RunResult:
    """Check and run the pipeline file at `path` (a notebook's `amemctl run`); returns the RunResult."""
    from amemctl.dsl.pipeline import load_pipeline
    from amemctl.engine.runner import run_pipeline

    pipeline = load_pipeline(path, list(overrides or []))
    return run_pipeline(pipeline, out_root=out_root, device=device, progress=progress, overrides=list(overrides or []), command=[])


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
        grids.append(Grid(title, list(spec.rows) or ["metric"], columns, rows, spec.format, single or None, spec.columns))
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


#: the unit of values in each format that has one
UNITS = {"percent": "%", "seconds": "s"}


def unit(fmt: str) -> str:
    """What a title or column header of values in format `fmt` ends with: " (%)", " (s)", or nothing (plain numbers)."""
    return f" ({UNITS[fmt]})" if fmt in UNITS else ""


def print_table(console: Console, grid: Grid) -> None:
    """The grid as a box table when it fits the console's width, else as its markdown lines.

    A box table wider than the console folds every header and cell into one-letter columns
    (a UHN sweep of 17 conditions at 80 columns, the width of a log file, was unreadable);
    markdown lines stay whole and wrap, so a log keeps exactly what report.md shows.
    """
    table = _rich_table(grid)
    if Measurement.get(console, console.options.update_width(10**6), table).maximum <= console.width:
        console.print(table)
        return
    console.print(grid.title + unit(grid.format), markup=False, highlight=False)
    console.print(markdown_table(grid), markup=False, highlight=False, soft_wrap=True)


def _rich_table(grid: Grid) -> Table:
    table = Table(title=plain(grid.title + unit(grid.format)), title_justify="left")
    for name in grid.headers():
        table.add_column(plain(name), style="bold", overflow="fold")
    for column in grid.columns:
        table.add_column(plain(column), justify="right", overflow="fold")
    for row, values in grid.rows:
        table.add_row(*map(plain, row), *(plain(cell(grid, row, c, v)) for c, v in zip(grid.columns, values)))
    return table


def markdown_table(grid: Grid) -> str:
    head = [*grid.headers(), *grid.columns]
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
    declared = declared_by(run)
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
        metric = declared.get(spec.metric) or Metric(spec.metric)
        base = spec.title if spec.title != spec.metric else metric.title
        title = base + ("\n(" + ", ".join(f"{k}={v}" for k, v in others) + ")" if others else "")
        stem = "".join(ch if ch.isalnum() else "-" for ch in f"{spec.metric}-vs-{spec.x}") + (f"-{n}" if len(groups) > 1 else "")
        fraction = (metric.low, metric.high) == (0.0, 1.0)
        paths.append(
            figures.curves(
                series,
                run.run_dir / "figures" / f"curve-{stem}.png",
                title=title,
                xlabel=describe_variable(spec.x),
                ylabel=metric.label,
                log_x=spec.log_x,
                percent=fraction,
                bounds=(metric.low, metric.high),
                legend_title=", ".join(spec.series) or None,
            )
        )
    return paths


def _write_example_figures(run: RunResult) -> list[Path]:
    """figures/<figure>[-<condition>][-<part>].png for each figure the points showed examples in.

    A row several points share (the same originals, the same queries, or retrievals that
    came out identical) is drawn once, labelled with the sweep values of the points it
    stands for. A figure of more than figures.MAX_ROWS rows is split by a sweep variable
    (one figure per corruption, say; `_pages` says which), then into parts, so
    every figure fits a screen at 100 % zoom; its title says which condition it shows. Each
    retrieval row appears beside the originals and queries of its points, repeated on every
    part that needs them, so each part reads alone.
    """
    names: list[str] = []
    for p in run.points:
        names += [n for n in p.examples if n not in names]
    paths = []
    for figure in names:
        clusters: list[tuple[tuple, list[PointResult]]] = []
        for p in run.points:
            for entry in p.examples.get(figure, []):
                same = next((c for c in clusters if c[0][0] == entry[0] and _same(c[0][1], entry[1])), None)
                if same is not None:
                    same[1].append(p)
                else:
                    clusters.append((tuple(entry), [p]))
        pages = _pages(clusters, [p for p in run.points if figure in p.examples])
        _remove_pages(run, figure)  # of an earlier writing (a resumed run may be paged otherwise)
        for n, (condition, group, rows) in enumerate(pages):
            entries = [(_row_label(entry[0], members, group, condition), *entry[1:]) for entry, members in rows]
            title = run.pipeline.name + (f": {figure}" if figure != "retrievals" else "") + (f" ({', '.join(condition)})" if condition else "")
            if len(pages) > 1:
                title += f" [{n + 1}/{len(pages)}]"
            stem = figure if len(pages) == 1 else f"{figure}-{n + 1:02d}" + ("-" + _slug(condition) if condition else "")
            paths.append(figures.image_grid(entries, run.run_dir / "figures" / f"{stem}.png", title=title))
    return paths


def _remove_pages(run: RunResult, figure: str) -> None:
    """Delete figures/<figure>.* and figures/<figure>-NN*.* that a report wrote (not a stage's own figures)."""
    kept = {f.resolve() for p in run.points for f in p.figures}
    folder = run.run_dir / "figures"
    for path in [*folder.glob(f"{figure}.*"), *folder.glob(f"{figure}-[0-9][0-9]*.*")]:
        if path.suffix in (".png", ".svg", ".pdf") and path.resolve() not in kept:
            path.unlink(missing_ok=True)


def _pages(clusters: list, points: list[PointResult]) -> list[tuple[list[str], list[PointResult], list]]:
    """(condition, its points, its rows) per figure, each at most figures.MAX_ROWS lines (long rows wrap).

    One figure when it fits; otherwise split by the sweep variable whose conditions show the
    fewest different inputs (originals and queries) each, so that a figure compares what its
    models made of the same queries: one figure per corruption, say; then the fewest figures.
    Only a variable whose conditions each show fewer rows than the whole splits; parts
    without a condition when none does.
    """
    wraps = max((figures.lines_per_row(len(entry[1])) for entry, _ in clusters), default=1)
    limit = max(1, figures.MAX_ROWS // wraps)
    whole = _paged(clusters, [([], points)], limit)
    if len(whole) == 1 or not points:
        return whole
    best = None
    for var in points[0].point.values:
        values = list(dict.fromkeys(value_label(p.point.values[var]) for p in points))
        groups = [([f"{var}={v}"], [p for p in points if value_label(p.point.values[var]) == v]) for v in values]
        if len(values) < 2 or max(len(_rows_of(clusters, group)) for _, group in groups) >= len(clusters):
            continue
        inputs = max(sum(_unjudged(entry) for entry, _ in _rows_of(clusters, group)) for _, group in groups)
        paged = _paged(clusters, groups, limit)
        if best is None or (inputs, len(paged)) < best[0]:
            best = ((inputs, len(paged)), paged)
    return whole if best is None else best[1]


def _paged(clusters: list, split: list[tuple[list[str], list[PointResult]]], limit: int) -> list:
    """Each condition's rows in parts of at most `limit` rows, every judged row beside the originals
    and queries of its points (repeated on each part that needs them), so each part reads alone."""
    pages = []
    for condition, group in split:
        rows = _rows_of(clusters, group)
        judged = [r for r in rows if not _unjudged(r[0])]
        if not judged:  # nothing made from inputs: plain parts
            pages += [(condition, group, rows[start : start + limit]) for start in range(0, max(len(rows), 1), limit)]
            continue
        parts: list[list] = [[]]
        for row in judged:  # as many judged rows on a part as fit: how many parts are needed
            if parts[-1] and len(_with_inputs(rows, [*parts[-1], row])) > limit:
                parts.append([])
            parts[-1].append(row)
        size = math.ceil(len(judged) / len(parts))  # then as even parts as fit (7 rows: 4 and 3, not 6 and 1)
        even = [judged[start : start + size] for start in range(0, len(judged), size)]
        if len(even) == len(parts) and all(len(_with_inputs(rows, part)) <= limit for part in even):
            parts = even
        pages += [(condition, group, _with_inputs(rows, part)) for part in parts]
    return pages


def _with_inputs(rows: list, judged: list) -> list:
    """The unjudged rows (originals, queries) any of these judged rows' points showed, then the judged rows.

    Inputs first: a retrieval row that equals one of an earlier condition (all correct, say)
    is clustered with it and comes earlier in `rows`, but is read against the queries.
    """
    shown = {id(m) for _, members in judged for m in members}
    return [r for r in rows if _unjudged(r[0]) and any(id(m) in shown for m in r[1])] + [r for r in rows if any(r is j for j in judged)]


def _unjudged(entry: tuple) -> bool:
    """Whether a row of examples carries no red frames: what the points were given (originals,
    queries), which a page repeats when every point of its group shares it, not what they made."""
    return len(entry) < 3 or entry[2] is None


def _rows_of(clusters: list, group: list[PointResult]) -> list:
    ids = {id(p) for p in group}
    return [(entry, [m for m in members if id(m) in ids]) for entry, members in clusters if any(id(m) in ids for m in members)]


def _slug(condition: list[str]) -> str:
    return "".join(ch if ch.isalnum() or ch in ".=" else "-" for ch in "_".join(condition))[:60].strip("-")


def _same(a: Any, b: Any) -> bool:
    return a.shape == b.shape and torch.equal(a, b)


def _row_label(label: str, members: list[PointResult], group: list[PointResult], condition: list[str]) -> str:
    """The row's label, under it the sweep values of the points it stands for (those that vary in its figure)."""
    if len(members) == len(group):
        return label
    fixed = {c.split("=", 1)[0] for c in condition}
    varying = [k for k in group[0].point.values if k not in fixed and len({value_label(p.point.values[k]) for p in group}) > 1]
    parts = []
    for k in varying:
        values = list(dict.fromkeys(value_label(m.point.values[k]) for m in members))
        parts.append(f"{k}={'|'.join(values)}")
    return label + "\n" + _wrap(", ".join(parts))


def _wrap(text: str, width: int = 34) -> str:
    import textwrap

    return "\n".join(textwrap.wrap(text, width)) or text


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
        lines += [f"## {grid.title}{unit(grid.format)}", "", markdown_table(grid), ""]
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
