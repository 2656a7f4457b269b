"""Training the hetero-encoder: L2 loss on the associated image, optional L1 sparsity of the code."""

from __future__ import annotations

import math
from typing import Callable, Iterable

import torch
import torch.nn.functional as F
from torch import Tensor

from amemctl.core import random
from amemctl.models.hetero import HeteroEncoder, HeteroEncoderNet
from amemctl.training.checkpoints import TrainingCheckpoint, cpu_state


def train_hetero(
    inputs: Tensor,
    targets: Tensor,
    *,
    code: int,
    epochs: int,
    batch_size: int,
    lr: float,
    decay: float,
    sparsity: float,
    noise: float,
    seed: int,
    device: torch.device,
    track: Callable[[Iterable, int, str], Iterable] | None = None,
    checkpoint: TrainingCheckpoint | None = None,
    on_epoch: Callable[[int, float], None] | None = None,
) -> tuple[HeteroEncoder, list[float]]:
    """Adam with an exponentially decaying learning rate (the article: 2.5e-4); returns the model and loss per epoch.

    With noise > 0, inputs get Gaussian noise of that variance during training, so chains
    started from noisy images still find their way. With a `checkpoint`, training saves
    its state as it goes and resumes from it (see amemctl.training.checkpoints); `on_epoch`
    hears (epoch, loss) after each epoch.
    """
    shape = tuple(inputs.shape[1:])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = HeteroEncoderNet(shape, code).to(device)
    optimizer = torch.optim.Adam(net.parameters(), lr=lr)
    schedule = torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=decay)
    x, y = inputs.to(device, torch.float32), targets.to(device, torch.float32)
    generator = torch.Generator().manual_seed(seed)  # on the CPU: the same noise on every device
    losses: list[float] = []
    saved = checkpoint.load() if checkpoint is not None else None
    if saved is not None:
        net.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        schedule.load_state_dict(saved["schedule"])
        generator.set_state(saved["generator"])
        losses = list(saved["losses"])
    epoch_range = range(len(losses), epochs)
    for epoch in track(epoch_range, len(epoch_range), "hetero-encoder") if track else epoch_range:
        net.train()
        order = random.randperm(len(x), torch.Generator().manual_seed(seed * 31 + epoch), device=device)
        total = torch.zeros((), device=device)  # summed on the device: one sync per epoch, not per step
        for start in range(0, len(x), batch_size):
            idx = order[start : start + batch_size]
            batch = x[idx]
            if noise > 0:
                batch = (batch + math.sqrt(noise) * random.randn(batch.shape, generator, device=device)).clamp(0, 1)
            code_ = net.encoder(batch)
            loss = F.mse_loss(net.decoder(code_), y[idx])
            if sparsity > 0:
                loss = loss + sparsity * code_.abs().mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += loss.detach() * len(idx)
        schedule.step()
        losses.append(total.item() / len(x))
        if checkpoint is not None:
            state = lambda: {"model": cpu_state(net), "optimizer": optimizer.state_dict(), "schedule": schedule.state_dict(), "generator": generator.get_state(), "losses": losses}  # noqa: E731
            checkpoint.save(epoch + 1, state, last=epoch + 1 == epochs)
        if on_epoch is not None:
            on_epoch(epoch + 1, losses[-1])
    return HeteroEncoder(net.cpu(), shape), losses
