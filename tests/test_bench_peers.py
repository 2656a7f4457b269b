"""`amemctl bench --peers`: its plain references, its agreement check and its table."""

from __future__ import annotations

import torch
from click.testing import CliRunner

from amemctl import bench_peers as bp
from amemctl.cli import main


def test_one_pass_and_two_passes_are_the_formula():
    g = torch.Generator().manual_seed(0)
    keys, q = torch.rand(300, 7, generator=g), torch.rand(5, 7, generator=g)
    s = -torch.cdist(q, keys, p=1)
    for separation, expected in (("softmax", torch.softmax(3.0 * s, 1) @ keys), ("max", keys[s.argmax(1)])):
        for out, index in (bp.one_pass(q, keys, "manhattan", separation, 3.0), bp.two_pass(q, keys, "manhattan", separation, 3.0, chunk=64)):
            torch.testing.assert_close(out, expected)
            assert torch.equal(index, s.argmax(1))


def test_the_agreement_check_names_a_contender_that_disagrees():
    out, best = torch.zeros(4, 3), torch.tensor([0, 5, 2, 9])
    assert bp._agreement("max", 0.0, (out, best), {"amemctl": (out, best), "FAISS": best.clone()}, 1.0) == "identical indices"
    assert bp._agreement("max", 0.0, (out, best), {"FAISS": torch.tensor([0, 5, 3, 9])}, 1.0) == "FAISS: 3/4 indices equal"
    shifted = (out + 0.5, best)
    assert bp._agreement("softmax", 10.0, (out, best), {"amemctl": shifted}, 1.0).startswith("amemctl: outputs differ")


def test_peers_mode_writes_a_table_with_every_workload_checked(tmp_path):
    out = tmp_path / "BENCHMARKS.md"
    result = CliRunner().invoke(main, ["bench", "--peers", "--n", "700", "--q", "6", "--d", "8", "--repeats", "1", "-o", str(out)])
    assert result.exit_code == 0, result.output
    table = out.read_text()
    assert "amemctl beside its peers" in table and "two-GEMM floor (ms)" in table
    rows = [line for line in table.splitlines() if line.startswith("| nearest") or line.startswith("| softmax")]
    assert len(rows) == len(bp.WORKLOADS)
    assert all("identical indices" in row for row in rows), table


def test_peers_mode_measures_only_the_similarities_asked_for():
    result = CliRunner().invoke(main, ["bench", "--peers", "--similarity", "manhattan", "--n", "300", "--q", "4", "--d", "8", "--repeats", "1"])
    assert result.exit_code == 0, result.output
    rows = {line for line in result.output.splitlines() if line.startswith(("| nearest", "| softmax"))}
    assert len(rows) == 2 and all("manhattan" in row for row in rows), result.output  # max and softmax beta 1000
    refused = CliRunner().invoke(main, ["bench", "--peers", "--similarity", "hamming"])
    assert refused.exit_code == 2 and "none was asked for" in refused.output
