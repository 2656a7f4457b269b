"""Running one pipeline on several processes with torch.distributed (torchrun's machinery).

`amemctl run --nproc N` starts N local workers through torch's elastic launcher, exactly as
`torchrun --standalone --nproc-per-node N -m amemctl run ...` would; on clusters, use torchrun
with --nnodes and a rendezvous endpoint. Every worker runs the whole pipeline on the same data
and seed; retrievals split the stored rows across ranks and merge partial states; rank 0
alone writes stores, the run folder and the report. NCCL on GPUs, gloo on CPUs.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import shutil
import signal
import sys
import tempfile
import time
import traceback
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, NoReturn

from amemctl.atomic import write_atomically
from amemctl.engine.records import (
    STOP_SIGNALS,
    Interrupted,
    RunRecord,
    closing_line,
    count_text,
    ignore_stops,
    read_json,
    stop_signal,
    unstarted_line,
)
from amemctl.errors import AmemctlError, RunFolderError, StageCrash

if TYPE_CHECKING:
    from amemctl.engine.runner import Elsewhere

#: the folder in which the ranks of an `--nproc` run leave word for the launcher (set by launch):
#: rank 0 where its run folder is (RUN_FOLDER), a stopped rank which signal stopped it and when (stopped-RANK.json)
LAUNCH_DIR_ENV = "AMEMCTL_LAUNCH_DIR"
RUN_FOLDER = "run-folder"
#: where torch's launcher (elastic agent) reads a failed rank's error, in the format of torch's @record
ERROR_FILE_ENV = "TORCHELASTIC_ERROR_FILE"
#: torch's launcher logs how it stops the ranks ("Received 2 death signal, shutting down workers",
#: "Sending process N closing signal SIGTERM", and "failed (exitcode: 143) local_rank: 1" for a
#: rank that was stopped, not failed): quieter while amemctl's own account of the run replaces them
QUIET_TORCH_LOGGERS = {
    "torch.distributed.elastic.agent.server.api": logging.ERROR,
    "torch.distributed.elastic.multiprocessing.api": logging.CRITICAL,
}


def in_worker() -> bool:
    """Whether this process was started by torchrun (or `--nproc`) as one of several ranks."""
    return world_size() > 1 and "RANK" in os.environ


def world_size() -> int:
    """How many ranks this process is one of (1 outside torchrun and `--nproc`)."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        return 1


def start_worker(device: str | None) -> tuple[Any, int, str | None]:
    """Join the process group; returns (group, rank, the device this rank should use)."""
    import torch
    import torch.distributed as dist

    wants_gpu = device not in ("cpu",) and torch.cuda.is_available()
    backend = "nccl" if wants_gpu else "gloo"
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if wants_gpu:
        if local >= torch.cuda.device_count():  # NCCL needs one GPU per rank
            raise AmemctlError(
                f"rank {local} has no GPU of its own: this machine has {torch.cuda.device_count()} CUDA device(s)",
                hint=f"use --nproc {torch.cuda.device_count()} or fewer, or --device cpu (gloo)",
            )
        torch.cuda.set_device(local)
        device = f"cuda:{local}"
    # binding NCCL to this rank's GPU up front: collectives and barriers need not guess it (torch warns otherwise)
    dist.init_process_group(backend, device_id=torch.device(device) if wants_gpu else None)
    return dist.group.WORLD, dist.get_rank(), device


def stop_worker(finished: bool) -> None:
    """Leave the process group; after a finished run, only once every rank has finished too.

    gloo sends asynchronously: a rank that tears its group down right after its last collective
    can close a connection a slower peer still sends on, and that peer aborts ("terminate called
    without an active exception"). A failed rank skips the barrier, which its peers would wait
    on forever; the launcher stops them.
    """
    import torch.distributed as dist

    if dist.is_initialized():
        if finished:
            dist.barrier()
        dist.destroy_process_group()


def exit_worker(code: int = 0) -> NoReturn:
    """End a rank that left its group: with `code` (0, 128 + the signal that stopped it, or its error's exit code), without the interpreter's teardown.

    Under load, about one run in fifty, a rank that had finished, passed the barrier and left
    its group still aborted in the teardown ("terminate called without an active exception",
    SIGABRT: a gloo or thread-pool thread still joinable); the launcher then reported a failed
    run whose results were all written. A failed rank in the teardown, its stop handlers gone
    (Python restores the default ones), was killed by the launcher's SIGTERM and exited -15.
    Everything is written and flushed by now.
    """
    import logging

    ignore_stops()  # the rank is ending: a late stop signal must not raise in here
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def run_worker() -> NoReturn:
    """`python -m amemctl` as a rank of an `--nproc` or torchrun run: a stop signal is taken from the rank's very start.

    A rank stopped while it starts (importing torch, checking the pipeline, joining the group)
    exits as a stopped rank does, 128 + the signal, without click's "Aborted!" or a
    traceback: the launcher says how the run stands (here: stopped before it started).
    """
    from amemctl.engine.records import stop_once

    stop_once(note_stop)
    try:
        from amemctl.cli import main

        main()
    except (KeyboardInterrupt, Interrupted) as exc:
        exit_worker(128 + (stop_signal(exc) or 0))
    sys.exit(0)  # click's main exits by itself


def elsewhere() -> "Elsewhere":
    """How a rank other than 0 names rank 0's run folder and where its traceback is: the `--nproc` launcher copies it into rank 0's error.txt, torchrun prints it."""
    from amemctl.engine.runner import Elsewhere

    if launched():
        return Elsewhere("rank 0's run folder (the launcher names it below)", "error.txt of rank 0's run folder (the launcher names it below)")
    return Elsewhere("rank 0's run folder (rank 0 names it)", "torchrun's failure summary (its `traceback` of this rank)")


def launched() -> bool:
    """Whether this rank was started by `amemctl run --nproc`, whose launcher tells how the run ended (under torchrun, rank 0 does)."""
    return in_worker() and bool(os.environ.get(LAUNCH_DIR_ENV))


def announce_run_folder(run_dir: Path) -> None:
    """Tell the `--nproc` launcher where rank 0's run folder is; nothing under torchrun, which names no folder.

    The launcher reads the record there once every rank has ended: it tells how far the run
    got and how to resume it, and corrects the record when another rank ended the run
    (rank 0, stopped by the launcher, had recorded an interruption). Best effort: a file that
    cannot be written must not fail the run.
    """
    folder = os.environ.get(LAUNCH_DIR_ENV)
    if folder:
        with contextlib.suppress(OSError):
            write_atomically(Path(folder) / RUN_FOLDER, json.dumps({"path": str(run_dir.resolve()), "shown": str(run_dir)}))


def note_stop(signum: int) -> None:
    """Tell the `--nproc` launcher that a stop signal reached this rank, and when (records.stop_once calls it first thing).

    The launcher tells a run a user stopped (one rank's pid, say) from one that failed by
    what came first: this note, or a failing rank's error file (report_failure). A peer
    whose collective broke when this rank left reports later than this. Nothing under torchrun.
    """
    folder, rank = os.environ.get(LAUNCH_DIR_ENV), os.environ.get("RANK")
    if folder and rank is not None:
        note, text = Path(folder) / f"stopped-{rank}.json", json.dumps({"signal": int(signum), "at": time.time()})
        with contextlib.suppress(OSError):
            if note.is_file():  # reserved by the launcher (reserve_stop_notes): written in place, it needs no new block of a full disk
                with open(note, "r+b") as file:
                    file.write(text.encode())
            else:
                write_atomically(note, text)


#: the bytes reserved for each rank's stop note: far more than its JSON takes
STOP_NOTE_BYTES = 256


def reserve_stop_notes(folder: Path, nproc: int) -> None:
    """Make each rank's stop note (note_stop) before the ranks start, as blanks that JSON reads past.

    A failing rank's echo and a stop are told apart by their times. A rank that could not note
    its stop (a full /tmp) would read as stopped at an unknown time, which comes before any echo,
    and so a run that failed would read as interrupted. Best effort, as the note itself.
    """
    with contextlib.suppress(OSError):
        for rank in range(nproc):
            (folder / f"stopped-{rank}.json").write_bytes(b" " * STOP_NOTE_BYTES)


def report_failure(error: BaseException) -> None:
    """Leave this rank's error where torch's launcher reads it, with the time it failed.

    The file is the one torch names in TORCHELASTIC_ERROR_FILE, in the format its @record
    writes (ProcessFailure.message): the launcher puts the failing rank's message in the
    run's record, and tells the first failure from its echoes in the other ranks (a peer's
    collective that breaks when this rank leaves) by `failed_at`, and by `echo`: whether the
    error came from inside torch.distributed (runner.lost_peer), which ranks after any other
    failure. An amemctl error is the user's, told without a traceback; a bug keeps its traceback.
    """
    from amemctl.engine.runner import lost_peer

    path = os.environ.get(ERROR_FILE_ENV)
    if not path:
        return
    if isinstance(error, AmemctlError):
        message = details = error.render()
        if isinstance(error, StageCrash) and error.__cause__ is not None:  # the bug's traceback, which the rank's own error.txt (scratch, deleted) held
            cause = error.__cause__
            details += "\n\n" + "".join(traceback.format_exception(type(cause), cause, cause.__traceback__))
    else:
        message = f"{type(error).__name__}: {error}"
        details = "".join(traceback.format_exception(type(error), error, error.__traceback__))
    info = {"py_callstack": details, "timestamp": str(int(time.time())), "failed_at": time.time(), "echo": lost_peer(error)}
    with contextlib.suppress(OSError):
        write_atomically(Path(path), json.dumps({"message": {"message": message, "extraInfo": info}}))


def launch(nproc: int, arguments: list[str]) -> None:
    """Run `python -m amemctl <arguments>` on `nproc` local ranks, wait, and tell how the run ended.

    Once every rank has ended, the launcher alone knows how each did (rank 0, stopped by the
    launcher, cannot tell why), so it prints the run's last line itself, rank 0 leaving it
    out (runner.run_pipeline's stop_line), and makes rank 0's record agree:

    - stopped: the launcher got a stop signal itself (torch's handler raises SignalException,
      after passing the signal to the ranks and waiting for them), or the first rank to end
      was stopped by one (a user or scheduler signalling that rank's pid). Interrupted is
      raised, as in a one-process run: exit status 128 + the signal, after the line saying
      how far the run got and how to resume it, or that it stopped before it started.
    - failed: a rank failed (first, among those that failed other than by an echo: a
      collective broken by a peer that had left), or was killed by another signal (SIGKILL:
      the kernel's OOM killer). The record says failed, naming that rank with its message;
      an AmemctlError names the rank, where its message is and how to resume.
    """
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    names = getattr(LaunchConfig, "signals_to_handle", "SIGTERM,SIGINT,SIGHUP,SIGQUIT")  # a field of newer torch releases
    handled = [getattr(signal, name.strip()) for name in names.split(",") if hasattr(signal, name.strip())]
    handlers = {signum: signal.getsignal(signum) for signum in handled}
    folder = Path(tempfile.mkdtemp(prefix="amemctl-launch-"))  # the ranks leave word for the launcher there
    try:
        reserve_stop_notes(folder, nproc)
        config = LaunchConfig(
            min_nodes=1,
            max_nodes=1,
            nproc_per_node=nproc,
            run_id=f"amemctl-{uuid.uuid4().hex[:8]}",
            rdzv_backend="c10d",
            rdzv_endpoint="localhost:0",
            max_restarts=0,
            monitor_interval=0.1,
        )
        try:
            with _environment(LAUNCH_DIR_ENV, str(folder)), _quiet_torch():
                elastic_launch(config, sys.executable)("-m", "amemctl", *arguments)
        finally:  # the launcher leaves handlers of its own (raising its SignalException) installed: ours again before telling
            for signum, handler in handlers.items():
                if handler is not None:
                    signal.signal(signum, handler)
    except (SignalException, Interrupted, KeyboardInterrupt) as exc:  # the launcher was stopped (Interrupted: before torch's handlers were in place)
        signum = int(exc.sigval) if isinstance(exc, SignalException) else stop_signal(exc) or int(signal.SIGINT)
        tell_interrupted(folder, signum)
        raise Interrupted(signum) from None
    except ChildFailedError as exc:
        first = decisive([ending_of(rank, failure, folder) for rank, failure in sorted(exc.failures.items())])
        if first is not None and first.how == "stopped" and first.signum is not None:
            tell_interrupted(folder, first.signum, first)
            raise Interrupted(first.signum) from None
        raise tell_failed(folder, first) from None
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@contextlib.contextmanager
def _environment(name: str, value: str) -> Iterator[str]:
    """Set an environment variable (the ranks inherit it) for the duration, then restore it."""
    before = os.environ.get(name)
    os.environ[name] = value
    try:
        yield value
    finally:
        if before is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = before


@contextlib.contextmanager
def _quiet_torch() -> Iterator[None]:
    """Raise the levels of torch's launcher loggers (QUIET_TORCH_LOGGERS) for the duration; not when LOGLEVEL is set.

    LOGLEVEL is torch's own setting for these loggers (torch.distributed.elastic.utils.logging):
    whoever sets it, to INFO say, asked for torch's lines and gets them.
    """
    if os.environ.get("LOGLEVEL"):
        yield
        return
    loggers = {logging.getLogger(name): level for name, level in QUIET_TORCH_LOGGERS.items()}
    before = {logger: logger.level for logger in loggers}
    for logger, level in loggers.items():
        logger.setLevel(level)
    try:
        yield
    finally:
        for logger, level in before.items():
            logger.setLevel(level)


@dataclass(frozen=True)
class Ending:
    """How one rank of an `--nproc` run that did not finish ended, as the launcher learns it."""

    rank: int
    exitcode: int
    how: str  #: "failed", "echo" (failed in a collective: most likely its peer had left) or "stopped" (by a stop signal)
    at: float = math.inf  #: when (time.time()); infinity when the rank left no word of it
    signum: int | None = None  #: the stop signal, or the signal that killed the rank
    message: str = ""  #: its error's message (from its error file)
    details: str = ""  #: what error.txt adds to it (a traceback)

    def said(self) -> str:
        """How the rank ended, in a few words: `rank 1 failed (exit code 2)`, `rank 1 was stopped by SIGTERM`."""
        if self.how == "stopped" and self.signum is not None:
            return f"rank {self.rank} was stopped by {_signal_name(self.signum)}"
        if self.signum is not None:
            return f"rank {self.rank} was killed by {_signal_name(self.signum)} (exit code {self.exitcode})"
        return f"rank {self.rank} failed (exit code {self.exitcode})"

    def record_text(self) -> tuple[str, str]:
        """Its message for run.json (naming the rank and its exit code) and what error.txt adds to it."""
        said = self.said()
        if self.message:
            return f"{said}: {self.message}", ("" if self.details == self.message else self.details)
        if self.signum is None:
            return said, f"it left no message; its own output says why (exit code {self.exitcode})"
        return said, ""


def ending_of(rank: int, failure: Any, folder: Path | None = None) -> Ending:
    """How a rank that did not finish ended: its torch failure (exit code, error file) and the stop it noted in `folder` (note_stop)."""
    code = failure.exitcode
    message, details, info = _error_file(failure)
    if _is_time(info.get("failed_at")):  # report_failure's
        return Ending(rank, code, "echo" if info.get("echo") is True else "failed", float(info["failed_at"]), None, message, details)
    note = read_json(folder / f"stopped-{rank}.json") if folder is not None else None
    if note is not None and note.get("signal") in [int(s) for s in STOP_SIGNALS]:
        return Ending(rank, code, "stopped", float(note["at"]) if _is_time(note.get("at")) else math.inf, int(note["signal"]))
    stop = _stop_codes().get(code)
    if stop is not None:  # stopped before it could note it (while Python started), or killed by the signal
        return Ending(rank, code, "stopped", math.inf, stop)
    return Ending(rank, code, "failed", math.inf, -code if code < 0 else None, message, details)


def decisive(endings: list[Ending]) -> Ending | None:
    """The ending that decided how the run ended: the first failure, else the first stop or echo, whichever came first; None when none.

    Ranks the launcher stopped after a failure did not fail. An echo (an error from inside
    torch.distributed) is most likely a collective broken by a peer that had left: a stop
    before it explains it, but a stop after it is the launcher's, stopping the others once
    that rank failed, and then the echo is the failure (a bad collective call of a stage, say).
    Among several, the earliest, and those that left no time (a rank killed outright) after
    those that did; a stop whose time is unknown comes before an echo.
    """

    def first(how: str) -> Ending | None:
        found = [ending for ending in endings if ending.how == how]
        return min(found, key=lambda ending: (ending.at, ending.rank), default=None)

    failed, stopped, echo = first("failed"), first("stopped"), first("echo")
    if failed is not None:
        return failed
    if stopped is not None and (echo is None or stopped.at <= echo.at or stopped.at == math.inf):
        return stopped
    return echo


def tell_interrupted(folder: Path, signum: int, by: Ending | None = None) -> None:
    """A stopped run: make rank 0's record say interrupted (by `by`, when one rank was stopped alone), and print how far it got and how to resume it.

    Rank 0 may have recorded a crash of its collective (its peer, stopped, left), or been
    killed before it ended its record (still running): either way the run was interrupted.
    With no run folder, the run was stopped before it started.
    """
    cause = by.said() if by is not None else ""
    found = _run_folder(folder)
    record = _record(found[0]) if found is not None else None
    if found is None or record is None:
        _say(unstarted_line(signum, cause))
        return
    status = record.data.get("status")
    if status == "finished":  # rank 0 finished and said so before the stop
        return
    if by is not None or status != "interrupted":
        message = f"stopped by signal {_signal_name(signum)}" + (f" sent to rank {by.rank}" if by is not None else "")
        if _corrected(found[0], lambda: record.interrupt_elsewhere(message)) and status != "interrupted":
            _restate(found[0], "interrupted", None)
    _say(closing_line("interrupted", _progress(record.data), found[1], cause))


def tell_failed(folder: Path, first: Ending | None) -> AmemctlError:
    """A failed run: make rank 0's record name the rank that failed first, print how far the run got, and return the error to raise.

    Rank 0's own failure is recorded by rank 0 itself; a finished record is never touched
    (RunRecord.fail_elsewhere). The failing rank printed its own message (an echo did not:
    it is told here), so the error says where it is, and how to resume the run.
    """
    if first is None:
        return AmemctlError("the distributed run failed", hint="the ranks' own output above says why")
    found = _run_folder(folder)
    record = _record(found[0]) if found is not None else None
    own = first.rank == 0 and first.how == "failed"  # rank 0 recorded its own failure
    if record is not None and not own:
        message, details = first.record_text()
        own = _corrected(found[0], lambda: record.fail_elsewhere(message, details))  # now error.txt tells it
        if own:
            _restate(found[0], "failed", message)
    told = first.said()
    if first.how == "echo":
        told += f": {first.message}"
    elif first.message:
        told += "; its message is above" + (f" and in {found[1]}/error.txt" if record is not None and own and record.data.get("status") == "failed" else "")
    elif first.signum is None:
        told += "; its own output above says why"
    if record is None:
        return AmemctlError(f"the distributed run failed: {told}", hint="it failed before rank 0 recorded the run: there is nothing to resume")
    if record.data.get("status") != "finished":  # rank 0 said where a finished run is
        _say(closing_line("failed", _progress(record.data), found[1]))
    return AmemctlError(
        f"the distributed run failed: {told}",
        hint=f"nothing was written to stores after the failure; once that is fixed, `amemctl run --resume {found[1]}` continues the run (in one process)",
    )


def _run_folder(folder: Path) -> tuple[Path, str] | None:
    """Rank 0's run folder (announce_run_folder), and that path as the user gave it; None when rank 0 made none."""
    data = read_json(folder / RUN_FOLDER)
    if data is None or not isinstance(data.get("path"), str):
        return None
    return Path(data["path"]), str(data.get("shown") or data["path"])


def _record(run_dir: Path) -> RunRecord | None:
    """The run's record, checked; None when absent or damaged (then left alone)."""
    try:
        return RunRecord.load(run_dir)
    except (RunFolderError, OSError):
        return None


def _corrected(run_dir: Path, correct: "Callable[[], bool]") -> bool:
    """Whether `correct` rewrote rank 0's record; one the file system refuses (the disk the run filled) is warned of, and the account goes on."""
    try:
        return correct()
    except OSError as exc:
        _say(f"warning: the record in {run_dir} could not be corrected ({exc.strerror or exc}): its run.json says what rank 0 saw")
        return False


def _restate(run_dir: Path, status: str, error: str | None) -> None:
    """metrics.json and report.md say what the corrected record says (results.restate); best effort."""
    from amemctl.engine.results import restate

    with contextlib.suppress(OSError):
        restate(run_dir, status, error)


def _progress(data: dict[str, Any]) -> str:
    """How far a recorded run got, as the stop line says it (records.count_text)."""
    numbers = [data.get(key) for key in ("points_done", "points_total", "repeats")]
    done, total, repeats = (n if isinstance(n, int) and not isinstance(n, bool) else 0 for n in numbers)
    return count_text(done, total, repeats or 1)


def _say(line: str) -> None:
    """Print the run's last line as rank 0 would have (results.write_outputs): stdout, yellow in a terminal."""
    from amemctl.console import console

    console().print(line, style="yellow", markup=False, highlight=False, soft_wrap=True)


def _error_file(failure: Any) -> tuple[str, str, dict[str, Any]]:
    """A failed rank's message, traceback and extra info from its error file (report_failure's, or torch's @record's); empty when none."""
    message = getattr(failure, "message", None)
    if not isinstance(message, dict):
        return "", "", {}
    info = message.get("extraInfo", {})
    info = info if isinstance(info, dict) else {}
    text = str(message.get("message", ""))
    return text, str(info.get("py_callstack", text)), info


def _is_time(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def _stop_codes() -> dict[int, int]:
    """The exit codes of a rank stopped by SIGINT or SIGTERM (128 + the signal, or -signal when killed by it), to the signal."""
    return {code: int(signum) for signum in STOP_SIGNALS for code in (128 + signum, -signum)}
