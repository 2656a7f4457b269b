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
import math
import os
import shutil
import signal
import sys
import tempfile
import time
import traceback
import uuid
from pathlib import Path
from typing import Any, Iterator, NoReturn

import torch

from amemctl.engine.records import STOP_SIGNALS, RunRecord, ignore_stops, write_atomically
from amemctl.errors import AmemctlError, RunFolderError

#: the file in which rank 0 of an `--nproc` run writes the path of its run folder (set by launch)
RUN_FOLDER_ENV = "AMEMCTL_RUN_FOLDER_FILE"
#: where torch's launcher (elastic agent) reads a failed rank's error, in the format of torch's @record
ERROR_FILE_ENV = "TORCHELASTIC_ERROR_FILE"


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
    dist.init_process_group(backend)
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
    """End a rank that left its group: with `code` (0, or 128 + the signal that stopped it), without the interpreter's teardown.

    Under load, about one run in fifty, a rank that had finished, passed the barrier and left
    its group still aborted in the teardown ("terminate called without an active exception",
    SIGABRT: a gloo or thread-pool thread still joinable); the launcher then reported a failed
    run whose results were all written. Everything is written and flushed by now.
    """
    import logging

    ignore_stops()  # the rank is ending: a late stop signal must not raise in here
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def announce_run_folder(run_dir: Path) -> None:
    """Tell the `--nproc` launcher where rank 0's run folder is; nothing under torchrun, which names no file.

    When another rank fails, the launcher stops rank 0, whose record then says interrupted
    (or running, or failed with an echo of the other rank's failure): the launcher corrects
    it (record_failure). Best effort: a file that cannot be written must not fail the run.
    """
    path = os.environ.get(RUN_FOLDER_ENV)
    if path:
        with contextlib.suppress(OSError):
            write_atomically(Path(path), str(run_dir.resolve()))


def report_failure(error: BaseException) -> None:
    """Leave this rank's error where torch's launcher reads it, with the time it failed.

    The file is the one torch names in TORCHELASTIC_ERROR_FILE, in the format its @record
    writes (ProcessFailure.message): the launcher puts the failing rank's message in the
    run's record, and tells the first failure from its echoes in the other ranks (a peer's
    collective that breaks when this rank leaves) by `failed_at`. An amemctl error is the
    user's, told without a traceback; a bug keeps its traceback.
    """
    path = os.environ.get(ERROR_FILE_ENV)
    if not path:
        return
    if isinstance(error, AmemctlError):
        message = details = error.render()
    else:
        message = f"{type(error).__name__}: {error}"
        details = "".join(traceback.format_exception(type(error), error, error.__traceback__))
    info = {"py_callstack": details, "timestamp": str(int(time.time())), "failed_at": time.time()}
    with contextlib.suppress(OSError):
        write_atomically(Path(path), json.dumps({"message": {"message": message, "extraInfo": info}}))


def launch(nproc: int, arguments: list[str]) -> None:
    """Run `python -m amemctl <arguments>` on `nproc` local ranks and wait.

    A failed rank is an error naming it. A stop signal raises Interrupted, as in a one-process
    run: the launcher's own (torch's handler raises SignalException, after passing the signal
    to the ranks and waiting for them), or the ranks' alone (every rank that ended exited as
    stopped, 128 + the signal, or was killed by it). Rank 0 has then recorded the run as
    interrupted and printed how to resume it. After a failure, rank 0's record is made to
    say failed, with the message of the rank that failed first (record_failure): stopped by
    the launcher, rank 0 had recorded an interruption.
    """
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    from amemctl.engine.records import Interrupted

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
    names = getattr(config, "signals_to_handle", "SIGTERM,SIGINT,SIGHUP,SIGQUIT")  # a field of newer torch releases
    handled = [getattr(signal, name.strip()) for name in names.split(",") if hasattr(signal, name.strip())]
    handlers = {signum: signal.getsignal(signum) for signum in handled}
    run_folder = os.path.join(tempfile.mkdtemp(prefix="amemctl-launch-"), "run-folder")  # rank 0 writes its run folder's path there
    try:
        with _environment(RUN_FOLDER_ENV, run_folder):
            elastic_launch(config, sys.executable)("-m", "amemctl", *arguments)
    except SignalException as exc:
        raise Interrupted(exc.sigval) from None
    except ChildFailedError as exc:
        stopped = stopped_by(exc.failures)
        if stopped is not None:
            raise Interrupted(stopped) from None
        record_failure(Path(run_folder), exc.failures)
        detail = "; ".join(f"rank {rank} exited with code {f.exitcode}" for rank, f in sorted(exc.failures.items()))
        raise AmemctlError(
            f"the distributed run failed: {detail}",
            hint="the failing rank's own message is printed above; nothing was written to stores after the failure",
        ) from None
    finally:  # the launcher leaves handlers of its own (raising its SignalException) installed
        for signum, handler in handlers.items():
            signal.signal(signum, handler)
        shutil.rmtree(os.path.dirname(run_folder), ignore_errors=True)


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


def record_failure(folder_file: Path, failures: dict[int, Any]) -> None:
    """After a failed run, make rank 0's record say so, naming the rank that failed first; unless rank 0 failed first itself.

    The launcher stopped rank 0 when another rank failed: its run.json then says
    interrupted (or running, or failed with an echo of that failure). A finished record
    is never touched (RunRecord.fail_elsewhere); nor is a damaged one, nor a run that
    made no run folder. Every rank has ended when this runs, so nothing else writes the record.
    """
    first = first_failure(failures)
    if first is None or first[0] == 0:
        return
    try:
        run_dir = Path(folder_file.read_text())
    except OSError:  # rank 0 made no run folder
        return
    message, details = failure_text(*first)
    with contextlib.suppress(RunFolderError, OSError):
        RunRecord.load(run_dir).fail_elsewhere(message, details)


def first_failure(failures: dict[int, Any]) -> tuple[int, Any] | None:
    """The rank that failed first (earliest `failed_at` in its error file), and its failure; None when every rank was stopped.

    Ranks stopped by a signal (the launcher stops the others when one fails) did not
    fail. A rank that failed without an error file (killed, or gone before reporting)
    comes after those that have one: its time is unknown.
    """
    stops = _stop_codes()
    failed = [(rank, f) for rank, f in failures.items() if f.exitcode not in stops]
    return min(failed, key=lambda item: (_failed_at(item[1]), item[0]), default=None)


def _failed_at(failure: Any) -> float:
    """When a rank failed, from the error file report_failure wrote; infinity when unknown."""
    info = failure.message.get("extraInfo", {}) if isinstance(failure.message, dict) else {}
    at = info.get("failed_at") if isinstance(info, dict) else None
    return float(at) if isinstance(at, (int, float)) and math.isfinite(at) else math.inf


def failure_text(rank: int, failure: Any) -> tuple[str, str]:
    """A failed rank's message for run.json, naming the rank and its exit code, and what error.txt adds to it (its traceback)."""
    message = failure.message
    if isinstance(message, dict):  # an error file: report_failure's, or torch's @record's
        info = message.get("extraInfo", {})
        text = str(message.get("message", ""))
        details = str(info.get("py_callstack", text)) if isinstance(info, dict) else text
    elif failure.exitcode < 0:
        text = details = f"killed by signal {failure.signal_name()}"
    else:
        text, details = "", f"it left no message; its own output says why (exit code {failure.exitcode})"
    head = f"rank {rank} failed (exit code {failure.exitcode})"
    return (f"{head}: {text}" if text else head), ("" if details == text else details)


def _stop_codes() -> dict[int, int]:
    """The exit codes of a rank stopped by SIGINT or SIGTERM (128 + the signal, or -signal when killed by it), to the signal."""
    return {code: int(signum) for signum in STOP_SIGNALS for code in (128 + signum, -signum)}


def stopped_by(failures: dict[int, Any]) -> int | None:
    """The stop signal that ended every failed rank (by its lowest rank), or None when one of them failed otherwise.

    A rank stopped by SIGINT or SIGTERM exits with 128 + the signal (records.stop_once, cli), or is
    killed by it (exit code -signal) before or after its handler is in place. When one rank
    fails, the launcher stops the others with SIGTERM: that failure is then among them, and
    the run failed.
    """
    stops = _stop_codes()
    signals = [stops.get(failure.exitcode) for _, failure in sorted(failures.items())]
    return signals[0] if signals and None not in signals else None
