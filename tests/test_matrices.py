"""Whole score and weight matrices (the score and separate stages run apart): the plain formula's
numbers, in blocks that keep their temporaries within the budget."""

from __future__ import annotations

import pytest
import torch

from amemctl.core.matrices import score_matrix, weight_matrix
from amemctl.core.rows import TensorRows
from amemctl.core.separation import SEPARATIONS, make_separation
from amemctl.core.similarity import SIMILARITIES
from amemctl.errors import StageError
from tests.peak import Peak


def _patterns(seed: int, *shape: int) -> torch.Tensor:
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed)) + 0.05  # positive: distributions for the divergences


@pytest.mark.parametrize("similarity", sorted(SIMILARITIES))
def test_scores_in_blocks_equal_the_similarity_of_the_whole(similarity):
    """A budget of a few thousand pairs splits both the queries and the 3,000 keys into blocks."""
    sim = SIMILARITIES[similarity]
    q, k = _patterns(0, 5, 2, 4), _patterns(1, 3000, 2, 4)
    plain = sim(q.reshape(5, -1), k.reshape(3000, -1))
    for budget in (2**15, 2**30):
        torch.testing.assert_close(score_matrix(q, TensorRows(k), sim, budget=budget), plain, rtol=1e-5, atol=1e-5)
    total = plain.sum(1, keepdim=True)
    total = torch.where(total == 0, 1.0, total)  # a row summing to 0 (hamming of patterns that agree in sign) is left as it is
    torch.testing.assert_close(score_matrix(q, k, sim, normalize=True, budget=2**15), plain / total, rtol=1e-5, atol=1e-7)


def test_scores_of_half_precision_keys_are_those_of_the_keys_widened():
    q, k = _patterns(0, 6, 16), _patterns(1, 2000, 16).half()
    for name in ("dot", "manhattan"):
        sim = SIMILARITIES[name]
        torch.testing.assert_close(score_matrix(q, TensorRows(k), sim, budget=2**15), sim(q, k.float()), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", sorted(SEPARATIONS))
def test_weights_in_blocks_of_queries_equal_the_weights_of_the_whole(name):
    sep = make_separation(name)
    scores = torch.randn(37, 200, generator=torch.Generator().manual_seed(2)).abs_()
    budget = max(1, sep.row_workspace) * 200 * 4 * 3  # three queries at a time
    torch.testing.assert_close(weight_matrix(scores, sep, budget), sep.weights(scores.clone()))


@pytest.mark.parametrize("name", ["softmax", "sparsemax", "entmax15"])
def test_weighing_a_whole_matrix_holds_the_result_and_no_more_than_the_budget_beside_it(name):
    """The separate stage run apart called `weights` on the whole matrix: sparsemax held 4 and
    entmax 5 times its size beside it, whatever the budget."""
    sep = make_separation(name, beta=2.0)
    for queries, memories, budget in ((512, 3000, 2**20), (64, 50000, 2**22), (3, 4000, 2**17)):
        scores = torch.empty(queries, memories, device="meta")
        with Peak() as peak:
            weight_matrix(scores, sep, budget)
        result = queries * memories * 4
        assert peak.bytes <= result + budget + 16 * (queries + memories), (queries, memories, peak.bytes / result)


def test_scoring_a_whole_matrix_holds_the_result_and_no_more_than_the_budget_beside_it():
    """Jensen-Shannon's per-feature workspace: one element per feature and pair, planned like retrieval's chunks."""
    sim = SIMILARITIES["jensen_shannon"]
    q, k = _patterns(0, 200, 64), _patterns(1, 3000, 64)
    budget = 2**22
    with Peak() as peak:
        score_matrix(q, k, sim, budget=budget)
    rows = 2 * (200 + 3000) * 64 * 4 * 2  # the rows as distributions and their logarithms, and their copies
    assert peak.bytes <= 200 * 3000 * 4 + budget + rows, peak.bytes / budget


def test_a_row_whose_workspace_exceeds_the_budget_is_refused_with_the_fix():
    with pytest.raises(StageError, match=r"4 times their size.*\n.*raise `budget:`"):
        weight_matrix(torch.zeros(2, 10_000), make_separation("sparsemax"), budget=100_000)
    with pytest.raises(StageError, match="queries x memories matrix"):
        weight_matrix(torch.zeros(10), make_separation("softmax"))
