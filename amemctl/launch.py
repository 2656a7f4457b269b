"""Running one pipeline on several processes with torch.distributed (torchrun's machinery).

`amemctl run --nproc N` starts N local workers through torch's elastic launcher, exactly as
`torchrun --standalone --nproc-per-node N -m amemctl run ...` would; on clusters, use torchrun
with --nnodes and a rendezvous endpoint. Every worker runs the whole pipeline on the same data
and seed; retrievals split the stored rows across ranks and merge partial states; rank 0
alone writes stores, the run folder and the report. NCCL on GPUs, gloo on CPUs.
"""

from __future__ import annotations

import os
import signal
import sys
import uuid
from typing import Any, NoReturn

import torch

from amemctl.engine.records import STOP_SIGNALS, ignore_stops
from amemctl.errors import AmemctlError


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


def launch(nproc: int, arguments: list[str]) -> None:
    """Run `python -m amemctl <arguments>` on `nproc` local ranks and wait.

    A failed rank is an error naming it. A stop signal raises Interrupted, as in a one-process
    run: the launcher's own (torch's handler raises SignalException, after passing the signal
    to the ranks and waiting for them), or the ranks' alone (every rank that ended exited as
    stopped, 128 + the signal, or was killed by it). Rank 0 has then recorded the run as
    interrupted and printed how to resume it.
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
    try:
        elastic_launch(config, sys.executable)("-m", "amemctl", *arguments)
    except SignalException as exc:
        raise Interrupted(exc.sigval) from None
    except ChildFailedError as exc:
        stopped = stopped_by(exc.failures)
        if stopped is not None:
            raise Interrupted(stopped) from None
        detail = "; ".join(f"rank {rank} exited with code {f.exitcode}" for rank, f in sorted(exc.failures.items()))
        raise AmemctlError(
            f"the distributed run failed: {detail}",
            hint="the failing rank's own message is printed above; nothing was written to stores after the failure",
        ) from None
    finally:  # the launcher leaves handlers of its own (raising its SignalException) installed
        for signum, handler in handlers.items():
            signal.signal(signum, handler)


def stopped_by(failures: dict[int, Any]) -> int | None:
    """The stop signal that ended every failed rank (by its lowest rank), or None when one of them failed otherwise.

    A rank stopped by SIGINT or SIGTERM exits with 128 + the signal (records.stop_once, cli), or is
    killed by it (exit code -signal) before or after its handler is in place. When one rank
    fails, the launcher stops the others with SIGTERM: that failure is then among them, and
    the run failed.
    """
    stops = {code: int(signum) for signum in STOP_SIGNALS for code in (128 + signum, -signum)}
    signals = [stops.get(failure.exitcode) for _, failure in sorted(failures.items())]
    return signals[0] if signals and None not in signals else None
