"""Dense associative memory for pattern recognition (Krotov & Hopfield 2016).

K memories xi live over visible neurons (the image, in +-1) and C classification neurons.
With the classification neurons started at -1, the one-step update of neuron alpha is

    c_alpha = tanh( sum_mu [ F((b_mu + 2 xi_alpha^mu) / T) - F(b_mu / T) ] ),
    b_mu = sum_i xi_i^mu v_i - sum_gamma xi_gamma^mu,

with F the rectified polynomial energy max(x, 0)^n (or x^n) and temperature T (the paper's
beta = 1/T^n: beta F(x) = F(x / T) for a polynomial of order n). Read as a network, this is
one hidden layer of K units with activation F' (the paper's duality): small n learns
features, large n prototypes. Training minimises sum_alpha (c_alpha - t_alpha)^(2m) with
the authors' momentum updates normalised per memory, and clips memories to [-1, 1] after
every step (the loop: amemctl.training.dam).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from amemctl.core import random


class DenseAssociativeMemory(nn.Module):
    """K memories over `visible` + `classes` neurons, with energy F of order n at temperature T."""

    def __init__(self, visible: int, classes: int, memories: int, n: float, rectified: bool = True, seed: int = 0) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        # the authors' initialisation: normal with mean -0.3 and standard deviation 0.3, not
        # clipped (their code clips to [-1, 1] only after each update)
        self.xi = nn.Parameter(-0.3 + 0.3 * random.randn((memories, visible + classes), generator))
        self.visible, self.classes, self.n, self.rectified = visible, classes, n, rectified
        self.temperature = 1.0

    def F(self, x: Tensor) -> Tensor:
        """The energy's vertex: max(x, 0)^n, or x^n when not rectified."""
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


@torch.no_grad()
def accuracy(model: DenseAssociativeMemory, images: Tensor, labels: Tensor) -> float:
    predicted = model(bipolar(images).to(model.xi)).argmax(1).cpu()
    return (predicted == labels.cpu()).float().mean().item()
