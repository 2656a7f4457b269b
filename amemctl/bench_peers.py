"""`amemctl bench --peers`: amemctl beside what a user would pick instead, on the CPU.

For each workload the same tensors go through amemctl's `recall`, the best plain PyTorch way
(the one-pass formula on the whole Q x N score matrix when it fits in memory; two chunked
passes otherwise; both are shown), FAISS's exact flat index where it applies (nearest
neighbour by dot, L2 and L1; for L1 softmax its pairwise L1 distances alone, a lower bound of
any FAISS-based softmax) and KeOps where it is installed and builds. Contenders run
interleaved, repeat after repeat, and each time is a median. Every contender's answer is
checked against the plain way: the same nearest-neighbour index for every query, and for
softmax the same best index and outputs within float32 rounding of beta * score.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import Tensor

from amemctl.bench import PLAIN_CHUNK, append_section, device_name, plain_retrieve, plain_scores
from amemctl.core import random
from amemctl.core.retrieval import recall
from amemctl.core.separation import Softmax, max_

#: The one-pass formula is timed when its Q x N score matrix is at most this large.
ONE_PASS_BYTES = 2**30

#: (separation, beta, similarity) rows of the peers table.
WORKLOADS = [
    ("max", 0.0, "euclidean"),
    ("max", 0.0, "manhattan"),
    ("max", 0.0, "dot"),
    ("softmax", 1000.0, "dot"),
    ("softmax", 1000.0, "cosine"),
    ("softmax", 1000.0, "euclidean"),
    ("softmax", 1000.0, "manhattan"),
    ("softmax", 1.0, "dot"),
]


@dataclass
class PeerRow:
    """One workload: every contender's median time (None: not applicable or not available)."""

    separation: str
    beta: float
    similarity: str
    n: int
    d: int
    q: int
    ours_s: float
    one_pass_s: float | None
    two_pass_s: float
    floor_s: float | None  #: the score product plus the projection product (softmax, GEMM similarities)
    faiss_s: float | None
    keops_s: float | None
    agreement: str  #: what the check against the plain way found
    notes: list[str] = field(default_factory=list)

    @property
    def rate(self) -> float:
        """Query x memory x dimension elements per second, amemctl's."""
        return self.q * self.n * self.d / self.ours_s

    @property
    def plain_s(self) -> float:
        """The best plain way's time."""
        return min(t for t in (self.one_pass_s, self.two_pass_s) if t is not None)


def interleaved(contenders: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Median seconds of each contender, run in turn within each repeat (after one warm-up each)."""
    for fn in contenders.values():
        fn()
    times: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(repeats):
        for name, fn in contenders.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def one_pass(q: Tensor, keys: Tensor, similarity: str, separation: str, beta: float) -> tuple[Tensor, Tensor]:
    """The plain formula on the whole score matrix: (output, best index)."""
    s = plain_scores(similarity, q, keys)
    best = s.argmax(1)
    if separation == "max":
        return keys[best], best
    return torch.softmax(beta * s, dim=1) @ keys, best


def two_pass(q: Tensor, keys: Tensor, similarity: str, separation: str, beta: float, chunk: int = PLAIN_CHUNK) -> tuple[Tensor, Tensor]:
    """The plain way in chunks: running best for max; two passes (max, then exp and sums) for softmax."""
    best = torch.full((q.shape[0],), -torch.inf)
    index = torch.zeros(q.shape[0], dtype=torch.long)
    for s in range(0, len(keys), chunk):
        value, at = plain_scores(similarity, q, keys[s : s + chunk]).max(1)
        better = value > best
        best, index = torch.where(better, value, best), torch.where(better, at + s, index)
    if separation == "max":
        return keys[index], index
    return plain_retrieve(q, keys, keys, similarity, beta), index


def _faiss(q: Tensor, keys: Tensor, similarity: str, separation: str) -> Callable[[], Tensor] | None:
    """FAISS's exact flat search (nearest neighbour) or its pairwise L1 distances (L1 softmax)."""
    try:
        import faiss
    except ImportError:
        return None
    faiss.omp_set_num_threads(torch.get_num_threads())
    xq, xb = q.numpy(), keys.numpy()
    if separation == "softmax":
        if similarity != "manhattan":
            return None
        return lambda: torch.from_numpy(faiss.pairwise_distances(xq, xb, faiss.METRIC_L1))
    metric = {"dot": faiss.METRIC_INNER_PRODUCT, "euclidean": faiss.METRIC_L2, "manhattan": faiss.METRIC_L1}.get(similarity)
    if metric is None:
        return None
    index = faiss.IndexFlat(xb.shape[1], metric)
    index.add(xb)
    return lambda: torch.from_numpy(index.search(xq, 1)[1][:, 0])


def _keops(q: Tensor, keys: Tensor, similarity: str, separation: str, beta: float) -> tuple[Callable[[], Tensor] | None, str]:
    """KeOps's lazy reduction where pykeops is installed and compiles; else (None, why)."""
    try:
        from pykeops.torch import LazyTensor
    except ImportError:
        return None, "KeOps not installed"
    x, y = LazyTensor(q[:, None, :].contiguous()), LazyTensor(keys[None, :, :].contiguous())
    if similarity == "dot":
        s = (x * y).sum()
    elif similarity == "euclidean":
        s = -((x - y) ** 2).sum().sqrt()
    elif similarity == "manhattan":
        s = -(x - y).abs().sum()
    else:
        return None, f"no KeOps formula for {similarity}"
    if separation == "max":
        fn = lambda: s.argmax(dim=1)[:, 0]  # noqa: E731
    else:
        fn = lambda: (beta * s).sumsoftmaxweight(LazyTensor(keys[None, :, :].contiguous()), dim=1)  # noqa: E731
    try:
        fn()
    except Exception as e:  # a missing compiler or CUDA toolkit: say so, time the rest
        return None, f"KeOps did not build ({type(e).__name__})"
    return fn, ""


def _agreement(separation: str, beta: float, plain: tuple[Tensor, Tensor], others: dict[str, Tensor | tuple[Tensor, Tensor]], scale: float) -> str:
    """'identical' when every contender has the plain way's indices (and outputs within rounding)."""
    out, best = plain
    worst = 0.0
    for name, got in others.items():
        index = got if isinstance(got, Tensor) else got[1]
        if not torch.equal(index.long(), best):
            return f"{name}: {int((index.long() == best).sum())}/{len(best)} indices equal"
        if not isinstance(got, Tensor):
            diff = float((got[0] - out).abs().max())
            worst = max(worst, diff)
            if separation == "softmax" and diff > 1e-4 + 2e-6 * beta * scale:
                return f"{name}: outputs differ by {diff:.1e}"
    return "identical indices" + (f", outputs to {worst:.0e}" if separation == "softmax" else "")


def measure(separation: str, beta: float, similarity: str, n: int, d: int, q: int, repeats: int, seed: int = 0) -> PeerRow:
    """Time every contender on one workload (float32, CPU) and check their answers."""
    g = torch.Generator().manual_seed(seed)
    keys = random.rand((n, d), g)
    queries = random.rand((q, d), g)
    sep = max_() if separation == "max" else Softmax(beta)

    def ours() -> tuple[Tensor, Tensor]:
        r = recall(queries, keys, similarity=similarity, separation=sep)
        return r.output, r.index

    contenders: dict[str, Callable[[], object]] = {"amemctl": ours}
    fits = q * n * 4 <= ONE_PASS_BYTES
    if fits:
        contenders["one-pass"] = lambda: one_pass(queries, keys, similarity, separation, beta)
    if separation == "max":
        contenders["two-pass"] = lambda: two_pass(queries, keys, similarity, separation, beta)
    else:  # timed alone: two_pass also finds the best index first, a third pass over the scores
        contenders["two-pass"] = lambda: plain_retrieve(queries, keys, keys, similarity, beta)
    if separation == "softmax" and similarity != "manhattan":
        contenders["floor"] = lambda: (queries @ keys.T) @ keys
    faiss_fn = _faiss(queries, keys, similarity, separation)
    if faiss_fn is not None:
        contenders["FAISS"] = faiss_fn
    keops_fn, keops_note = _keops(queries, keys, similarity, separation, beta)
    if keops_fn is not None:
        contenders["KeOps"] = keops_fn
    times = interleaved(contenders, repeats)

    plain = (one_pass if fits else two_pass)(queries, keys, similarity, separation, beta)
    answers: dict[str, Tensor | tuple[Tensor, Tensor]] = {"amemctl": ours(), "two-pass": two_pass(queries, keys, similarity, separation, beta)}
    if faiss_fn is not None and separation == "max":
        answers["FAISS"] = faiss_fn()
    if keops_fn is not None and separation == "max":
        answers["KeOps"] = keops_fn()
    scale = float(plain_scores(similarity, queries[:8], keys[:1000]).abs().max())
    return PeerRow(
        separation, beta, similarity, n, d, q, times["amemctl"], times.get("one-pass"), times["two-pass"], times.get("floor"),
        times.get("FAISS"), times.get("KeOps"), _agreement(separation, beta, plain, answers, scale), [keops_note] if keops_note else [],
    )


def _ms(t: float | None) -> str:
    if t is None:
        return "n/a"
    return f"{1e3 * t:,.1f}" if t < 0.1 else f"{1e3 * t:,.0f}"


def markdown(rows: list[PeerRow]) -> str:
    """The peers table: times in ms, the ratio to the best plain way, to the floor and to FAISS."""
    lines = [
        "| workload | similarity | N | amemctl (ms) | one-pass formula (ms) | two passes (ms) | two-GEMM floor (ms) | FAISS (ms) | KeOps (ms) "
        "| best plain / amemctl | amemctl / floor | FAISS / amemctl | amemctl rate (G elem/s) | answers against the plain way |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        workload = "nearest neighbour (max)" if r.separation == "max" else f"softmax beta={r.beta:g}"
        floor = f"{r.ours_s / r.floor_s:.2f}x" if r.floor_s else "n/a"
        peer = f"{r.faiss_s / r.ours_s:.2f}x" if r.faiss_s else "n/a"
        lines.append(
            f"| {workload} | {r.similarity} | {r.n:,} | {_ms(r.ours_s)} | {_ms(r.one_pass_s)} | {_ms(r.two_pass_s)} | {_ms(r.floor_s)} | {_ms(r.faiss_s)} "
            f"| {_ms(r.keops_s)} | {r.plain_s / r.ours_s:.2f}x | {floor} | {peer} | {r.rate / 1e9:.1f} | {r.agreement} |"
        )
    notes = sorted({note for r in rows for note in r.notes})
    return "\n".join(lines) + "\n" + ("".join(f"\n{note}." for note in notes) + "\n" if notes else "")


def header() -> str:
    """What was measured, and on what: the line above the table."""
    import os

    try:
        import faiss

        faiss_version = f"faiss-cpu {faiss.__version__}"
    except ImportError:
        faiss_version = "FAISS not installed"
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (
        f"{device_name(torch.device('cpu'))}; torch {torch.__version__}; {faiss_version}; "
        f"float32; load average {load:.1f} when the run began. Contenders interleaved, medians. "
        "FAISS: IndexFlat search (k = 1) for nearest neighbours; for L1 softmax its pairwise L1 distances alone."
    )


def write(rows: list[PeerRow], path, head: str, text: str = "") -> None:
    """Append a dated section with the peers table to `path` (BENCHMARKS.md), under the run's `header()`.

    The header is the one taken when the run began: taken again here, its load average would
    count the bench's own threads.
    """
    append_section(path, "CPU, amemctl beside its peers (`amemctl bench --peers`)", f"{head}\n\n{markdown(rows)}{text}")
