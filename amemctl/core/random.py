"""Random draws that work with a generator on any device, for tensors on any device.

torch refuses `torch.rand(..., generator=g, device=d)` when g lives elsewhere than d (a CPU
generator with CUDA tensors, or the reverse). These functions draw on the generator's own
device and move the result, so a generator and a tensor can never disagree. With the CPU
generators that `Context.rng()` gives by default, a run draws the same numbers on a CPU and
on a GPU: corrupted queries are bit for bit the same whichever device retrieves them.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch import Tensor


def derived_seed(*entropy: int) -> int:
    """A 63-bit seed made from `entropy` (a run's seed and a position, say): distinct inputs give independent streams."""
    return int(np.random.SeedSequence(list(entropy)).generate_state(1, dtype=np.uint64)[0] >> 1)


def _home(generator: torch.Generator | None) -> torch.device:
    return generator.device if generator is not None else torch.device("cpu")


def moved(x: Tensor, device: "torch.device | str | None", dtype: torch.dtype | None = None) -> Tensor:
    """x on `device` in `dtype`; from the CPU to a GPU without waiting for the GPU (for CPU-drawn parameters)."""
    target = torch.device(device) if device is not None else x.device
    if target.type == "cuda" and x.device.type == "cpu":
        # a plain copy from pageable memory waits for the GPU (a sync per draw); from pinned
        # memory it is queued on the stream, and the caching host allocator keeps the block alive
        x = x.pin_memory().to(target, non_blocking=True)
    return x.to(device=target, dtype=dtype if dtype is not None else x.dtype)


def rand(shape: Sequence[int], generator: torch.Generator | None = None, *, device: "torch.device | str | None" = None, dtype: torch.dtype | None = None) -> Tensor:
    """Uniform [0, 1) numbers of `shape` on `device`, drawn from `generator` wherever it lives."""
    return moved(torch.rand(tuple(shape), generator=generator, device=_home(generator)), device, dtype)


def randn(shape: Sequence[int], generator: torch.Generator | None = None, *, device: "torch.device | str | None" = None, dtype: torch.dtype | None = None) -> Tensor:
    """Standard normal numbers of `shape` on `device`, drawn from `generator` wherever it lives."""
    return moved(torch.randn(tuple(shape), generator=generator, device=_home(generator)), device, dtype)


def randint(low: int, high: int, shape: Sequence[int], generator: torch.Generator | None = None, *, device: "torch.device | str | None" = None) -> Tensor:
    """Integers in [low, high) of `shape` on `device`, drawn from `generator` wherever it lives."""
    return moved(torch.randint(low, high, tuple(shape), generator=generator, device=_home(generator)), device, None)


def randperm(n: int, generator: torch.Generator | None = None, *, device: "torch.device | str | None" = None) -> Tensor:
    """A random permutation of range(n) on `device`, drawn from `generator` wherever it lives."""
    return moved(torch.randperm(n, generator=generator, device=_home(generator)), device, None)
