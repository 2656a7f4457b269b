"""Resumable training: the latest epoch's full state in one file, written atomically.

A training loop (hetero-encoder, autoencoder, dense associative memory) saves its model,
optimiser, schedule, random generators and losses after an epoch, at most every
`CHECKPOINT_SECONDS` and always after the last one. Started again with the same
configuration and data (the file's name and contents carry their hash), it continues from
that epoch and ends with the same numbers as an uninterrupted run; a training that had
finished is reused without a step. A damaged or foreign file is ignored, never trusted.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any, Callable

import torch
from torch import Tensor

from amemctl.models.encoders import save_atomically

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


class TrainingCheckpoint:
    """The resumable state of one training, identified by its configuration and data."""

    def __init__(self, folder: "str | Path", kind: str, config: dict[str, Any], data: str) -> None:
        self.identity = json.dumps({"kind": kind, "config": config, "data": data}, sort_keys=True, default=str)
        digest = hashlib.sha256(self.identity.encode()).hexdigest()[:12]
        self.path = Path(folder) / f"{kind}-{digest}.pt"
        self._saved_at = time.monotonic()

    def load(self) -> dict[str, Any] | None:
        """The saved state of this very training, or None (absent, damaged, or another training's)."""
        if not self.path.is_file():
            return None
        try:
            payload = torch.load(self.path, map_location="cpu", weights_only=True)
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
        if not last and time.monotonic() - self._saved_at < CHECKPOINT_SECONDS:
            return
        save_atomically({"format": FORMAT, "identity": self.identity, "epoch": epoch, **state()}, self.path)
        self._saved_at = time.monotonic()


def cpu_state(module: torch.nn.Module) -> dict[str, Tensor]:
    return {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}
