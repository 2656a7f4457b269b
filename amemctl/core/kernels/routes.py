"""Which retrievals take the one-pass fused Triton kernel: a choice table filled by measurement.

`recall` asks `find` whether a softmax, max or top-k retrieval goes to `amemctl.core.kernels.fused`
instead of the default route (chunked scores, the online softmax in torch, cuBLAS). A
retrieval qualifies when it runs where the kernel runs (CUDA, or the Triton interpreter),
with a built-in similarity the kernel computes, softmax with beta > 0, max (top-1) or top-k
(k up to `fused.MAX_K`),
negative distances, no score normalisation, and in-memory keys and values of one dtype on
the queries' device; it then takes the first `TABLE` entry that covers its device,
similarity, separation, dtype, key width, value width and sizes. Max and top-k read no values
in the kernel (`fused.nearest`, `fused.best_k`; the chosen rows are gathered after), so their
entries cover every value width. Max measurements compare best scores, since near-equal
scores may pick either row; top-k measurements compare outputs. A top-k entry covers k from 2 to the measured k.

`TABLE` holds only what a GPU measurement found faster: no GPU has run the kernel yet, so it
is empty and every retrieval takes the default route. `tools/gpu/kernels.py` measures the
kernel against the default route on the workloads the table needs and prints the entries
to paste here (`from_measurements`, `render`); docs/BENCHMARKS.md keeps the measurements.

What an entry may change. float32 memories are routed only at a float32-faithful precision
("ieee" or "tf32x3", about 1e-6 relative to the default route); "tf32" is never routed.
bfloat16 memories may take "bf16", the tensor-core route, which rounds the queries to
bfloat16 as the keys already are; `from_measurements` admits it only where the answer moved
by at most twice what storing the keys in bfloat16 moved it.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field

import torch
from torch import Tensor

from amemctl.core.kernels import fused, l1
from amemctl.core.rows import Rows, TensorRows
from amemctl.core.separation import Separation, Softmax, TopK
from amemctl.core.similarity import SIMILARITIES, Similarity

#: A fused run must beat the default route by this factor, at every measured size it covers.
MARGIN = 1.1

#: The float32-faithful precisions; "bf16" is admitted for bfloat16 memories only.
FAITHFUL = ("ieee", "tf32x3")

#: Relative error (of the largest output entry) a float32-faithful route may show.
FAITHFUL_ERROR = 1e-4


@dataclass(frozen=True)
class Route:
    """One table entry: where the fused kernel is faster, with the tile sizes that made it so.

    Widths are inclusive ranges; `memories` and `queries` are lower bounds (None: unbounded
    below), because both routes' work grows in proportion to N and Q past what was measured
    while a width changes the fused kernel's cost model (its value tiles).
    """

    device: str  #: a substring of the device's name (`device_kind`); measurements write the whole name
    similarity: str
    dtype: str  #: of the stored keys and values alike: "float32" or "bfloat16"
    key_width: tuple[int, int]
    value_width: tuple[int, int]
    blocks: fused.Blocks
    precision: str
    memories: int | None = None  #: fewest stored rows covered
    queries: int | None = None  #: fewest queries covered
    separation: str = "softmax"
    k: int = 1  #: top-k: the largest k covered (each k costs a pass over every tile of scores)
    measured: str = field(default="", compare=False)  #: the measurement behind it, in words

    def covers(self, kind: str, similarity: str, dtype: str, key_width: int, value_width: int, memories: int, queries: int, separation: str, k: int = 1) -> bool:
        return (
            self.device in kind
            and self.similarity == similarity
            and self.dtype == dtype
            and self.separation == separation
            and self.key_width[0] <= key_width <= self.key_width[1]
            and (self.separation != "softmax" or self.value_width[0] <= value_width <= self.value_width[1])
            and (self.separation != "topk" or 2 <= k <= self.k)
            and (self.memories is None or memories >= self.memories)
            and (self.queries is None or queries >= self.queries)
            and admissible(self.precision, dtype)
        )


#: The choice table. Empty until a GPU session measures the kernel (tools/gpu/kernels.py).
TABLE: tuple[Route, ...] = ()


def admissible(precision: str, dtype: str) -> bool:
    """Whether a route may use this precision for memories of this dtype (see the module docstring)."""
    return precision in FAITHFUL or (dtype == "bfloat16" and precision == "bf16")


def choose(kind: str, similarity: str, dtype: str, key_width: int, value_width: int, memories: int, queries: int, separation: str = "softmax", k: int = 1) -> Route | None:
    """The first `TABLE` entry covering this retrieval, or None (the default route)."""
    for route in TABLE:
        if route.covers(kind, similarity, dtype, key_width, value_width, memories, queries, separation, k):
            return route
    return None


def device_kind(device: torch.device) -> str:
    """What the table's `device` matches: the CUDA device's name, or the device type elsewhere ("cpu")."""
    if device.type == "cuda":
        return _cuda_name(device.index if device.index is not None else torch.cuda.current_device())
    return device.type


@functools.lru_cache(maxsize=None)
def _cuda_name(index: int) -> str:
    return torch.cuda.get_device_name(index)


def find(q: Tensor, key_rows: Rows, value_rows: Rows, sim: Similarity, sep: Separation, distance_form: str, normalize_scores: bool) -> Route | None:
    """The route for this retrieval (flat float32 queries q), or None for the default route."""
    if not TABLE or not l1.available(q) or q.dtype != torch.float32:
        return None
    separation = _separation(sep)
    if separation is None or distance_form != "negative" or normalize_scores:
        return None
    if SIMILARITIES.get(sim.name) is not sim or not fused.supported(sim.name):
        return None  # a plugin's similarity, or one the kernel lacks
    if not isinstance(key_rows, TensorRows) or not isinstance(value_rows, TensorRows):
        return None  # a store streamed from disk
    keys, values = key_rows.data, value_rows.data
    if keys.device != q.device or values.device != q.device or keys.dtype != values.dtype or keys.dtype not in (torch.float32, torch.bfloat16):
        return None
    dtype = str(keys.dtype).removeprefix("torch.")
    k = sep.k if isinstance(sep, TopK) else 1
    return choose(device_kind(q.device), sim.name, dtype, q.shape[1], value_rows.width, len(key_rows), q.shape[0], separation, k)


def _separation(sep: Separation) -> str | None:
    """The table's name for a separation the kernel computes: softmax (beta > 0), max (top-1) or topk, else None."""
    if type(sep) is Softmax and float(sep.beta) > 0:
        return "softmax"
    if type(sep) is TopK and sep.k == 1:  # one best row: any weighting gives it weight 1
        return "max"
    if type(sep) is TopK and sep.k <= fused.MAX_K:
        return "topk"
    return None


def recall(q: Tensor, key_rows: TensorRows, value_rows: TensorRows, sim: Similarity, sep: Separation, route: Route, budget: int) -> tuple[Tensor, Tensor, Tensor]:
    """(output Q x width, best index Q, its score Q) by the fused kernel, its partial states within `budget`.

    Fewer splits of the stored rows come first, then fewer queries at a time. (L1 also makes
    one dimension-major copy of the keys, the size of the keys themselves, not of scores.)
    Max and top-k read no values in the kernel: their states are a best score and row per
    query and split (top-k: k of them, and their merge), and the chosen rows of the values are
    gathered after (top-k: as many queries at a time as `budget` holds k of their rows).
    """
    keys, values = key_rows.flat(), value_rows.flat()
    n_q = q.shape[0]
    width = values.shape[1] if route.separation == "softmax" else 0
    k = min(sep.k, len(keys)) if route.separation == "topk" else 0

    def run(queries: Tensor, splits: int) -> tuple[Tensor, Tensor, Tensor]:
        if route.separation == "max":
            index, score = fused.nearest(queries, keys, sim.name, route.blocks, route.precision, splits)
            return values.index_select(0, index).to(q.dtype), index, score
        if route.separation == "topk":
            scores, chosen = fused.best_k(queries, keys, sim.name, sep.k, route.blocks, route.precision, splits)
            return _weighted(sep, scores, chosen, values, q.dtype, budget), chosen[:, 0], scores[:, 0]
        return fused.retrieve(queries, keys, values, sim.name, float(sep.beta), route.blocks, route.precision, splits)

    if n_q == 0:  # no queries: no partial states to fit the budget (the kernel launches nothing)
        return run(q, 1)
    per_query = fused.state_bytes(1, width, 1, k)
    splits = fused.default_splits(n_q, len(keys), max(width, 1), route.blocks, q.device)
    splits = max(1, min(splits, budget // (per_query * n_q)))
    fits = budget // (per_query * splits)
    piece = n_q if fits >= n_q else max(route.blocks.block_q, fits // route.blocks.block_q * route.blocks.block_q)
    parts = [run(q[start : start + piece], splits) for start in range(0, n_q, piece)]
    output, index, score = (torch.cat(part) for part in zip(*parts))
    return output, index, score


def _weighted(sep: TopK, scores: Tensor, chosen: Tensor, values: Tensor, dtype: torch.dtype, budget: int) -> Tensor:
    """Each query's chosen rows of the values, weighted as the separation says (Q x width)."""
    n_q, k = chosen.shape
    width = values.shape[1]
    output = torch.empty(n_q, width, device=values.device, dtype=dtype)
    piece = max(1, budget // max(1, k * width * torch.finfo(dtype).bits // 8))
    weights = sep._select_weights(scores).to(dtype)
    for start in range(0, n_q, piece):
        rows = chosen[start : start + piece]
        picked = values.index_select(0, rows.reshape(-1)).reshape(*rows.shape, width).to(dtype)
        output[start : start + piece] = torch.einsum("qk,qkw->qw", weights[start : start + piece], picked)
    return output


# ---------------------------------------------------------------------------------------
# from measurements to entries


@dataclass(frozen=True)
class Measurement:
    """One timing of the fused kernel beside the default route on the same tensors."""

    device: str
    similarity: str
    dtype: str
    n: int
    d: int
    width: int
    queries: int
    blocks: fused.Blocks
    precision: str
    fused_s: float  #: nan when the configuration failed
    default_s: float
    error: float  #: max |fused - default| / max |default|: of the outputs (softmax, top-k) or of the best scores (max)
    storage_error: float = 0.0  #: for bfloat16: the same of the default route, bf16 keys against their float32 originals
    separation: str = "softmax"
    k: int = 1  #: top-k's k

    @property
    def speedup(self) -> float:
        return self.default_s / self.fused_s

    @property
    def accurate(self) -> bool:
        if not admissible(self.precision, self.dtype) or not math.isfinite(self.error):
            return False
        if self.precision in FAITHFUL:
            return self.error <= FAITHFUL_ERROR
        return self.error <= max(FAITHFUL_ERROR, 2 * self.storage_error)


def from_measurements(measurements: list[Measurement], margin: float = MARGIN) -> list[Route]:
    """Table entries from measurements: per workload shape, the configuration that wins at the most sizes.

    A workload shape is (device, similarity, separation, dtype, key width, value width). A configuration
    (blocks, precision) qualifies from the smallest measured N at which it, and every larger
    measured N, beat the default route by `margin` with an accurate answer; among those the
    one covering the most sizes wins, then the one with the highest worst speed-up.
    """
    shapes: dict[tuple, list[Measurement]] = {}
    for m in measurements:
        shapes.setdefault((m.device, m.similarity, m.separation, m.k, m.dtype, m.d, m.width), []).append(m)
    routes = []
    for (device, similarity, separation, k, dtype, d, width), rows in shapes.items():
        sizes = sorted({(m.n, m.queries) for m in rows})
        best = None
        for config in {(m.blocks, m.precision) for m in rows}:
            timed = {(m.n, m.queries): m for m in rows if (m.blocks, m.precision) == config}
            covered = []
            for size in reversed(sizes):  # from the largest down, while it keeps winning
                m = timed.get(size)
                if m is None or not m.accurate or not m.speedup >= margin:
                    break
                covered.append(m)
            if covered:
                key = (len(covered), min(m.speedup for m in covered))
                if best is None or key > best[0]:
                    best = (key, config, covered)
        if best is None:
            continue
        _, (blocks, precision), covered = best
        smallest = covered[-1]
        said = ", ".join(f"N = {m.n:,}, Q = {m.queries:,}: {m.speedup:.2f}x" for m in reversed(covered))
        routes.append(
            Route(
                device=device, similarity=similarity, dtype=dtype, key_width=(d, d), value_width=(width, width),
                blocks=blocks, precision=precision, memories=smallest.n, queries=smallest.queries, separation=separation, k=k,
                measured=f"{device}: {said} faster than the default route",
            )
        )
    return sorted(routes, key=lambda r: (r.device, r.similarity, r.separation, r.k, r.dtype, r.key_width, r.value_width))


def render(routes: list[Route]) -> str:
    """Python source of `TABLE` holding these routes, to paste into this module."""
    if not routes:
        return "TABLE: tuple[Route, ...] = ()  # measured: the fused kernel won nowhere\n"
    lines = ["TABLE: tuple[Route, ...] = ("]
    for r in routes:
        b = r.blocks
        lines += [
            "    Route(",
            f"        {r.device!r}, {r.similarity!r}, {r.dtype!r}, key_width={r.key_width}, value_width={r.value_width},",
            f"        blocks=fused.Blocks({b.block_q}, {b.block_n}, {b.block_d}, {b.block_dv}, num_warps={b.num_warps}, num_stages={b.num_stages}),",
            f"        precision={r.precision!r}, memories={r.memories}, queries={r.queries}, separation={r.separation!r}, k={r.k},",
            f"        measured={r.measured!r},",
            "    ),",
        ]
    return "\n".join(lines + [")"]) + "\n"
