"""Run folders seen together: find them, summarise each, compare their metrics side by side.

A run is named by its folder (a path), by `<pipeline>/<stamp>` under the runs root, or by
its pipeline's name alone, which means that pipeline's latest run.
"""

from __future__ import annotations

import filecmp
import os
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from amemctl.engine.records import RECORD, is_number, load_record, read_json, status_of
from amemctl.errors import AmemctlError, RunFolderError
from amemctl.suggest import did_you_mean


@dataclass
class RunSummary:
    """What `runs ls` shows of one run folder."""

    path: Path
    id: str
    pipeline: str
    status: str
    started: str | None
    seconds: float | None
    points_done: int | None  #: point runs finished (one repeat of one sweep point each)
    points_total: int | None  #: sweep points x repeats
    overrides: list[str]
    headline: str | None  #: the first table's metric
    headline_value: float | None  #: its mean over the finished points
    headline_format: str = "number"
    record: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    repeats: int = 1
    points_reused: int = 0


def run_folders(root: "str | Path") -> list[Path]:
    """Every run folder under root (runs/<pipeline>/<stamp>/), oldest first by start."""
    root = Path(root)
    found = {p.parent for name in ("pipeline.yaml", RECORD) for p in root.glob(f"*/*/{name}")}
    return sorted(found, key=lambda p: (p.name, p.parent.name))


def find_run(name: str, root: "str | Path" = "runs") -> Path:
    """The run folder `name` names: a folder path, `<pipeline>/<stamp>` under root, or a pipeline's latest run.

    A run folder is one whose run.json amemctl wrote (records.load_record): a folder named
    outright that is not one, or whose record is damaged, is refused with that reason.
    """
    root = Path(root)
    refused: RunFolderError | None = None
    for candidate in (Path(name), root / name):
        if (candidate / RECORD).exists() or (candidate / "pipeline.yaml").is_file():
            try:
                load_record(candidate)
                return candidate
            except RunFolderError as exc:
                refused = refused or exc
    latest = sorted((p.parent for p in (root / name).glob(f"*/{RECORD}")), key=lambda p: p.name)
    if latest:
        load_record(latest[-1])
        return latest[-1]
    if refused is not None:
        raise refused
    known = sorted({p.parent.name for p in run_folders(root)})
    hint = f"runs under {root}: {', '.join(known)}" if known else f"there are no runs under {root}"
    raise AmemctlError(f"no run {name!r}: not a run folder, nor <pipeline>/<stamp> or a pipeline name under {root}", hint=hint + " (see `amemctl runs ls`)")


def summarise(path: Path, root: "str | Path" = "runs") -> RunSummary:
    """One run's status, timing, overrides and headline metric, from run.json and metrics.json.

    A run.json that does not check (records.load_record) reads as status `damaged`, so that
    `runs ls` still lists every other run; `runs show` names what is wrong.
    """
    try:
        record = load_record(path) if (path / RECORD).exists() else {}
        damaged = False
    except RunFolderError:
        record, damaged = {}, True
    metrics = read_metrics(path)
    try:
        ident = str(path.resolve().relative_to(Path(root).resolve()))
    except ValueError:
        ident = str(path)
    if damaged:
        status = "damaged"
    else:
        status = status_of(record) if record else ("finished" if metrics.get("status") == "ok" else str(metrics.get("status", "unknown")))
    headline = record.get("headline") or {}
    metric = headline.get("metric")
    values = [p["metrics"][metric] for p in metrics["points"] if metric and metric in p["metrics"]]
    return RunSummary(
        path=path,
        id=ident,
        pipeline=record.get("pipeline") or metrics.get("pipeline") or path.parent.name,
        status=status,
        started=record.get("started"),
        seconds=_duration(record, status, path),
        points_done=record.get("points_done", len(metrics["points"]) if metrics["points"] else None),
        points_total=record.get("points_total"),
        overrides=list(record.get("overrides") or []),
        headline=metric,
        headline_value=sum(values) / len(values) if values else None,
        headline_format=headline.get("format", "number"),
        record=record,
        metrics=metrics,
        repeats=record.get("repeats", 1),
        points_reused=record.get("points_reused", 0),
    )


def read_metrics(run_dir: Path) -> dict[str, Any]:
    """metrics.json of a run folder with the points that read as amemctl writes them ({"points": []} when none).

    Each point keeps its index, its sweep labels (a mapping of strings) and its numeric
    metrics; anything else in an edited or damaged file is left out rather than shown.
    """
    document = read_json(run_dir / "metrics.json") or {}
    points = document.get("points")
    cleaned = [_metrics_point(p) for p in points] if isinstance(points, list) else []
    return {
        "pipeline": document["pipeline"] if isinstance(document.get("pipeline"), str) else None,
        "status": document["status"] if isinstance(document.get("status"), str) else "unknown",
        "points": [p for p in cleaned if p is not None],
    }


def _metrics_point(point: Any) -> dict[str, Any] | None:
    if not isinstance(point, dict) or not isinstance(point.get("sweep", {}), dict) or not isinstance(point.get("metrics"), dict):
        return None
    return {
        "index": point.get("index") if isinstance(point.get("index"), int) else None,
        "sweep": {str(k): str(v) for k, v in point.get("sweep", {}).items() if isinstance(v, (str, int, float))},
        "metrics": {str(k): v for k, v in point["metrics"].items() if is_number(v)},
    }


def _duration(record: dict[str, Any], status: str, path: Path) -> float | None:
    """How long the run ran: to its end; running, until now; dead (killed), until it last recorded a finished point (run.json's time)."""
    try:
        start = datetime.fromisoformat(record["started"])
        end = datetime.fromisoformat(record["ended"]) if record.get("ended") else None
    except (KeyError, TypeError, ValueError):
        return None
    if end is None and status == "dead":  # not until now: a run killed a week ago did not run for a week
        try:
            end = datetime.fromtimestamp((path / RECORD).stat().st_mtime, start.tzinfo)
        except (OSError, ValueError):
            return None
    if end is None:
        return (datetime.now(start.tzinfo) - start).total_seconds() if status == "running" else None
    return max((end - start).total_seconds(), 0.0)


def format_seconds(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds // 60 % 60:02d}m"


def format_metric(value: float | None, fmt: str) -> str:
    """A value in a line of text or a table cell with no header to carry its unit: "22.2 %", "1.500 s", "0.25"."""
    from amemctl.engine.results import UNITS, format_value

    text = format_value(value, fmt)
    return text + (f" {UNITS[fmt]}" if fmt in UNITS and value is not None else "")


@dataclass
class Comparison:
    """Metrics of several runs side by side: one row per (sweep point, metric), one column per run."""

    runs: list[RunSummary]
    rows: list[tuple[str, str, list[float | None]]]  #: (point label, metric, value of each run)
    formats: dict[str, str]


def compare(paths: list[Path], metrics: list[str] | None = None, root: "str | Path" = "runs") -> Comparison:
    """Line up the points of `paths` by their sweep values; `metrics` default to the runs' headline metrics.

    Without headline metrics (no report tables) every metric the runs share is compared,
    except timings (seconds.*).
    """
    runs = [summarise(p, root) for p in paths]
    _check_metrics(metrics or [], runs)
    formats = {r.headline: r.headline_format for r in runs if r.headline}
    if not metrics:
        metrics = list(dict.fromkeys(r.headline for r in runs if r.headline))
    if not metrics:
        shared = None
        for r in runs:
            names = [k for p in r.metrics.get("points", []) for k in p.get("metrics", {}) if not k.startswith("seconds.") and not k.endswith(".std")]
            shared = list(dict.fromkeys(names)) if shared is None else [n for n in shared if n in names]
        metrics = shared or []
    labels: list[str] = []
    table: dict[tuple[str, str], list[float | None]] = {}
    for i, r in enumerate(runs):
        for p in r.metrics.get("points", []):
            label = ", ".join(f"{k}={v}" for k, v in p.get("sweep", {}).items()) or "run"
            if label not in labels:
                labels.append(label)
            for m in metrics:
                cells = table.setdefault((label, m), [None] * len(runs))
                cells[i] = p.get("metrics", {}).get(m)
    rows = [(label, m, table[(label, m)]) for label in labels for m in metrics if (label, m) in table]
    return Comparison(runs, rows, formats)


def _check_metrics(metrics: list[str], runs: list[RunSummary]) -> None:
    """Refuse a metric that none of the runs holds (a misspelt --metric printed a table of '-'), with the closest."""
    held = list(dict.fromkeys(name for r in runs for p in r.metrics["points"] for name in p["metrics"]))
    for metric in metrics:
        if held and metric not in held:
            plain = [m for m in held if not m.startswith("seconds.") and not m.endswith(".std")]
            raise AmemctlError(
                f"none of the runs holds a metric {metric!r}",
                hint=did_you_mean(metric, held) or f"their metrics: {', '.join(plain or held)}",
            )


def resume_source(name: str, root: "str | Path") -> tuple[Path, Path, list[str], list[str]]:
    """For `run --resume`: the run folder (an absolute path), the pipeline file to load, its recorded overrides, extra ones.

    The pipeline file is the original when it still reads as the copy in the run folder;
    otherwise the copy itself (named as the run was), so a pipeline edited since does not
    change what the run resumes. A relative `file` in run.json is relative to the directory
    the run was started in (its `cwd`, records.started_in), where the resumption loads and
    runs it, not to where it is resumed from.
    """
    run_dir = Path(os.path.abspath(find_run(name, root)))
    record = load_record(run_dir)
    copy = run_dir / "pipeline.yaml"
    if not copy.is_file():
        raise RunFolderError(f"{run_dir} has no pipeline.yaml, the copy of the pipeline it ran", hint="every run folder holds one from its start: put the pipeline it ran back there, or start the run afresh")
    overrides = list(record.get("overrides", []))
    original = Path(record["file"]) if record.get("file") else None
    if original is not None and _same_bytes(Path(record.get("cwd") or ".") / original, copy):
        return run_dir, original, overrides, []
    name_override = [f"name={record.get('pipeline') or run_dir.parent.name}"]
    return run_dir, copy, overrides, name_override


def _same_bytes(a: Path, b: Path) -> bool:
    """Whether two files hold the same bytes (False when either is not a readable file; filecmp compares sizes first, then blocks)."""
    try:
        return a.is_file() and filecmp.cmp(a, b, shallow=False)
    except OSError:
        return False
