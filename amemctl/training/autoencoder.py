"""Training the autoencoder of a fully semantic memory: reconstruct images through a small code."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from amemctl.core import random
from amemctl.models.autoencoders import Autoencoder, build_autoencoder, save_autoencoder
from amemctl.training.checkpoints import Checkpointing


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
    checkpointing: Checkpointing = Checkpointing(),
) -> tuple[Autoencoder, list[float]]:
    """Adam on the mean squared reconstruction error (the paper: lr 1e-3, batch 250); returns the model and loss per epoch.

    With a checkpoint in `checkpointing`, training saves its state as it goes and resumes
    from it (see amemctl.training.checkpoints).
    """
    shape = tuple(images.shape[1:])
    module = build_autoencoder(kind, shape, hidden, code, seed).to(device)
    optimizer = torch.optim.Adam(module.parameters(), lr=lr)
    data = images.to(device, torch.float32)
    training = checkpointing.resume(epochs, {"model": module, "optimizer": optimizer}, f"autoencoder {kind}")
    for epoch in training:
        order = random.randperm(len(data), torch.Generator().manual_seed(seed * 7919 + epoch), device=device)
        total = torch.zeros((), device=device)  # summed on the device: one sync per epoch, not per step
        for start in range(0, len(data), batch_size):
            batch = data[order[start : start + batch_size]]
            loss = F.mse_loss(module(batch), batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += loss.detach() * len(batch)
        training.done(total.item() / len(data))
    sha = save_autoencoder(module, path, kind, shape, hidden, code, losses=training.losses, epochs=epochs, lr=lr, batch_size=batch_size)
    return Autoencoder(module.cpu(), kind, shape, list(hidden), code, sha), training.losses
