"""Dense associative memory for pattern recognition (Krotov & Hopfield 2016).

K memories xi live over visible neurons (the image, in +-1) and C classification neurons.
With the classification neurons started at -1, the one-step update of neuron alpha is

    c_alpha = tanh( sum_mu [ F((b_mu + 2 xi_alpha^mu) / T) - F(b_mu / T) ] ),
    b_mu = sum_i xi_i^mu v_i - sum_gamma xi_gamma^mu,

with F the rectified polynomial energy max(x, 0)^n (or x^n) and temperature T (the paper's
beta = 1/T^n). Read as a network, this is one hidden layer of K units with activation F'
(the paper's duality): small n learns features, large n prototypes. Training minimises
sum_alpha (c_alpha - t_alpha)^(2m) with momentum and per-memory normalised gradients, and
clips memories to [-1, 1] after every step.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from amemctl.core import random
from amemctl.training.checkpoints import Attribute, Checkpointing


class DenseAssociativeMemory(nn.Module):
    """K memories over `visible` + `classes` neurons, with energy F of order n at temperature T."""

    def __init__(self, visible: int, classes: int, memories: int, n: float, rectified: bool = True, seed: int = 0) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        # the paper's initialisation: normal with mean -0.3 and standard deviation 0.3
        self.xi = nn.Parameter((-0.3 + 0.3 * random.randn((memories, visible + classes), generator)).clamp(-1, 1))
        self.visible, self.classes, self.n, self.rectified = visible, classes, n, rectified
        self.temperature = 1.0

    def F(self, x: Tensor) -> Tensor:
        return x.clamp_min(0).pow(self.n) if self.rectified else x.pow(self.n)

    def inputs(self, v: Tensor) -> Tensor:
        """b_mu for visible states v (B x visible): B x K."""
        return v @ self.xi[:, : self.visible].T - self.xi[:, self.visible :].sum(1)

    def forward(self, v: Tensor) -> Tensor:
        """Classification neurons' states in (-1, 1) for visible states v (B x visible, in +-1)."""
        b = self.inputs(v) / self.temperature
        xi_c = self.xi[:, self.visible :] / self.temperature
        return torch.tanh((self.F(b[:, :, None] + 2 * xi_c[None]) - self.F(b)[:, :, None]).sum(1))

    @torch.no_grad()
    def clip(self) -> None:
        self.xi.clamp_(-1, 1)

    def memories(self) -> Tensor:
        """The visible parts of the memories, K x visible, in [-1, 1]."""
        return self.xi[:, : self.visible].detach()


def bipolar(images: Tensor) -> Tensor:
    """Images in [0, 1] (or already +-1) as B x visible states in [-1, 1]."""
    v = images.reshape(len(images), -1).float()
    return v * 2 - 1 if v.min() >= 0 else v


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


@torch.no_grad()
def accuracy(model: DenseAssociativeMemory, images: Tensor, labels: Tensor) -> float:
    predicted = model(bipolar(images).to(model.xi.device)).argmax(1).cpu()
    return (predicted == labels.cpu()).float().mean().item()
