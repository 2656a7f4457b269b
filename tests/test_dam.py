"""Dense associative memory (Krotov & Hopfield 2016): XOR for odd n, digits better than chance."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from amemctl.models.dam import DenseAssociativeMemory, accuracy
from amemctl.training import dam as dam_training
from amemctl.training.dam import temperature_at, train_dam

XOR_V = torch.tensor([[-1.0, -1], [-1, 1], [1, -1], [1, 1]])
XOR_Y = torch.tensor([0, 1, 1, 0])


def _xor(n: float, seed: int) -> float:
    model, _ = train_dam(XOR_V, XOR_Y, 2, memories=4, n=n, rectified=False, epochs=300, batch_size=4, lr=0.05, decay=1.0, seed=seed)
    return accuracy(model, XOR_V, XOR_Y)


def test_xor_needs_an_odd_order():
    # F(x) = x^n: for even n the classifier's input is linear in v, so XOR is out of reach;
    # for odd n it holds v1 * v2 terms.
    assert max(_xor(2, seed) for seed in range(3)) <= 0.75
    assert sum(_xor(3, seed) == 1.0 for seed in range(3)) >= 2


def test_digits_are_classified_far_better_than_chance(run_text):
    text = """\
stages:
  - load: {dataset: digits, split: test, output: test_images, labels: test_labels}
  - load: {dataset: digits, split: train}
  - train-dam: {n: 3, memories: 50, epochs: 15, test: test_images, test_labels: test_labels, shown: 10}
"""
    run = run_text(text)
    metrics = run.points[0].metrics
    assert metrics["dam_test_accuracy"] > 0.6 and metrics["dam_train_accuracy"] > 0.6
    assert (run.run_dir / "figures" / "memories.png").exists()


def test_repeats_give_means_and_spreads(run_text):
    text = """\
repeats: 3
data: {dataset: digits, subset: 30}
stages:
  - corrupt: {kind: gaussian, variance: 0.2}
  - model: mchn
  - evaluate: {}
report:
  tables: [{metric: mse, rows: []}]
"""
    run = run_text(text)
    point = run.points[0]
    assert len(point.repeats) == 3 and point.metrics["mse"] == pytest.approx(sum(r["mse"] for r in point.repeats) / 3)
    assert point.metrics["mse.std"] > 0  # three seeds, three different subsets and noises
    assert " ± " in (run.run_dir / "report.md").read_text()


def _reference_training(xi, v, labels, classes, *, n, m, temperatures, rates, p, batches):
    """The authors' equations, plainly (numpy, float64): per minibatch, c from the difference of
    F's with classification neuron alpha at +1 versus all at -1, the loss's negative gradient d
    *without* its factor 2 m n beta (as in their notebook), V <- p V + d, and
    xi <- clip(xi + eps V / max_I |V_I|, -1, 1)."""
    xi, velocity = xi.copy(), np.zeros_like(xi)
    visible = v.shape[1]
    for temperature, eps, rows in zip(temperatures, rates, batches):
        beta = 1.0 / temperature**n
        d = np.zeros_like(xi)
        for a in rows:
            off = np.concatenate([v[a], -np.ones(classes)])  # every classification neuron at -1
            for alpha in range(classes):
                on = off.copy()
                on[visible + alpha] = 1.0
                f_on, f_off = np.maximum(xi @ on, 0), np.maximum(xi @ off, 0)
                c = np.tanh(beta * np.sum(f_on**n - f_off**n))
                t = 1.0 if alpha == labels[a] else -1.0
                g = (t - c) ** (2 * m - 1) * (1 - c) * (1 + c)
                d += g * (np.outer(f_on ** (n - 1), on) - np.outer(f_off ** (n - 1), off))
        velocity = p * velocity + d
        xi = np.clip(xi + eps * velocity / np.maximum(np.abs(velocity).max(1, keepdims=True), 1e-30), -1, 1)
    return xi


def test_training_takes_the_authors_normalised_momentum_steps():
    # Three epochs of one minibatch (all 5 images: no shuffle to match) on a fabricated problem,
    # with a temperature ramp, against the authors' equations: the velocity, not the gradient,
    # is normalised per memory (the old loop normalised the gradient and stepped by eps times
    # the velocity, up to eps / (1 - p)), and a ramp changes beta between the steps.
    generator = torch.Generator().manual_seed(3)
    images = torch.rand(5, 1, 2, 3, generator=generator)
    labels = torch.tensor([0, 2, 1, 2, 0])
    settings = {"memories": 4, "n": 3, "temperature": 1.5, "temperature_final": 1.0, "ramp": 2, "power": 2, "lr": 0.1, "momentum": 0.6, "decay": 0.9, "seed": 4}
    initial = DenseAssociativeMemory(6, 3, 4, 3, seed=4).xi.detach().double().numpy()
    model, losses = train_dam(images, labels, 3, epochs=3, batch_size=5, double=True, **settings)
    v = (images.reshape(5, -1).double() * 2 - 1).numpy()
    expected = _reference_training(initial, v, labels.numpy(), 3, n=3, m=2, temperatures=[1.5, 1.25, 1.0], rates=[0.1, 0.09, 0.081], p=0.6, batches=[range(5)] * 3)
    assert len(losses) == 3 and model.temperature == 1.0
    assert np.abs(initial).max() > 1  # the authors' initialisation is clipped only by the first step
    np.testing.assert_allclose(model.xi.detach().numpy(), expected, rtol=0, atol=1e-12)
    assert np.abs(expected - initial).max() > 0.05  # the steps moved the memories


def test_each_epoch_takes_only_full_minibatches():
    # 10 images in minibatches of 4: two steps an epoch, like range(Ns // Num) in the authors' code.
    images, labels = torch.rand(10, 1, 2, 2, generator=torch.Generator().manual_seed(0)), torch.arange(10) % 2
    steps = []
    original = dam_training.train_step
    try:
        dam_training.train_step = lambda *a, **k: steps.append(len(a[2])) or original(*a, **k)
        train_dam(images, labels, 2, memories=3, n=2, temperature=4.0, epochs=2, batch_size=4)
    finally:
        dam_training.train_step = original
    assert steps == [4, 4, 4, 4]


def test_temperature_ramp_is_the_authors():
    assert [temperature_at(e, 700.0, 400.0, 100) for e in (0, 50, 100, 150)] == [700.0, 550.0, 400.0, 400.0]
    assert temperature_at(5, 540.0, None, 200) == 540.0
