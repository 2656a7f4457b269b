"""Resumable training: the latest epoch's full state in one file, written atomically.

A training loop (hetero-encoder, autoencoder, dense associative memory) saves its model,
optimiser, schedule, random generators and losses after an epoch, at most every
`CHECKPOINT_SECONDS` and always after the last one. Started again with the same
configuration and data (the file's name and contents carry their hash), it continues from
that epoch and ends with the same numbers as an uninterrupted run; a training that had
finished is reused without a step. A damaged or foreign file is ignored, never trusted.

A stage hands its loop a `Checkpointing` (the file and the progress display, from
`Checkpointing.for_stage`); the loop names the parts of its state once and walks the
`Epochs` that `Checkpointing.resume` gives: restored before, saved and reported after each.
SimCLR keeps files of its own but shares `Progress` and `Throttle`.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Protocol

import torch
from torch import Tensor

from amemctl.models.encoders import save_atomically
from amemctl.models.tensor_files import load_tensors

FORMAT = "amemctl-training"
CHECKPOINT_SECONDS = 30.0  #: least time between two saves while training (the last epoch is always saved)


def default_folder() -> Path:
    """Where training checkpoints go: $AMEMCTL_CHECKPOINTS, else checkpoints/ (beside SimCLR's)."""
    return Path(os.environ.get("AMEMCTL_CHECKPOINTS") or "checkpoints")


def data_digest(*tensors: Tensor) -> str:
    """sha256 of the tensors' bytes: training resumes only on the very same data."""
    h = hashlib.sha256()
    for t in tensors:
        t = t.detach().cpu().contiguous()
        h.update(str((tuple(t.shape), str(t.dtype))).encode())
        h.update(t.numpy().tobytes() if t.dtype != torch.bfloat16 else t.float().numpy().tobytes())
    return h.hexdigest()


class Throttle:
    """Saves after an epoch at most every `CHECKPOINT_SECONDS`, and always after the last one.

    A model and its optimiser copied to the CPU and written every epoch would, for short
    epochs, cost more than the training.
    """

    def __init__(self) -> None:
        self._saved_at = time.monotonic()

    def __call__(self, save: Callable[[], None], *, last: bool) -> None:
        """Call `save` when the last save is old enough, or when this is the last epoch."""
        if last or time.monotonic() - self._saved_at >= CHECKPOINT_SECONDS:
            save()
            self._saved_at = time.monotonic()


class TrainingCheckpoint:
    """The resumable state of one training, identified by its configuration and data."""

    def __init__(self, folder: "str | Path", kind: str, config: dict[str, Any], data: str) -> None:
        self.identity = json.dumps({"kind": kind, "config": config, "data": data}, sort_keys=True, default=str)
        digest = hashlib.sha256(self.identity.encode()).hexdigest()[:12]
        self.path = Path(folder) / f"{kind}-{digest}.pt"
        self._throttle = Throttle()

    def load(self) -> dict[str, Any] | None:
        """The saved state of this very training, or None (absent, damaged, or another training's)."""
        if not self.path.is_file():
            return None
        try:
            payload = load_tensors(self.path)
        except Exception:  # a damaged file: start over rather than trust it
            return None
        if not isinstance(payload, dict) or payload.get("format") != FORMAT or payload.get("identity") != self.identity:
            return None
        return payload

    def save(self, epoch: int, state: Callable[[], dict[str, Any]], *, last: bool) -> None:
        """Save the state after `epoch` epochs when the last save is old enough, or when it is the last.

        `state` is called only then: copying a model to the CPU every epoch would cost a device
        synchronisation and a copy for saves that mostly do not happen.
        """
        self._throttle(lambda: save_atomically({"format": FORMAT, "identity": self.identity, "epoch": epoch, **state()}, self.path), last=last)


def cpu_state(module: torch.nn.Module) -> dict[str, Tensor]:
    return {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}


class StageContext(Protocol):
    """What training needs of a stage's context (amemctl.context.Context, not imported here)."""

    device: torch.device

    def track(self, items: Iterable, total: int | None = None, description: str = "") -> Iterable: ...

    def epoch_done(self, epoch: int, loss: float) -> None: ...


@dataclass(frozen=True)
class Progress:
    """How a training loop shows its progress: a bar (or log lines) over its epochs, and each epoch's loss."""

    track: Callable[[Iterable, int, str], Iterable] | None = None
    on_epoch: Callable[[int, float], None] | None = None

    @classmethod
    def of(cls, ctx: StageContext) -> "Progress":
        """Progress under a stage's bars, the loss shown in its bar."""
        return cls(ctx.track, ctx.epoch_done)

    def over(self, epochs: range, description: str) -> Iterable[int]:
        """The epochs to train, shown as they pass."""
        return self.track(epochs, len(epochs), description) if self.track is not None else epochs

    def report(self, epoch: int, loss: float) -> None:
        """Tell the loss after `epoch` epochs."""
        if self.on_epoch is not None:
            self.on_epoch(epoch, loss)


@dataclass(frozen=True)
class Checkpointing:
    """What a stage hands its training loop: where the loop keeps its state (or nowhere), and its progress."""

    checkpoint: TrainingCheckpoint | None = None
    progress: Progress = field(default_factory=Progress)

    @classmethod
    def for_stage(cls, ctx: StageContext, folder: "str | Path", kind: str, config: dict[str, Any], *data: Tensor) -> "Checkpointing":
        """The checkpoint <folder>/<kind>-<hash>.pt of this configuration on this kind of device and data; progress under the stage's bars."""
        checkpoint = TrainingCheckpoint(folder, kind, {**config, "device": ctx.device.type}, data_digest(*data))
        return cls(checkpoint, Progress.of(ctx))

    def resume(self, total: int, parts: dict[str, Any], description: str) -> "Epochs":
        """The epochs of a training of `total` epochs, its `parts` restored from the checkpoint when it has them."""
        return Epochs(self, total, parts, description)


@dataclass
class Attribute:
    """A plain value kept on an object (the DAM's temperature), as a part of a training's state."""

    owner: Any
    name: str

    def state_dict(self) -> Any:
        return getattr(self.owner, self.name)

    def load_state_dict(self, value: Any) -> None:
        setattr(self.owner, self.name, value)


class Epochs:
    """The epochs a training loop has left: its state restored before them, saved and reported after each.

    `parts` names what the checkpoint holds besides the losses, under the file's keys: modules,
    optimisers and schedules (their state dicts), random generators, tensors updated in place,
    and `Attribute`s. Iterate for the epochs left; call `done(loss)` after each. `losses` holds
    every epoch's loss, the resumed ones included.
    """

    def __init__(self, checkpointing: Checkpointing, total: int, parts: dict[str, Any], description: str) -> None:
        self.checkpoint, self.progress = checkpointing.checkpoint, checkpointing.progress
        self.total, self.parts, self.description = total, parts, description
        self.losses = self._resume()

    def _resume(self) -> list[float]:
        """The losses of the epochs saved, their parts loaded; none when there is nothing to resume."""
        saved = self.checkpoint.load() if self.checkpoint is not None else None
        if saved is None:
            return []
        for name, part in self.parts.items():
            _load(part, saved[name])
        return list(saved["losses"])

    def __iter__(self) -> Iterator[int]:
        return iter(self.progress.over(range(len(self.losses), self.total), self.description))

    def done(self, loss: float) -> None:
        """Record the loss of the epoch just trained, save (throttled) and report it."""
        self.losses.append(loss)
        epoch = len(self.losses)
        if self.checkpoint is not None:
            self.checkpoint.save(epoch, self._state, last=epoch == self.total)
        self.progress.report(epoch, loss)

    def _state(self) -> dict[str, Any]:
        return {**{name: _saved(part) for name, part in self.parts.items()}, "losses": self.losses}


def _saved(part: Any) -> Any:
    """A part of a training's state as saved: detached and on the CPU, so that it loads anywhere."""
    if isinstance(part, torch.nn.Module):
        return cpu_state(part)
    if isinstance(part, Tensor):
        return part.detach().cpu().clone()
    if isinstance(part, torch.Generator):
        return part.get_state()
    return part.state_dict()  # an optimiser, a schedule, an Attribute


def _load(part: Any, state: Any) -> None:
    if isinstance(part, Tensor):
        with torch.no_grad():
            part.copy_(state)
    elif isinstance(part, torch.Generator):
        part.set_state(state)
    else:
        part.load_state_dict(state)  # a module, an optimiser, a schedule, an Attribute
