"""Dense associative memory (Krotov & Hopfield 2016): XOR for odd n, digits better than chance."""

from __future__ import annotations

import pytest
import torch

from amemctl.models.dam import accuracy
from amemctl.training.dam import train_dam

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
