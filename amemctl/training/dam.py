"""Training a dense associative memory (Krotov & Hopfield 2016): the authors' loss and updates.

The update is the one in the authors' notebook (github.com/DimaKrotov/Dense_Associative_Memory,
`Dense_Associative_Memory_training.ipynb`), the paper's Eqs. 12-13: with d the negative
gradient of sum_alpha (c_alpha - t_alpha)^(2m) over a minibatch, per memory mu

    V_mu <- p V_mu + d_mu,        xi_mu <- clip(xi_mu + eps V_mu / max_I |V_mu,I|, -1, 1),

eps = eps0 f^epoch: the *velocity*, not the gradient, is normalised, so every memory moves by
exactly eps in its largest entry. The notebook's d leaves out the gradient's factor 2 m n beta
(beta = 1/T^n); the normalisation makes constant factors irrelevant, but beta changes with the
temperature ramp, so here the velocity is kept in units of the current beta and rescaled by
(T_old / T_new)^n when the temperature moves: the same steps, without numbers like 540^30.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from amemctl.core import random
from amemctl.models.dam import DenseAssociativeMemory, bipolar
from amemctl.training.checkpoints import Attribute, Checkpointing

#: The notebook's `prec`: the smallest largest-entry a velocity is divided by.
PRECISION = 1e-30


def temperature_at(epoch: int, start: float, final: float | None, ramp: int) -> float:
    """The notebook's temperature ramp: linear from `start` to `final` over the first `ramp` epochs, then `final`."""
    if final is None or ramp <= 0 or epoch >= ramp:
        return float(start if final is None else final)
    return start + (final - start) * epoch / ramp


def velocity_floor(n: float, power: int, temperature: float, dtype: torch.dtype) -> float:
    """The notebook's floor `prec` on its unscaled velocity, in the units of ours (2 m n beta times theirs)."""
    log_floor = math.log(PRECISION) + math.log(2 * power * n) - n * math.log(temperature)
    return max(math.exp(log_floor) if log_floor > -700 else 0.0, torch.finfo(dtype).tiny)


def loss_of(model: DenseAssociativeMemory, v: Tensor, targets: Tensor, power: int) -> Tensor:
    """sum over the minibatch and the classes of (c - t)^(2m), the paper's Eq. 14."""
    return (model(v) - targets).pow(2 * power).sum()


def normalised_step(model: DenseAssociativeMemory, velocity: Tensor, rate: float, momentum: float, floor: float) -> None:
    """After backward: velocity <- p velocity - grad; xi <- clip(xi + rate velocity / its largest entry per memory)."""
    with torch.no_grad():
        velocity.mul_(momentum).sub_(model.xi.grad)
        scale = velocity.abs().amax(1, keepdim=True).clamp_min(floor)
        model.xi.add_(rate * velocity / scale)
    model.clip()


def train_step(model: DenseAssociativeMemory, velocity: Tensor, v: Tensor, targets: Tensor, *, power: int, rate: float, momentum: float, floor: float) -> Tensor:
    """One minibatch of the authors' training: the loss's gradient, then the normalised momentum step. Returns the loss."""
    loss = loss_of(model, v, targets, power)
    model.xi.grad = None
    loss.backward()
    normalised_step(model, velocity, rate, momentum, floor)
    return loss.detach()


def initial_temperature(model: DenseAssociativeMemory, v: Tensor) -> float:
    """amemctl's default T: the 99th percentile of the initial inputs b, so the most excited memories start near F's knee."""
    with torch.no_grad():
        return float(model.inputs(v[:2000]).quantile(0.99).clamp_min(1e-3))


def one_hot_pm(labels: Tensor, classes: int, device: torch.device, dtype: torch.dtype) -> Tensor:
    """Targets t: +1 for the label's classification neuron, -1 for the others."""
    targets = -torch.ones(len(labels), classes, device=device, dtype=dtype)
    targets[torch.arange(len(labels), device=device), labels.to(device)] = 1
    return targets


def train_dam(
    images: Tensor,
    labels: Tensor,
    classes: int,
    *,
    memories: int,
    n: float,
    temperature: float | None = None,
    temperature_final: float | None = None,
    ramp: int = 0,
    rectified: bool = True,
    power: int = 1,
    epochs: int = 100,
    batch_size: int = 100,
    lr: float = 2e-2,
    momentum: float = 0.6,
    decay: float = 0.998,
    double: bool = False,
    seed: int = 0,
    device: torch.device = torch.device("cpu"),
    checkpointing: Checkpointing = Checkpointing(),
) -> tuple[DenseAssociativeMemory, list[float]]:
    """Minimise sum_alpha (c_alpha - t_alpha)^(2 power) with the authors' normalised momentum updates.

    Returns the model and the mean loss per image of each epoch. The learning rate is
    lr * decay^epoch; the temperature goes from `temperature` to `temperature_final` over the
    first `ramp` epochs (the notebook's Temp_in, Temp_f, thresh_pret). Like the notebook, each
    epoch takes len(images) // batch_size full minibatches of a fresh shuffle (one of all
    images when there are fewer than batch_size). `double` computes in float64, the notebook's
    numpy precision: with m = 30, (c - t)^59 of well-classified images underflows float32.

    Without a temperature, T is the 99th percentile of the initial inputs b (amemctl's default,
    not the authors').

    With a checkpoint in `checkpointing` (amemctl.training.checkpoints), training saves its
    state as it goes and resumes from it.
    """
    dtype = torch.float64 if double else torch.float32
    v = bipolar(images).to(device=device, dtype=dtype)
    targets = one_hot_pm(labels, classes, device, dtype)
    model = DenseAssociativeMemory(v.shape[1], classes, memories, n, rectified, seed).to(device=device, dtype=dtype)
    start = float(temperature) if temperature else initial_temperature(model, v)
    model.temperature = start
    velocity = torch.zeros_like(model.xi)
    training = checkpointing.resume(epochs, {"xi": model.xi, "velocity": velocity, "temperature": Attribute(model, "temperature")}, f"dam n={n:g}")
    batch = min(batch_size, len(v))
    for epoch in training:
        now = temperature_at(epoch, start, temperature_final, ramp)
        with torch.no_grad():
            velocity.mul_((model.temperature / now) ** n)  # the velocity in units of the new beta
        model.temperature = now
        floor = velocity_floor(n, power, now, dtype)
        order = random.randperm(len(v), torch.Generator().manual_seed(seed * 101 + epoch), device=device)
        rate = lr * decay**epoch
        total = torch.zeros((), device=device, dtype=dtype)  # summed on the device: one sync per epoch, not per step
        steps = len(v) // batch
        for step in range(steps):
            idx = order[step * batch : (step + 1) * batch]
            total += train_step(model, velocity, v[idx], targets[idx], power=power, rate=rate, momentum=momentum, floor=floor)
        training.done(total.item() / (steps * batch))
    return model, training.losses
