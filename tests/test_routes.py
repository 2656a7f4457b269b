"""The fused kernel's choice table: entries derived from measurements, rendered, matched (no GPU, no timing)."""

from __future__ import annotations

import importlib.util
import math

import pytest

from amemctl.core.kernels import fused, routes
from amemctl.core.kernels.fused import Blocks
from amemctl.core.kernels.routes import Measurement, Route

H100 = "NVIDIA H100 80GB HBM3"
A, B = Blocks(64, 64, 64, 128, num_warps=4, num_stages=3), Blocks(128, 64, 32, 256, num_warps=8, num_stages=2)


def measured(sim="dot", dtype="float32", n=100_000, width=512, blocks=A, precision="tf32x3", speedup=2.0, error=1e-6, storage=0.0, d=512, q=1024, separation="softmax", k=1):
    return Measurement(H100, sim, dtype, n, d, width, q, blocks, precision, 0.01 / speedup, 0.01, error, storage, separation, k)


def test_the_configuration_winning_at_the_most_sizes_becomes_the_entry():
    rows = [
        measured(n=100_000, blocks=A, speedup=1.5),
        measured(n=1_000_000, blocks=A, speedup=2.0),
        measured(n=100_000, blocks=B, speedup=1.05),  # under the margin at 1e5: B covers 1e6 only, though faster there
        measured(n=1_000_000, blocks=B, speedup=3.0),
    ]
    (route,) = routes.from_measurements(rows)
    assert (route.device, route.similarity, route.dtype, route.key_width, route.value_width) == (H100, "dot", "float32", (512, 512), (512, 512))
    assert (route.blocks, route.precision, route.memories, route.queries) == (A, "tf32x3", 100_000, 1024)
    assert "1.50x" in route.measured and "2.00x" in route.measured


def test_a_configuration_covers_sizes_from_the_largest_down_while_it_wins():
    rows = [measured(n=100_000, speedup=0.8), measured(n=1_000_000, speedup=1.3)]
    (route,) = routes.from_measurements(rows)
    assert route.memories == 1_000_000
    # losing at the largest size: nothing, even where it won below
    assert routes.from_measurements([measured(n=100_000, speedup=2.0), measured(n=1_000_000, speedup=1.0)]) == []


@pytest.mark.parametrize(
    "row",
    [
        measured(speedup=1.05),  # under the margin
        measured(speedup=math.nan),  # failed to compile or run
        measured(error=1e-3),  # float32 route off by more than float32 rounding
        measured(precision="tf32", error=1e-6),  # tf32 is never routed
        measured(precision="bf16", error=1e-6),  # bf16 products are not for float32 memories
        measured(dtype="bfloat16", precision="bf16", error=5e-2, storage=1e-2),  # moved more than twice what bf16 storage moved it
    ],
)
def test_measurements_that_cannot_route(row):
    assert routes.from_measurements([row]) == []


def test_the_tensor_core_route_for_bfloat16_is_admitted_within_its_storage_error():
    (route,) = routes.from_measurements([measured(sim="cosine", dtype="bfloat16", precision="bf16", error=1.5e-2, storage=1e-2)])
    assert (route.dtype, route.precision) == ("bfloat16", "bf16")


def test_rendered_entries_are_the_table_they_describe(monkeypatch):
    rows = [
        measured(),
        measured(sim="manhattan", width=3072, blocks=B, speedup=1.4),
        measured(sim="euclidean", dtype="bfloat16", precision="bf16", d=3072, width=3072, n=10_000, q=10_000, error=1e-3, storage=1e-3),
        measured(sim="squared_euclidean", d=3072, width=3072, n=10_000, q=10_000, separation="max", blocks=B),
        measured(sim="squared_euclidean", d=3072, width=3072, n=10_000, q=10_000, separation="softmax", speedup=0.9),  # loses: softmax stays off
        measured(sim="cosine", separation="topk", k=16, n=1_000_000),
        measured(sim="cosine", separation="topk", k=16, n=1_000_000, blocks=B, speedup=1.05),  # under the margin
    ]
    made = routes.from_measurements(rows)
    assert len(made) == 5
    space = {"Route": Route, "fused": fused}
    exec(routes.render(made), space)
    assert list(space["TABLE"]) == made
    assert [r.measured for r in space["TABLE"]] == [r.measured for r in made]

    monkeypatch.setattr(routes, "TABLE", space["TABLE"])
    assert routes.choose(H100, "manhattan", "float32", 512, 3072, 100_000, 1024).blocks == B
    assert routes.choose(H100, "manhattan", "float32", 512, 3072, 5_000_000, 50_000) is not None  # more memories and queries: covered
    assert routes.choose(H100, "manhattan", "float32", 512, 3072, 99_999, 1024) is None  # fewer than measured
    assert routes.choose(H100, "manhattan", "float32", 512, 3072, 100_000, 1000) is None
    assert routes.choose(H100, "manhattan", "float32", 512, 3071, 100_000, 1024) is None  # another width
    assert routes.choose(H100, "manhattan", "bfloat16", 512, 3072, 100_000, 1024) is None
    assert routes.choose("NVIDIA H200", "manhattan", "float32", 512, 3072, 100_000, 1024) is None  # another device
    assert routes.choose(H100, "euclidean", "bfloat16", 3072, 3072, 10_000, 10_000).precision == "bf16"
    assert routes.choose(H100, "squared_euclidean", "float32", 3072, 3072, 10_000, 10_000, "max").blocks == B
    assert routes.choose(H100, "squared_euclidean", "float32", 3072, 7, 10_000, 10_000, "max") is not None  # max reads no values: any width
    assert routes.choose(H100, "squared_euclidean", "float32", 3072, 3072, 10_000, 10_000) is None  # softmax was not faster
    assert routes.choose(H100, "dot", "float32", 512, 512, 100_000, 1024, "max") is None  # a softmax entry is not a max entry
    assert routes.choose(H100, "cosine", "float32", 512, 99, 1_000_000, 1024, "topk", 16).blocks == A  # any value width
    assert routes.choose(H100, "cosine", "float32", 512, 512, 1_000_000, 1024, "topk", 2) is not None  # fewer passes than measured
    assert routes.choose(H100, "cosine", "float32", 512, 512, 1_000_000, 1024, "topk", 17) is None  # more than measured
    assert routes.choose(H100, "cosine", "float32", 512, 512, 1_000_000, 1024, "max") is None
    assert routes.render([]).startswith("TABLE: tuple[Route, ...] = ()")


def test_measurements_survive_the_json_file_the_gpu_session_writes(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("gpu_kernels", routes.__file__.replace("amemctl/core/kernels/routes.py", "tools/gpu/kernels.py"))
    kernels = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(kernels)
    rows = [measured(), measured(sim="cosine", dtype="bfloat16", precision="bf16", blocks=B, error=2e-3, storage=4e-3)]
    path = tmp_path / "kernels.json"
    kernels._summarise(rows, str(path))
    assert kernels.load(str(path)) == rows
    kernels.main(["--from-json", str(path)])
    printed = capsys.readouterr().out
    assert printed.count("    Route(") == 2 * 2 and "TABLE: tuple[Route, ...] = (" in printed  # summarised twice: written, then read
