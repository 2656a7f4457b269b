"""Running a checked pipeline: every sweep point, its steps, and the run folder.

Each run writes `runs/<pipeline>/<timestamp>/`: the pipeline as written and as resolved,
the versions and device, metrics.json, report.md with its tables, and figures/*.png. A
point whose stages share their configuration with an earlier point's reuses that point's
results up to where they differ, so a sweep over a retrieval setting loads and corrupts
the data once. Each stage draws its randomness from the seed and its own position, which
is what makes that reuse exact.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import random
import shlex
import shutil
import signal
import threading
import time
import traceback
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from amemctl import figures
from amemctl.console import console as make_console
from amemctl.context import Context, clock
from amemctl.core.random import derived_seed
from amemctl.dsl.pipeline import Pipeline, PlannedStage
from amemctl.dsl.sweep import Point
from amemctl.engine import files
from amemctl.engine.plan import Step, plan_steps
from amemctl.engine.records import (
    RECORD,
    TRACEBACK,
    Interrupted,
    RunLock,
    RunRecord,
    closing_line,
    count_text,
    ended_by,
    ignore_stops,
    is_int,
    is_number,
    load_record,
    short_repr,
    started_in,
    status_of,
    stopping_once,
    working_directory,
)
from amemctl.errors import (
    AmemctlError,
    DeviceError,
    StageCrash,
    StageError,
    blamed_function,
    chain,
    existing,
    refusal,
    refused,
)
from amemctl.models.tensor_files import load_tensors
from amemctl.plugins import BUILTIN, KINDS, Registry, culprit


@dataclass
class PointResult:
    """What one sweep point produced."""

    point: Point
    metrics: dict[str, float]
    figures: list[Path] = field(default_factory=list)
    examples: dict[str, list] = field(default_factory=dict)
    notes: list[tuple[str, str]] = field(default_factory=list)
    repeats: list[dict[str, float]] = field(default_factory=list)  #: each repeat's metrics, when repeated
    seeds: list[int] = field(default_factory=list)  #: the seed of each repeat (one seed when not repeated)


@dataclass
class RunResult:
    """A finished (or failed) run: its folder and every completed point."""

    pipeline: Pipeline
    run_dir: Path
    device: torch.device
    points: list[PointResult]
    status: str = "ok"
    error: str | None = None  #: what stopped a failed run, as the CLI prints it

    runs_done: int = 0  #: point runs finished (one repeat of one sweep point each), as run.json counts them

    def __repr__(self) -> str:  # the points hold tensors: printing them all helps nobody
        return f"RunResult({str(self.run_dir)!r}, status={self.status!r}, points={len(self.points)}, device={str(self.device)!r})"

    def progress(self) -> str:
        """How far the run got, in point runs: `85 of 510 point runs (102 points x 5 repeats)`."""
        repeats = self.pipeline.repeats
        return count_text(self.runs_done, len(self.pipeline.plans) * repeats, repeats)


def resolve_device(requested: str) -> torch.device:
    """`auto` picks CUDA when present, else the CPU; an absent device named outright is an error."""
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(requested)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError(
                f"device {requested!r} was asked for, but this machine has no CUDA device torch can use",
                hint="use --device cpu (or device: auto, which falls back to the CPU)",
            )
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise DeviceError(f"device {requested!r} does not exist: this machine has {torch.cuda.device_count()} CUDA device(s)", hint="use cuda:0 .. cuda:N-1")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise DeviceError(f"device {requested!r} is not available here", hint="use --device cpu or auto")
    return device


@dataclass(frozen=True)
class Elsewhere:
    """How a rank other than 0 names, in its messages, what its own run folder (scratch, deleted when it ends) does not keep."""

    folder: str  #: the run folder to resume
    traceback: str  #: where a crash's traceback is


def stage_seed(seed: int, position: int) -> int:
    """The seed of the stage at `position`: independent of what ran before it."""
    return derived_seed(seed, position + 1)


def run_pipeline(
    pipeline: Pipeline,
    *,
    out_root: "str | Path" = "runs",
    device: str | None = None,
    console: Console | None = None,
    progress: bool = True,
    group: object = None,
    overrides: "list[str] | tuple[str, ...]" = (),
    command: list[str] | None = None,
    resume: "str | Path | None" = None,
    announce: "Callable[[Path], None] | None" = None,
    stop_line: bool = True,
    elsewhere: Elsewhere | None = None,
) -> RunResult:
    """Run every sweep point of `pipeline` and write its run folder; see the module docstring.

    With a torch.distributed `group`, retrievals are split across its ranks (amemctl.launch).
    `overrides` and `command` are recorded in run.json. With `resume`, the run continues in
    that run folder: every (point, repeat) whose result is saved there under the same
    resolved configuration is reused, not recomputed. `announce` is called with the run
    folder once run.json records the run as running: an `--nproc` launcher learns where rank
    0's record is, to correct it if another rank fails. Without `stop_line`, a run that does
    not finish ends without its closing line (how far it got, how to resume): rank 0 of an
    `--nproc` run leaves it to the launcher, which alone knows how every rank ended.
    `elsewhere`: the run folder is a rank's own, deleted when it ends (a rank other than 0):
    messages name rank 0's folder, and where the traceback is, as it says.

    Before the run folder is made, every file, folder and store a stage reads must be there
    (engine.files.check_files). A resumed run runs in the directory its run was started in
    (run.json's cwd), so that the pipeline's relative paths name the same files from
    wherever it is resumed; it refuses to reuse finished points computed from an input that
    has changed since (engine.files.inputs).
    """
    start = previous = None
    if resume is not None:
        resume = Path(os.path.abspath(resume))
        previous = _resumable(resume)  # a run folder amemctl made, not running: before its lock file is made in it
        start = started_in(previous, resume)
    with working_directory(start):
        return _run_pipeline(
            pipeline, out_root=out_root, device=device, console=console, progress=progress, group=group, overrides=overrides,
            command=command, resume=resume, previous=previous, announce=announce, stop_line=stop_line, elsewhere=elsewhere,
        )


def _run_pipeline(
    pipeline: Pipeline,
    *,
    out_root: "str | Path",
    device: str | None,
    console: Console | None,
    progress: bool,
    group: object,
    overrides: "list[str] | tuple[str, ...]",
    command: list[str] | None,
    resume: Path | None,
    previous: "dict[str, Any] | None",
    announce: "Callable[[Path], None] | None",
    stop_line: bool,
    elsewhere: Elsewhere | None,
) -> RunResult:
    """run_pipeline in the directory the run reads its relative paths from; `previous`: the resumed run's record, as read before."""
    from amemctl.engine import results

    console = console or make_console()
    torch_device = resolve_device(device or pipeline.device)
    files.check_files(pipeline)  # a mistyped path is told now, at its line, not when its stage runs
    inputs = files.inputs(pipeline)
    run_dir = resume if resume is not None else new_run_dir(Path(out_root), pipeline.name)
    planned = [(plan.point, plan_steps(plan.stages)) for plan in pipeline.plans]
    # Each repeat is a run of its own with the next seed; repeats of a point run back to back.
    runs = [(point, steps, r) for point, steps in planned for r in range(pipeline.repeats)]
    keys = [point_key(pipeline.seed + r, steps) for _, steps, r in runs]
    cache = _PrefixCache([[f"seed={pipeline.seed + r}", *[s.key for s in steps]] for _, steps, r in runs])
    run = RunResult(pipeline, run_dir, torch_device, [])
    lock = RunLock(run_dir)
    try:
        try:
            lock.acquire()  # one process runs a run folder at a time
            if resume is not None:  # again, under the lock: another `--resume` may have run it since
                previous = _resumable(run_dir)
                _refuse_changed_inputs(previous, inputs, run_dir, pipeline, keys)
            results.write_inputs(run_dir, pipeline, torch_device)
            record = RunRecord.start(
                run_dir,
                pipeline=pipeline.name,
                file=pipeline.file,
                overrides=list(overrides),
                command=command,
                points=len(runs),
                headline={"metric": pipeline.tables[0].metric, "format": pipeline.tables[0].format} if pipeline.tables else None,
                previous=previous,
                repeats=pipeline.repeats,
                inputs=inputs,
            )
        except OSError as exc:
            if not refused(exc):
                raise
            if previous is None:  # a new folder without its run.json is no run: nothing in it can be resumed
                shutil.rmtree(run_dir, ignore_errors=True)
            raise folder_error(exc, run_dir, resumable=previous is not None, elsewhere=elsewhere) from None
        except (KeyboardInterrupt, Interrupted):  # stopped before the run was recorded: there is nothing to resume
            if resume is None:  # the new folder holds its inputs alone (environment() takes seconds): no run folder, removed
                shutil.rmtree(run_dir, ignore_errors=True)
            raise
        error: BaseException | None = None

        def warn(text: str) -> None:
            console.print(f"warning: {text}", style="yellow", markup=False, highlight=False, soft_wrap=True)

        with figures.extra_formats(pipeline.formats):  # every figure of the run, the stages' and the report's, in these formats too
            try:
                if announce is not None:  # first in the try: a stop from here on ends the recorded run with its closing line
                    announce(run_dir)
                bar = Progress(
                    SpinnerColumn(),
                    TextColumn("{task.description}", markup=False),  # point labels, paths: the user's text, never markup
                    BarColumn(),
                    MofNCompleteColumn(),
                    TimeElapsedColumn(),
                    console=console,
                    disable=not progress,
                    transient=True,
                )
                log = _LogLines(console, len(runs)) if progress and not console.is_terminal else None
                if log is not None:
                    log.line(f"{pipeline.name}: {len(runs)} sweep point(s) x repeat(s), run folder {run_dir}")
                with bar, _signals_interrupt():
                    sweep_task = bar.add_task(pipeline.name, total=len(runs))
                    done: list[PointResult] = []
                    reused = 0
                    for i, (point, steps, r) in enumerate(runs):
                        seed = pipeline.seed + r
                        result = load_point(run_dir, keys[i], point, warn) if previous is not None else None
                        was_reused = result is not None
                        if result is None:
                            result = _run_point(pipeline, point, steps, run_dir, torch_device, cache, bar, log, i, seed, group, elsewhere, record.data["id"])
                            save_point(run_dir, keys[i], result, seed)
                        reused += was_reused
                        done.append(result)
                        cache.release(i)
                        bar.advance(sweep_task)
                        record.progress(i + 1, reused)
                        run.runs_done = i + 1
                        if log is not None:
                            log.point(i, point.label() + (f" (repeat {r + 1})" if pipeline.repeats > 1 else ""), reused=was_reused)
                        if r == pipeline.repeats - 1:
                            run.points.append(combine(done))
                            done = []
            except BaseException as exc:
                error, run.status = exc, "failed"  # first, in plain assignments: a second stop signal may cut what follows short
                error = run_refusal(exc, run_dir, elsewhere) if refused(exc) else exc  # a point's file, run.json, the console: a stage's own is told in _run_point
                if stopping_once():  # an `--nproc` rank's run ends here: the stop the launcher sends its peers must not cut its record short
                    ignore_stops()
                if isinstance(error, AmemctlError):
                    run.error = error.render()
                if error is exc:
                    raise
                raise error from None
            finally:
                if error is not None:  # here, not in the except: a second stop signal there must not leave the report and the record disagreeing
                    run.status = ended_by(error)
                try:
                    try:
                        results.write_outputs(run, console, stop_line)
                    except OSError as exc:
                        if not refused(exc):
                            raise
                        if error is None:
                            raise run_refusal(exc, run_dir, elsewhere) from None
                        with contextlib.suppress(OSError):  # the console may be what the disk refused: the error that stopped the run is the one to tell
                            warn(f"the report of this run could not be written in {run_dir}: {exc.strerror or exc}")
                            if stop_line:  # write_outputs ends with it
                                console.print(closing_line(run.status, run.progress(), run_dir), style="yellow", markup=False, highlight=False, soft_wrap=True)
                except BaseException as exc:
                    error = error or exc
                    raise
                finally:
                    _finish(record, error, warn, elsewhere)
        return run
    finally:
        lock.release()


def folder_error(exc: OSError, run_dir: Path, resumable: bool = True, elsewhere: Elsewhere | None = None) -> AmemctlError:
    """A write to the run folder that the file system refused (a full disk, no permission), with the fix and how to go on.

    Not `resumable`: the folder was new and, without its run.json, is removed again.
    `elsewhere`: see run_pipeline.
    """
    error = refusal(exc, f"the run folder {run_dir}", where=existing(run_dir), then=_go_on(run_dir, elsewhere) if resumable else "run it again")
    if not resumable:
        error.message += "; the folder is removed again, as the run had not started"
    return error


def run_refusal(exc: OSError, run_dir: Path, elsewhere: Elsewhere | None = None) -> AmemctlError:
    """A refusal of the file system met while running: of the run folder (whose files are all named: atomic.replacing), or of another file (the standard output on a full disk)."""
    file = exc.filename
    if file is not None and Path(os.path.abspath(file)).is_relative_to(os.path.abspath(run_dir)):
        return folder_error(exc, run_dir, elsewhere=elsewhere)
    return refusal(exc, then=_go_on(run_dir, elsewhere))


def _go_on(run_dir: Path, elsewhere: Elsewhere | None = None) -> str:
    """What to do once the file system lets the run go on: resume it, reusing its finished points (`elsewhere`: see run_pipeline)."""
    if elsewhere is not None:
        return f"continue the run with `amemctl run --resume` and {elsewhere.folder} (its finished points are reused)"
    return f"continue the run with `amemctl run --resume {run_dir}` (its finished points are reused)"


def _finish(record: RunRecord, error: BaseException | None, warn: Callable[[str], None], elsewhere: Elsewhere | None = None) -> None:
    """End the run's record; one the file system refuses is the run's error, unless another error already stopped it (then only warned of, if the console can)."""
    try:
        record.finish(error)
    except OSError as exc:
        if not refused(exc):
            raise
        if error is None:
            raise folder_error(exc, record.run_dir, elsewhere=elsewhere) from None
        with contextlib.suppress(OSError):
            warn(f"{record.run_dir / RECORD} could not record how the run ended ({exc.strerror or exc}); `amemctl runs ls` shows it as dead")


def _resumable(run_dir: Path) -> dict[str, Any]:
    """The record of a run folder that may be resumed: one amemctl made (its run.json checks), not running now.

    Resuming writes report.md, metrics.* and figures/ into the folder: a folder that is not
    a run's (a project folder with its own pipeline.yaml and report.md) is refused.
    """
    previous = load_record(run_dir)
    if status_of(previous) == "running":
        raise AmemctlError(f"run {run_dir} is still running (pid {previous.get('pid')} on {previous.get('host')})", hint="wait for it to end, or stop that process first")
    return previous


def _refuse_changed_inputs(previous: dict[str, Any], inputs: dict[str, Any], run_dir: Path, pipeline: Pipeline, keys: list[str]) -> None:
    """Refuse to resume a run whose finished points read a file, folder or store that holds something else now.

    Points are reused by their configuration: a store rewritten between the run and its
    resumption would otherwise put results of the old rows beside results of the new ones
    in one table, without a word. An input that only unfinished points read may change.
    """
    changed = files.changes(previous.get("inputs") or {}, inputs)
    if not changed:
        return
    read = [{str(path) for _, _, path in files.point_reads(plan)} for plan in pipeline.plans for _ in range(pipeline.repeats)]  # in the order of `keys`
    finished = [i for i, key in enumerate(keys) if (run_dir / "points" / f"{key}.pt").is_file()]
    told = []
    for path, what in changed.items():
        count = sum(1 for i in finished if path in read[i])
        if count:
            told.append(f"{path} ({what}), which {count} finished point run(s) read")
    if told:
        again = shlex.join(["amemctl", "run", str(previous.get("file") or pipeline.file), *(a for o in previous.get("overrides") or [] for a in ("--set", o))])
        raise AmemctlError(
            f"cannot resume {run_dir}: what it reads has changed since its finished points were computed: {'; '.join(told)}. "
            "Resuming would put their results beside points computed from what is there now",
            hint=f"put it back as it was, then resume; or start a new run, which computes every point from what is there now: `{again}` (this run folder is left as it was)",
        )


def work_id(run_id: str, prefix: "tuple[str, ...]") -> str:
    """Context.work_id of a step: the run's id (run.json's, kept by every resumption) and the seed and resolved steps up to it."""
    return hashlib.sha256(json.dumps([run_id, *prefix]).encode()).hexdigest()[:24]


def point_key(seed: int, steps: list[Step]) -> str:
    """The identity of one (point, repeat): its seed and every step's resolved configuration."""
    text = json.dumps([seed, [s.key for s in steps]])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


POINT_FORMAT = "amemctl-point"


def save_point(run_dir: Path, key: str, result: PointResult, seed: int) -> None:
    """points/<key>.pt: what a finished (point, repeat) produced, so a resumed run reuses it."""
    from amemctl.models.encoders import save_atomically

    payload = {
        "format": POINT_FORMAT,
        "key": key,
        "seed": seed,
        "metrics": dict(result.metrics),
        "examples": {name: [tuple(row) for row in rows] for name, rows in result.examples.items()},
        "notes": [list(n) for n in result.notes],
        "figures": [str(f.relative_to(run_dir)) if f.is_relative_to(run_dir) else str(f) for f in result.figures],
    }
    save_atomically(payload, run_dir / "points" / f"{key}.pt")


def load_point(run_dir: Path, key: str, point: Point, warn: "Callable[[str], None] | None" = None) -> PointResult | None:
    """A saved (point, repeat) result, or None when absent or unusable (then it is recomputed).

    An unusable file (damaged, another point's, or with fields a resumed run cannot use:
    an edited file) is not trusted: `warn` is told which and why, and the point runs again.
    """
    path = run_dir / "points" / f"{key}.pt"
    if not path.is_file():
        return None
    try:
        try:
            payload = load_tensors(path)
        except Exception as exc:  # damaged, inflating, or not a point file at all
            raise ValueError(f"it cannot be read ({type(exc).__name__})") from None
        return _point_result(payload, key, point, run_dir)
    except ValueError as exc:
        if warn is not None:
            warn(f"{path} is not usable: {exc}; computing that point again")
        return None


def _point_result(payload: Any, key: str, point: Point, run_dir: Path) -> PointResult:
    """The PointResult a point file holds, each field checked as save_point writes it; a ValueError saying what is wrong."""
    if not isinstance(payload, dict) or payload.get("format") != POINT_FORMAT:
        raise ValueError("it is not an amemctl point file")
    if payload.get("key") != key:
        raise ValueError(f"it holds another point's result (key {payload.get('key')!r})")
    seed = payload.get("seed")
    if not is_int(seed):
        raise ValueError(f"its seed is {short_repr(seed)}, not an integer")
    metrics = payload.get("metrics")
    if not isinstance(metrics, dict) or not all(isinstance(k, str) and is_number(v) for k, v in metrics.items()):
        raise ValueError("its metrics are not a mapping of names to numbers")
    examples = payload.get("examples")
    if not isinstance(examples, dict) or not all(isinstance(name, str) and isinstance(rows, (list, tuple)) for name, rows in examples.items()):
        raise ValueError("its examples are not a mapping of figure names to rows")
    for rows in examples.values():
        for row in rows:
            _check_example_row(row)
    notes = payload.get("notes")
    if not isinstance(notes, (list, tuple)) or not all(isinstance(n, (list, tuple)) and len(n) == 2 and all(isinstance(t, str) for t in n) for n in notes):
        raise ValueError("its notes are not (title, text) pairs of strings")
    figures = payload.get("figures")
    if not isinstance(figures, (list, tuple)) or not all(isinstance(f, str) and _inside(f) for f in figures):
        raise ValueError("its figures are not paths inside the run folder")
    rows = {name: [(row[0], *row[1:]) for row in rows] for name, rows in examples.items()}
    return PointResult(point, {k: float(v) for k, v in metrics.items()}, [run_dir / f for f in figures], rows, [(t, m) for t, m in notes], seeds=[int(seed)])


def _check_example_row(row: Any) -> None:
    """A row of example images as Context.show makes it: (label, N x ... images[, N booleans]), drawable by figures.image_grid."""
    if not isinstance(row, (list, tuple)) or len(row) not in (2, 3) or not isinstance(row[0], str):
        raise ValueError("a row of its examples is not (label, images[, wrong])")
    images = row[1]
    if not isinstance(images, torch.Tensor) or not 2 <= images.dim() <= 4 or images.numel() == 0 or images.is_complex():
        raise ValueError("a row of its examples does not hold images (a tensor of 2 to 4 dimensions)")
    if images.dim() == 4 and images.shape[1] == 2:
        raise ValueError("a row of its examples holds images of 2 channels")
    wrong = row[2] if len(row) == 3 else None
    if wrong is not None and (not isinstance(wrong, torch.Tensor) or wrong.dtype != torch.bool or wrong.shape != images.shape[:1]):
        raise ValueError("a row of its examples marks wrong retrievals with something other than one boolean per image")


def _inside(figure: str) -> bool:
    """Whether a saved figure path stays inside the run folder: relative, without `..`."""
    path = Path(figure)
    return bool(figure) and not path.is_absolute() and ".." not in path.parts



class _LogLines:
    """Plain progress lines for logs (stdout not a terminal): one per finished point, with the ETA."""

    def __init__(self, console: Console, total: int) -> None:
        self.console, self.total = console, total
        self.start = time.perf_counter()
        self.computed = 0
        self.computed_seconds = 0.0
        self.last = self.start

    def line(self, text: str) -> None:
        self.console.print(text, markup=False, highlight=False, soft_wrap=True)

    def point(self, i: int, label: str, reused: bool) -> None:
        now = time.perf_counter()
        took, self.last = now - self.last, now
        if not reused:
            self.computed += 1
            self.computed_seconds += took
        left = self.total - i - 1
        eta = clock(self.computed_seconds / self.computed * left) if self.computed else "?"
        how = "reused" if reused else f"{took:.1f}s"
        self.line(f"[{i + 1}/{self.total}] {label}: {how}; elapsed {clock(now - self.start)}, ETA {eta}")


@contextlib.contextmanager
def _signals_interrupt() -> Iterator[None]:
    """While running, SIGTERM (a scheduler's stop) and SIGINT (Ctrl-C) end the run as interrupted, with its record.

    SIGINT is taken too rather than left to Python's KeyboardInterrupt: a library in the same
    process (torch's elastic launcher) may have left a handler of its own for it. An `--nproc`
    rank keeps the handlers it has for its whole life (records.stop_once): they do the
    same once, then ignore the signal the launcher passes on.
    """
    if threading.current_thread() is not threading.main_thread() or stopping_once():
        yield
        return

    def stop(signum: int, frame: Any) -> None:
        raise Interrupted(signum)

    before = {signum: signal.signal(signum, stop) for signum in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for signum, handler in before.items():
            signal.signal(signum, handler)


def _run_point(
    pipeline: Pipeline,
    point: Point,
    steps: list[Step],
    run_dir: Path,
    device: torch.device,
    cache: "_PrefixCache",
    bar: Progress,
    log: "_LogLines | None",
    slot: int,
    seed: int,
    group: object = None,
    elsewhere: Elsewhere | None = None,
    run_id: str = "",
) -> PointResult:
    ctx = Context(device, seed, pipeline.budget, run_dir, point.label(), point.slug(), progress=bar if not bar.disable and log is None else None, log=log.line if log is not None else None, group=group, registry=pipeline.registry)
    ctx.provenance.update(pipeline=pipeline.name, file=pipeline.file, run=str(run_dir), seed=seed)
    first = cache.restore(slot, ctx)
    task = bar.add_task(point.label(), total=len(steps), completed=first)
    for j in range(first, len(steps)):
        step = steps[j]
        ctx.begin_stage(stage_seed(seed, step.parts[0].index), work_id(run_id, cache.keys[slot][j]))
        _seed_globals(ctx.stage_seed)
        start = time.perf_counter()
        try:
            # inside the try: describe() makes the separation, and a plugin's may raise
            bar.update(task, description=f"{point.label()}: {step.describe()}")
            step.run(ctx)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
        except AmemctlError as exc:
            exc.message = f"stage {step.parts[0].stage.name!r} failed ({point.label()}): {exc.message}"
            written = _plugin_writers(steps[:j], step, pipeline.registry) if isinstance(exc, StageError) else ""
            if written:  # bad data from a plugin stage is refused where it is read (a StageError): name where it was made
                exc.hint = "; ".join(filter(None, [exc.hint, f"{written}: check what it writes"]))
            raise exc.at(step.parts[0].location)  # noqa: B904 (the same error, located)
        except Exception as exc:  # a bug in the stage: one message, the traceback in the run folder
            if refused(exc):  # no bug: the file system refused a file the stage reads or writes (a full disk, no permission)
                error = refusal(exc, then=_go_on(run_dir, elsewhere))
                error.message = f"stage {step.parts[0].stage.name!r} failed ({point.label()}): {error.message}"
                raise error.at(step.parts[0].location) from None
            raise _crash(exc, step, point, pipeline, run_dir, elsewhere) from exc
        ctx.metrics[f"seconds.{step.name}"] = time.perf_counter() - start
        cache.store(slot, j, ctx)
        bar.advance(task)
    bar.remove_task(task)
    return PointResult(point, dict(ctx.metrics), list(ctx.figures), dict(ctx.examples), list(ctx.notes), seeds=[seed])


def _plugin_writers(before: list[Step], step: Step, registry: Registry | None) -> str:
    """Which of the tensors `step` reads a plugin stage wrote, and where: "'retrieved' comes from the plugin stage 'x' (package p) at t.yaml:9"; "" when none.

    A stage refuses the data it is given (199 retrievals for 200 targets), but the mistake is
    most often in the stage that wrote it; amemctl's own stages check what they write.
    """
    if registry is None:
        return ""
    writers: dict[str, PlannedStage] = {}
    for earlier in before:
        for part in earlier.parts:
            writers.update(dict.fromkeys(part.stage.outputs(), part))
    read, made = set(), set()  # a fused step's parts read what its earlier parts made: not the step's inputs
    for part in step.parts:
        read |= set(part.stage.inputs()) - made
        made |= set(part.stage.outputs())
    told = []
    for name in sorted(read):
        part = writers.get(name)
        package = registry.package_of("stages", part.stage.name) if part is not None else BUILTIN
        if package not in (BUILTIN, "?"):
            where = f" at {part.location}" if part.location is not None else ""
            told.append(f"{name!r} comes from the plugin stage {part.stage.name!r} (package {package}){where}")
    return "; ".join(told)


def _crash(exc: Exception, step: Step, point: Point, pipeline: Pipeline, run_dir: Path, elsewhere: Elsewhere | None = None) -> StageCrash:
    """A StageCrash naming the stage, the package to blame and the pipeline line (the run record saves its traceback; `elsewhere`: see run_pipeline)."""
    registry = pipeline.registry
    part = _blamed_part(exc, step, registry)
    stage = part.stage
    package = registry.package_of("stages", stage.name) if registry is not None else "?"
    return StageCrash(
        f"stage {stage.name!r} (package {package}) crashed ({point.label()}): {type(exc).__name__}: {exc}",
        hint=f"{_blame(exc, step, package, registry)}, not a mistake in the pipeline; the traceback is in {elsewhere.traceback if elsewhere is not None else run_dir / TRACEBACK}",
        location=part.location,
    )


def _blamed_part(exc: Exception, step: Step, registry: Registry | None) -> PlannedStage:
    """The stage of a (fused) step that a crash belongs to: the one that chose the function that raised, else the one running the code blamed.

    score -> separate -> project run as one step; a bug in the separation is at the
    `separate` line, not at `score`'s, also when one plugin package provides both the
    similarity and the separation: the function marked (errors.blamed_function) decides
    between them. A mark is followed only when no plugin code raised or the marked function
    is that plugin's: a plugin's code calling a built-in function wrongly is the plugin's
    stage or function. The first stage when nothing says otherwise.
    """
    if registry is None or len(step.parts) == 1:
        return step.parts[0]
    found = culprit(exc, registry)
    marked = blamed_function(exc)
    chosen = [(part, _chosen(part, registry)) for part in step.parts]
    for part, functions in chosen:
        if any((noun, name) == marked and (found is None or owner == found.package) for noun, name, owner in functions):
            return part
    for part, functions in chosen:
        if found is not None and found.package in (registry.package_of("stages", part.stage.name), *(owner for _, _, owner in functions)):
            return part
    return step.parts[0]


def _chosen(part: PlannedStage, registry: Registry) -> list[tuple[str, str, str]]:
    """The functions a stage dispatches to, as (noun, name, package)."""
    chosen = []
    for param, kind in part.stage.dispatch.items():
        name = part.stage.settings.get(param)
        if isinstance(name, str):
            chosen.append((KINDS[kind][1], name, registry.package_of(kind, name)))
    return chosen


def _blame(exc: Exception, step: Step, package: str, registry: Registry | None) -> str:
    """Whose bug a crash is: the plugin whose code raised, else the plugin whose function amemctl found at fault, else the stage's package, else a plugin function it chose.

    A plugin's similarity, separation or corruption runs inside a built-in stage: without
    this, a bug in it would be reported as amemctl's.
    """
    plugins = registry.plugin_bug(exc) if registry is not None else None
    if plugins is not None:
        return plugins
    if package not in (BUILTIN, "?"):
        return f"a bug in the plugin package {package}"
    if _in_collective(exc):
        return "most likely another rank failed first (its message is above or beside this one) and this rank's collective lost its peer; if none did, a bug in amemctl (please report it)"
    chosen = _plugin_choices(step, registry) if registry is not None else []
    if chosen:
        return f"a bug in amemctl (please report it) or in what a plugin gave it: {', '.join(chosen)}"
    return "a bug in amemctl (please report it)"


def _in_collective(exc: BaseException) -> bool:
    """Whether `exc` was raised inside torch.distributed: a collective of an `--nproc` rank, which breaks when a peer rank fails and leaves."""
    return any(str(frame.f_globals.get("__name__", "")).startswith("torch.distributed") for frame, _ in traceback.walk_tb(exc.__traceback__))


def lost_peer(error: BaseException) -> bool:
    """Whether a rank's error came from inside torch.distributed (itself, or the crash it caused: a StageCrash's cause).

    Most likely an echo: the rank's collective broke because a peer rank had left (failed,
    or was stopped); the `--nproc` launcher blames the peer, not this rank.
    """
    return any(_in_collective(seen) for seen in chain(error, implicit=False))  # causes only; a chain that loops back ends


def _plugin_choices(step: Step, registry: Registry) -> list[str]:
    """The plugin functions this step's stages dispatch to, as "kind 'name' (package)"."""
    return [f"{noun} {name!r} ({owner})" for part in step.parts for noun, name, owner in _chosen(part, registry) if owner not in (BUILTIN, "?")]


def _seed_globals(seed: int) -> None:
    """Seed the global generators too, for plugin code that draws from them."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def combine(repeats: list[PointResult]) -> PointResult:
    """One point from its repeats: metrics are means, `<metric>.std` their standard deviations."""
    first = repeats[0]
    if len(repeats) == 1:
        return first
    seeds = [s for r in repeats for s in r.seeds]
    metrics: dict[str, float] = {}
    for name in first.metrics:
        values = [r.metrics[name] for r in repeats if name in r.metrics]
        metrics[name] = float(np.mean(values))
        metrics[f"{name}.std"] = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
    figures = list(dict.fromkeys(f for r in repeats for f in r.figures))
    return PointResult(first.point, metrics, figures, first.examples, first.notes, [r.metrics for r in repeats], seeds)


class _PrefixCache:
    """Snapshots of a context after each step, kept only while a later run shares that prefix.

    A run's key list starts with its seed, so only runs of the same seed share anything.
    """

    def __init__(self, plans: list[list[str]]) -> None:
        self.keys: list[list[tuple[str, ...]]] = []
        for seed, *steps in plans:
            prefix: tuple[str, ...] = (seed,)
            keys = []
            for step in steps:
                prefix = (*prefix, step)
                keys.append(prefix)
            self.keys.append(keys)
        self.last_use: dict[tuple[str, ...], int] = {}
        for i, keys in enumerate(self.keys):
            for key in keys:
                self.last_use[key] = i
        self.snapshots: dict[tuple[str, ...], dict] = {}

    def restore(self, point: int, ctx: Context) -> int:
        for j in range(len(self.keys[point]) - 1, -1, -1):
            snap = self.snapshots.get(self.keys[point][j])
            if snap is not None:
                ctx.restore(snap)
                return j + 1
        return 0

    def store(self, point: int, step: int, ctx: Context) -> None:
        key = self.keys[point][step]
        if self.last_use[key] > point:
            self.snapshots[key] = ctx.snapshot()

    def release(self, point: int) -> None:
        for key in [k for k in self.snapshots if self.last_use[k] <= point]:
            del self.snapshots[key]


def new_run_dir(root: Path, name: str) -> Path:
    """runs/<name>/<YYYYmmdd-HHMMSS>[-N]/, created empty; a folder that cannot be made is an error naming it."""
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    base = root / name
    for n in range(1000):
        path = base / (stamp if n == 0 else f"{stamp}-{n}")
        try:
            path.mkdir(parents=True)
            return path
        except FileExistsError:
            if path.is_dir():  # a run started the same second: the next suffix
                continue
            raise _unwritable(root, base) from None
        except OSError:
            raise _unwritable(root, base) from None
    raise AmemctlError(f"cannot create a run folder under {base}: 1000 runs started in the same second", hint="start fewer runs at once")


def _unwritable(root: Path, base: Path) -> AmemctlError:
    """Why the run folder under `base` cannot be made: the part of the path in the way, or no permission."""
    blocking = next((p for p in [base, *base.parents] if p.exists() and not p.is_dir()), None)
    if blocking is not None:
        reason = f"{blocking} is a file, not a folder"
    else:
        existing = next((p for p in [base, *base.parents] if p.exists()), None)
        reason = f"{existing} cannot be written to" if existing is not None else "it cannot be made"
    return AmemctlError(f"cannot create a run folder under {base}: {reason}", hint=f"give --out a folder you can write to (it is {root} now)")


def environment(device: torch.device) -> dict[str, Any]:
    """Versions and hardware, written beside every run."""
    from amemctl import __version__

    env: dict[str, Any] = {
        "amemctl": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "platform": platform.platform(),
        "device": str(device),
        "cpu_threads": torch.get_num_threads(),
    }
    for module in ("torchvision", "zarr", "triton"):
        try:
            env[module] = __import__(module).__version__
        except Exception:  # absent or broken: not needed to run
            pass
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
        env["cuda"] = torch.version.cuda
    return env
