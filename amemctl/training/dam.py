"""Training a dense associative memory (Krotov & Hopfield 2016): the paper's loss and updates."""

from __future__ import annotations

import torch
from torch import Tensor

from amemctl.core import random
from amemctl.models.dam import DenseAssociativeMemory, bipolar
from amemctl.training.checkpoints import Attribute, Checkpointing


def train_dam(
    images: Tensor,
    labels: Tensor,
    classes: int,
    *,
    memories: int,
    n: float,
    temperature: float | None = None,
    rectified: bool = True,
    power: int = 1,
    epochs: int = 100,
    batch_size: int = 100,
    lr: float = 2e-2,
    momentum: float = 0.6,
    decay: float = 0.998,
    seed: int = 0,
    device: torch.device = torch.device("cpu"),
    checkpointing: Checkpointing = Checkpointing(),
) -> tuple[DenseAssociativeMemory, list[float]]:
    """Minimise sum_alpha (c_alpha - t_alpha)^(2 power) with the paper's normalised momentum updates.

    Returns the model and the loss per epoch; the learning rate decays by `decay` per epoch.

    Without a temperature, T is the 99th percentile of the initial inputs b: the most excited
    memories start near the knee of F, so gradients flow at every order n.

    With a checkpoint in `checkpointing` (amemctl.training.checkpoints), training saves its
    state as it goes and resumes from it.
    """
    v = bipolar(images).to(device)
    targets = -torch.ones(len(labels), classes, device=device)
    targets[torch.arange(len(labels), device=device), labels.to(device)] = 1
    model = DenseAssociativeMemory(v.shape[1], classes, memories, n, rectified, seed).to(device)
    with torch.no_grad():
        model.temperature = float(temperature) if temperature else float(model.inputs(v[:2000]).quantile(0.99).clamp_min(1e-3))
    velocity = torch.zeros_like(model.xi)
    training = checkpointing.resume(epochs, {"xi": model.xi, "velocity": velocity, "temperature": Attribute(model, "temperature")}, f"dam n={n:g}")
    for epoch in training:
        order = random.randperm(len(v), torch.Generator().manual_seed(seed * 101 + epoch), device=device)
        rate = lr * decay**epoch
        total = torch.zeros((), device=device)  # summed on the device: one sync per epoch, not per step
        for start in range(0, len(v), batch_size):
            idx = order[start : start + batch_size]
            loss = (model(v[idx]) - targets[idx]).pow(2 * power).sum(1).mean()
            model.xi.grad = None
            loss.backward()
            with torch.no_grad():
                # The paper's update: each memory's gradient scaled to a largest entry of 1, so
                # memories far from any input (tiny gradients at high n) still learn.
                grad = model.xi.grad / model.xi.grad.abs().amax(1, keepdim=True).clamp_min(1e-30)
                velocity.mul_(momentum).add_(grad)
                model.xi.sub_(rate * velocity)
            model.clip()
            total += loss.detach() * len(idx)
        training.done(total.item() / len(v))
    return model, training.losses
