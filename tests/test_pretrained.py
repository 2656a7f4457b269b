"""Shipped encoders by name (identity checked before loading) and the kNN accuracy of embeddings."""

from __future__ import annotations

import math

import pytest
import torch

from amemctl.core.knn import knn_accuracy, queries_per_block
from amemctl.errors import DataError
from amemctl.models import pretrained
from amemctl.models.encoders import Preprocessing, random_encoder, save_encoder

CPU = torch.device("cpu")


def _ship(folder, name="tiny-phi"):
    phi = random_encoder("small", True, Preprocessing(), seed=3)
    checkpoint = folder / "encoder.pt"
    save_encoder(phi.module, checkpoint, "small", True, phi.preprocessing, losses=[1.0, 0.5])
    entry = pretrained.ship(checkpoint, name, "a random small encoder", "# tiny-phi\n\nsha256: {sha256}\n", folder)
    return phi, entry


def test_a_shipped_encoder_loads_by_name_with_its_recorded_identity(tmp_path):
    phi, entry = _ship(tmp_path)
    assert pretrained.names(tmp_path) == ["tiny-phi"]
    loaded = pretrained.load("tiny-phi", tmp_path)
    assert loaded.weights_sha256 == entry.sha256 and loaded.weights == "pretrained:tiny-phi"
    assert loaded.identity()["weights_sha256"] == entry.sha256
    assert entry.sha256 in (tmp_path / "tiny-phi.md").read_text()
    images = torch.rand(6, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    rounded = random_encoder("small", True, Preprocessing(), seed=3)
    rounded.module.load_state_dict({k: v.to(torch.bfloat16).to(v.dtype) if v.is_floating_point() else v for k, v in phi.module.state_dict().items()})
    torch.testing.assert_close(loaded.embed(images, CPU), rounded.embed(images, CPU))
    assert (tmp_path / "tiny-phi.pt").stat().st_size < (tmp_path / "encoder.pt").stat().st_size * 0.6  # bfloat16 weights


def test_a_damaged_or_missing_shipped_file_is_refused_before_loading(tmp_path):
    _ship(tmp_path)
    data = bytearray((tmp_path / "tiny-phi.pt").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (tmp_path / "tiny-phi.pt").write_bytes(bytes(data))
    with pytest.raises(DataError, match="damaged or replaced"):
        pretrained.load("tiny-phi", tmp_path)
    (tmp_path / "tiny-phi.pt").unlink()
    with pytest.raises(DataError, match="missing its weights file"):
        pretrained.load("tiny-phi", tmp_path)
    with pytest.raises(DataError, match="did you mean 'tiny-phi'"):
        pretrained.load("tiny-pho", tmp_path)


def test_embed_takes_a_shipped_encoder_by_name(tmp_path, monkeypatch, run_text):
    _ship(tmp_path)
    monkeypatch.setattr(pretrained, "WEIGHTS", tmp_path)
    text = """\
data: {dataset: patches32, limit: 16}
stages:
  - embed: {pretrained: tiny-phi, input: patterns, output: keys}
  - corrupt: {kind: rotate}
  - embed: {pretrained: tiny-phi, input: queries, output: query_keys}
  - score: {memory: keys, queries: query_keys, similarity: cosine}
  - separate: {function: max}
  - project: {values: patterns}
  - evaluate: {}
"""
    metrics = run_text(text).points[0].metrics
    assert 0 <= metrics["error_index"] <= 1


def _plain_knn(x, y, k, tau):
    x = torch.nn.functional.normalize(x, dim=1)
    correct = 0
    for i in range(len(x)):
        sims = [(float(x[i] @ x[j]), int(y[j])) for j in range(len(x)) if j != i]
        sims.sort(key=lambda t: -t[0])
        votes = {}
        for s, label in sims[:k]:
            votes[label] = votes.get(label, 0.0) + torch.exp(torch.tensor(s / tau)).item()
        correct += max(votes, key=votes.get) == int(y[i])
    return correct / len(x)


def test_knn_accuracy_equals_a_plain_leave_one_out_vote():
    g = torch.Generator().manual_seed(0)
    centres = torch.randn(4, 8, generator=g)
    labels = torch.randint(0, 4, (60,), generator=g)
    x = centres[labels] + 0.9 * torch.randn(60, 8, generator=g)
    for k in (1, 5, 20):
        assert knn_accuracy(x, labels, k=k, tau=0.1, block=7) == pytest.approx(_plain_knn(x, labels, k, 0.1))
    # leave-one-out: a lone point of its class cannot vote for itself
    lone = torch.cat([x, torch.randn(1, 8, generator=g)]), torch.cat([labels, torch.tensor([9])])
    assert knn_accuracy(*lone, k=1) == pytest.approx(_plain_knn(x, labels, 1, 0.1) * 60 / 61)
    # with separate references, every query is classified against them
    assert knn_accuracy(centres, torch.arange(4), x, labels, k=5) == 1.0


def _exact_knn(x, y, k, tau):
    """The weighted vote in float64 with Python's exp, which cannot overflow at these tau."""
    x = torch.nn.functional.normalize(x.double(), dim=1)
    sims = x @ x.T
    sims.fill_diagonal_(-math.inf)
    correct = 0
    for i in range(len(x)):
        top, index = sims[i].topk(k)
        votes = {}
        for s, j in zip(top.tolist(), index.tolist()):
            votes[int(y[j])] = votes.get(int(y[j]), 0.0) + math.exp(s / tau)
        correct += max(votes, key=votes.get) == int(y[i])
    return correct / len(x)


def test_knn_accuracy_at_a_small_tau_votes_as_in_float64_instead_of_overflowing():
    """exp(similarity / tau) passes float32's largest number once similarity / tau > 88: every
    class's vote became inf and argmax took class 0, whatever the neighbours said."""
    g = torch.Generator().manual_seed(1)
    centres = torch.randn(5, 16, generator=g)
    labels = torch.randint(0, 5, (80,), generator=g)
    x = centres[labels] + 0.9 * torch.randn(80, 16, generator=g)  # neighbours of mixed classes
    for tau in (0.005, 0.01):  # 0.005: similarities above 0.44 overflowed; 0.75 right before, 0.95 exactly
        assert _exact_knn(x, labels, 10, tau) == pytest.approx(0.95)
        assert knn_accuracy(x, labels, k=10, tau=tau) == pytest.approx(0.95)


def test_knn_accuracy_scores_no_more_queries_at_once_than_the_budget_holds():
    assert queries_per_block(1_000_000, 200, 10, 1024, None) == 1024
    per_query = 4 * 1_000_000 + 12 * 200 + 4 * 10
    assert queries_per_block(1_000_000, 200, 10, 1024, 64 * per_query + 5) == 64
    assert queries_per_block(1_000_000, 200, 10, 1024, 10) == 1  # never none
    g = torch.Generator().manual_seed(0)
    x, labels = torch.randn(50, 8, generator=g), torch.randint(0, 3, (50,), generator=g)
    seen = []
    original = torch.Tensor.topk

    def spy(self, *args, **kwargs):
        seen.append(self.shape[0])
        return original(self, *args, **kwargs)

    budget = 3 * (4 * 50 + 12 * 5 + 4 * 3)  # three queries
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(torch.Tensor, "topk", spy)
        blocked = knn_accuracy(x, labels, k=5, budget=budget)
    assert max(seen) == 3 and blocked == pytest.approx(knn_accuracy(x, labels, k=5))
