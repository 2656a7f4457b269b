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
from typing import Any

import torch

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


def exit_worker() -> None:
    """End a rank that finished and left its group: status 0, without the interpreter's teardown.

    Under load, about one run in fifty, a rank that had finished, passed the barrier and left
    its group still aborted in the teardown ("terminate called without an active exception",
    SIGABRT: a gloo or thread-pool thread still joinable); the launcher then reported a failed
    run whose results were all written. Everything is written and flushed by now.
    """
    import logging

    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def launch(nproc: int, arguments: list[str]) -> None:
    """Run `python -m amemctl <arguments>` on `nproc` local ranks and wait; a failed rank is an error naming it."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

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
    handlers = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        elastic_launch(config, sys.executable)("-m", "amemctl", *arguments)
    except ChildFailedError as exc:
        failed = sorted(exc.failures.items())
        detail = "; ".join(f"rank {rank} exited with code {f.exitcode}" for rank, f in failed)
        raise AmemctlError(
            f"the distributed run failed: {detail}",
            hint="the failing rank's own message is printed above; nothing was written to stores after the failure",
        ) from None
    finally:  # the launcher leaves handlers of its own (raising its SignalException) installed
        for signum, handler in handlers.items():
            signal.signal(signum, handler)
