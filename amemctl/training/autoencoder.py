"""Training the autoencoder of a fully semantic memory: reconstruct images through a small code."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterable

import torch
import torch.nn.functional as F
from torch import Tensor

from amemctl.core import random
from amemctl.models.autoencoders import Autoencoder, build_autoencoder, save_autoencoder
from amemctl.training.checkpoints import TrainingCheckpoint, cpu_state


def train_autoencoder(
    images: Tensor,
    *,
    kind: str,
    hidden: list[int],
    code: int,
    epochs: int,
    batch_size: int,
    lr: float,
    seed: int,
    path: "str | Path",
    device: torch.device,
    track: Callable[[Iterable, int, str], Iterable] | None = None,
    checkpoint: TrainingCheckpoint | None = None,
    on_epoch: Callable[[int, float], None] | None = None,
) -> tuple[Autoencoder, list[float]]:
    """Adam on the mean squared reconstruction error (the paper: lr 1e-3, batch 250); returns the model and loss per epoch.

    With a `checkpoint`, training saves its state as it goes and resumes from it (see
    amemctl.training.checkpoints); `on_epoch` hears (epoch, loss) after each epoch.
    """
    shape = tuple(images.shape[1:])
    module = build_autoencoder(kind, shape, hidden, code, seed).to(device)
    optimizer = torch.optim.Adam(module.parameters(), lr=lr)
    data = images.to(device, torch.float32)
    losses: list[float] = []
    saved = checkpoint.load() if checkpoint is not None else None
    if saved is not None:
        module.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        losses = list(saved["losses"])
    epoch_range = range(len(losses), epochs)
    for epoch in track(epoch_range, len(epoch_range), f"autoencoder {kind}") if track else epoch_range:
        order = random.randperm(len(data), torch.Generator().manual_seed(seed * 7919 + epoch), device=device)
        total = torch.zeros((), device=device)  # summed on the device: one sync per epoch, not per step
        for start in range(0, len(data), batch_size):
            batch = data[order[start : start + batch_size]]
            loss = F.mse_loss(module(batch), batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += loss.detach() * len(batch)
        losses.append(total.item() / len(data))
        if checkpoint is not None:
            checkpoint.save(epoch + 1, lambda: {"model": cpu_state(module), "optimizer": optimizer.state_dict(), "losses": losses}, last=epoch + 1 == epochs)
        if on_epoch is not None:
            on_epoch(epoch + 1, losses[-1])
    sha = save_autoencoder(module, path, kind, shape, hidden, code, losses=losses, epochs=epochs, lr=lr, batch_size=batch_size)
    return Autoencoder(module.cpu(), kind, shape, list(hidden), code, sha), losses
