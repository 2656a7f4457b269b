"""Training the hetero-encoder: L2 loss on the associated image, optional L1 sparsity of the code."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from amemctl.core import random
from amemctl.models.hetero import HeteroEncoder, HeteroEncoderNet
from amemctl.training.checkpoints import Checkpointing


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
    checkpointing: Checkpointing = Checkpointing(),
) -> tuple[HeteroEncoder, list[float]]:
    """Adam with an exponentially decaying learning rate (the article: 2.5e-4); returns the model and loss per epoch.

    With noise > 0, inputs get Gaussian noise of that variance during training, so chains
    started from noisy images still find their way. With a checkpoint in `checkpointing`,
    training saves its state as it goes and resumes from it (see amemctl.training.checkpoints).
    """
    shape = tuple(inputs.shape[1:])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = HeteroEncoderNet(shape, code).to(device)
    optimizer = torch.optim.Adam(net.parameters(), lr=lr)
    schedule = torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=decay)
    x, y = inputs.to(device, torch.float32), targets.to(device, torch.float32)
    generator = torch.Generator().manual_seed(seed)  # on the CPU: the same noise on every device
    training = checkpointing.resume(epochs, {"model": net, "optimizer": optimizer, "schedule": schedule, "generator": generator}, "hetero-encoder")
    for epoch in training:
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
        training.done(total.item() / len(x))
    return HeteroEncoder(net.cpu(), shape), training.losses
