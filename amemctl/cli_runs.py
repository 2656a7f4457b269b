"""`amemctl runs ...`: list run folders, show one, compare several side by side."""

from __future__ import annotations

import json
from pathlib import Path

import click
from rich.table import Table

from amemctl.console import console as make_console
from amemctl.console import plain

_ROOT = click.option("--root", default="runs", show_default=True, type=click.Path(file_okay=False, path_type=Path), help="Folder holding the run folders (run's --out).")


@click.group()
def runs() -> None:
    """List, show and compare runs (the folders under runs/<pipeline>/<stamp>)."""


@runs.command("ls")
@click.argument("pipeline", required=False)
@_ROOT
@click.option("--last", default=None, type=click.IntRange(1), help="Only the latest N runs.")
def list_runs(pipeline: str | None, root: Path, last: int | None) -> None:
    """List the runs under ROOT (of PIPELINE only, when given): status, when, duration, overrides, headline metric."""
    from amemctl.engine.runs import format_metric, format_seconds, run_folders, summarise

    folders = [p for p in run_folders(root) if pipeline is None or p.parent.name == pipeline]
    if last:
        folders = folders[-last:]
    console = make_console()
    if not folders:
        console.print(f"no runs under {root}" + (f" of pipeline {pipeline!r}" if pipeline else ""), markup=False)
        return
    summaries = [summarise(path, root) for path in folders]
    metrics = {s.headline for s in summaries if s.headline}
    one = metrics.pop() if len(metrics) == 1 else None  # one headline metric: named in the header
    table = Table(title=plain(f"runs in {root} (a run is named <pipeline>/<start time>)"), title_justify="left")
    for column in ("run", "status", "duration", "point runs", "overrides", f"{one} (mean)" if one else "headline"):
        table.add_column(plain(column), overflow="fold", no_wrap=column in ("run", "status"), justify="left" if column in ("run", "status", "overrides", "headline") else "right")
    for s in summaries:
        points = f"{s.points_done}/{s.points_total}" if s.points_total is not None else str(s.points_done if s.points_done is not None else "-")
        value = format_metric(s.headline_value, s.headline_format)
        headline = value if one else (f"{s.headline} {value}" if s.headline else "-")
        table.add_row(plain(s.id), _status(s.status), format_seconds(s.seconds), points, plain(" ".join(s.overrides) or "-"), plain(headline))
    console.print(table)


def _status(status: str) -> str:
    colour = {"finished": "green", "running": "cyan", "failed": "red", "interrupted": "yellow", "dead": "red"}.get(status)
    return f"[{colour}]{status}[/]" if colour else plain(status)


@runs.command()
@click.argument("run")
@_ROOT
def show(run: str, root: Path) -> None:
    """Show RUN (a run folder, <pipeline>/<stamp>, or a pipeline's name for its latest run): its record and metrics."""
    from amemctl.dsl.pipeline import default_format
    from amemctl.engine.records import count_text
    from amemctl.engine.results import format_value, unit
    from amemctl.engine.runs import find_run, format_metric, format_seconds, summarise

    s = summarise(find_run(run, root), root)
    record = s.record
    console = make_console(highlight=False)
    git = record.get("git") or {}
    lines = [
        ("run", str(s.path)),
        ("pipeline", f"{s.pipeline} ({record.get('file', '?')})"),
        ("directory", record.get("cwd") or "-"),  # where its relative paths point, and where --resume runs it
        ("status", _status(s.status) + plain(f" (pid {record.get('pid')} on {record.get('host')} is gone)" if s.status == "dead" else "")),
        ("command", " ".join(record.get("command") or []) or "-"),
        ("overrides", " ".join(s.overrides) or "-"),
        ("git", f"{git.get('commit', '?')[:12]}{' (dirty)' if git.get('dirty') else ''}" if git else "-"),
        ("started", s.started or "-"),
        ("ended", record.get("ended") or "-"),
        ("duration", format_seconds(s.seconds)),
        ("points", f"{count_text(s.points_done or 0, s.points_total, s.repeats)}, {s.points_reused} reused from an earlier attempt" if s.points_total is not None else "-"),
    ]
    if s.headline:
        lines.append(("headline", f"{s.headline} {format_metric(s.headline_value, s.headline_format)} (mean over points)"))
    for key, value in lines:  # the user's text, escaped; the status alone carries markup of its own
        console.print(f"[bold]{key:>10}[/]  {value if key == 'status' else plain(value)}", soft_wrap=True)
    error = record.get("error")
    if error:
        console.print(f"[bold]{'error':>10}[/]  [red]{plain(error.get('type'))}[/]: {plain(error.get('message'))}", soft_wrap=True)
        console.print(f"{'':>10}  traceback: {s.path / error.get('traceback', 'error.txt')}", markup=False)
    if record.get("attempts"):
        console.print(f"[bold]{'attempts':>10}[/]  " + plain("; ".join(f"{a.get('status')} {a.get('started')}" for a in record["attempts"])))
    points = s.metrics.get("points", [])
    if points:
        every = [k for k in points[0].get("metrics", {}) if not k.startswith("seconds.") and not k.endswith(".std")]
        names, rest = every[:8], every[8:]
        formats = {name: s.headline_format if name == s.headline else default_format(name) for name in names}  # as the report's tables read
        table = Table(title="metrics per sweep point", title_justify="left")
        table.add_column("point", overflow="fold")
        for name in names:
            table.add_column(plain(name + unit(formats[name])), justify="right")  # "(%)", "(s)": as report.md's tables head them
        for p in points:
            label = ", ".join(f"{k}={v}" for k, v in p.get("sweep", {}).items()) or "run"
            table.add_row(plain(label), *(format_value(_number(p.get("metrics", {}).get(n)), formats[n]) for n in names))
        console.print(table)
        if rest:  # a plugin's metrics come after the built-in ones': never dropped without a word
            console.print(f"not shown: {', '.join(rest)} (amemctl runs compare RUN RUN --metric NAME, or metrics.csv)", markup=False, soft_wrap=True)
    if (s.path / "report.md").is_file():
        console.print(f"report: {s.path / 'report.md'}", markup=False, soft_wrap=True)


def _number(value: object) -> float | None:
    """A metric's value as metrics.json holds it, None when it is missing or not a number."""
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


@runs.command()
@click.argument("run_names", nargs=-1, required=True, metavar="RUN RUN [RUN...]")
@_ROOT
@click.option("--metric", "metrics", multiple=True, help="Metrics to compare (repeatable; default: the runs' headline metrics).")
@click.option("--json", "as_json", is_flag=True, help="Print the comparison as JSON.")
def compare(run_names: tuple[str, ...], root: Path, metrics: tuple[str, ...], as_json: bool) -> None:
    """Show the metrics of two or more runs side by side, point by point."""
    from amemctl.engine.runs import compare as build
    from amemctl.engine.runs import find_run, format_metric
    from amemctl.errors import AmemctlError

    if len(run_names) < 2:
        raise AmemctlError("compare needs two runs or more", hint="e.g. amemctl runs compare quickstart/20250101-120000 quickstart/20250102-090000")
    comparison = build([find_run(n, root) for n in run_names], list(metrics), root)
    if as_json:
        click.echo(json.dumps({"runs": [r.id for r in comparison.runs], "rows": [{"point": p, "metric": m, "values": v} for p, m, v in comparison.rows]}, indent=2))
        return
    console = make_console(highlight=False)
    for n, r in enumerate(comparison.runs, 1):
        console.print(f"[bold]run {n}[/]: {plain(r.id)}  {_status(r.status)}  " + plain(" ".join(r.overrides) or "no overrides"), soft_wrap=True)
    table = Table(title="metrics side by side", title_justify="left")
    table.add_column("sweep point", overflow="fold")
    table.add_column("metric")
    for n, _ in enumerate(comparison.runs, 1):
        table.add_column(f"run {n}", justify="right")
    for label, metric, values in comparison.rows:
        fmt = comparison.formats.get(metric, "number")
        table.add_row(plain(label), plain(metric), *(format_metric(v, fmt) for v in values))
    console.print(table if table.row_count else "no metric in common to compare (give --metric NAME)")
