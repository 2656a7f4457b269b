"""`amemctl bench`: retrieval speed against the plain PyTorch way, measured side by side.

The plain way is what a careful user writes: two passes over chunks of the stored patterns
(pass 1: running maximum of the scores; pass 2: exp, normaliser and weighted sum), with the
similarity from torch (a matrix product for dot, cosine and squared L2; torch.cdist for L2
and L1). Both run in the same process on the same tensors; times are medians over repeats,
rates are query x pattern x dimension elements per second.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import Tensor

from amemctl.core import random
from amemctl.core.retrieval import recall
from amemctl.core.separation import Softmax

PLAIN_CHUNK = 65536


@dataclass
class Row:
    """One measurement: a workload, both times, and what they mean."""

    workload: str
    similarity: str
    dtype: str
    n: int
    d: int
    q: int
    ours_s: float
    plain_s: float
    peak_mib: float | None
    fused_s: float | None = None  #: the experimental one-pass Triton kernel, where it applies (GPU)

    @property
    def rate(self) -> float:
        return self.q * self.n * self.d / self.ours_s

    @property
    def speedup(self) -> float:
        return self.plain_s / self.ours_s


def plain_scores(similarity: str, q: Tensor, k: Tensor) -> Tensor:
    if similarity == "dot":
        return q @ k.T
    if similarity == "cosine":
        return torch.nn.functional.normalize(q, dim=1) @ torch.nn.functional.normalize(k, dim=1).T
    if similarity in ("euclidean", "manhattan"):
        if q.dtype in (torch.float16, torch.bfloat16):
            q, k = q.float(), k.float()  # cdist has no half-precision kernel, on the CPU or on CUDA ("cdist_cuda" not implemented for 'BFloat16')
        return -torch.cdist(q, k, p=2 if similarity == "euclidean" else 1)
    raise ValueError(similarity)


def plain_retrieve(q: Tensor, keys: Tensor, values: Tensor, similarity: str, beta: float) -> Tensor:
    """z = V^T softmax(beta * sim(K, q)) in two chunked passes, the way a careful user writes it."""
    m = torch.full((q.shape[0], 1), -torch.inf, device=q.device, dtype=torch.float32)
    for s in range(0, len(keys), PLAIN_CHUNK):
        m = torch.maximum(m, (beta * plain_scores(similarity, q, keys[s : s + PLAIN_CHUNK]).float()).amax(1, keepdim=True))
    total = torch.zeros_like(m)
    out = torch.zeros(q.shape[0], values.shape[1], device=q.device, dtype=torch.float32)
    for s in range(0, len(keys), PLAIN_CHUNK):
        p = torch.exp(beta * plain_scores(similarity, q, keys[s : s + PLAIN_CHUNK]).float() - m)
        total += p.sum(1, keepdim=True)
        out += p @ values[s : s + PLAIN_CHUNK].float()
    return out / total


def _time(fn: Callable[[], Tensor], device: torch.device, repeats: int) -> float:
    fn()  # warm up (kernels, autotuning, allocator)
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure(workload: str, similarity: str, dtype: torch.dtype, n: int, d: int, q: int, device: torch.device, repeats: int, beta: float = 1.0, seed: int = 0) -> Row:
    g = torch.Generator(device=device).manual_seed(seed)
    keys = random.rand((n, d), g, device=device, dtype=dtype)
    queries = random.rand((q, d), g, device=device, dtype=dtype)
    sep = Softmax(beta)
    ours = lambda: recall(queries, keys, similarity=similarity, separation=sep).output  # noqa: E731
    plain = lambda: plain_retrieve(queries, keys, keys, similarity, beta)  # noqa: E731
    peak = fused_s = None
    if device.type == "cuda":
        peak = peak_mib(ours, device)
        from amemctl.core.kernels import fused

        if fused.supported(similarity):  # at the precision a route would take (amemctl.core.kernels.routes)
            precision = "bf16" if dtype == torch.bfloat16 else "tf32x3"
            fused_s = _time(lambda: fused.retrieve(queries, keys, keys, similarity, beta, precision=precision)[0], device, repeats)
    return Row(workload, similarity, str(dtype).removeprefix("torch."), n, d, q, _time(ours, device, repeats), _time(plain, device, repeats), peak, fused_s)


def peak_mib(fn: Callable[[], Tensor], device: torch.device) -> float:
    """MiB that one call of `fn` holds on the GPU at its peak beyond what was allocated before it.

    Warmed up first: a first call also allocates what stays or goes with the first call alone (the
    L1 kernel's autotuning benchmarks each configuration with Triton's 256 MiB cache-flush
    buffer, cuBLAS its workspace), which is not the retrieval's memory.
    """
    fn()
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    fn()
    torch.cuda.synchronize(device)
    return (torch.cuda.max_memory_allocated(device) - base) / 2**20


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    import platform

    return f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def markdown(rows: list[Row], device: torch.device) -> str:
    lines = [
        f"Device: {device_name(device)}; torch {torch.__version__}. Softmax retrieval z = V^T softmax(beta sim(K, q)), values = keys.",
        "",
        "| workload | similarity | dtype | N | d | Q | amemctl (ms) | plain PyTorch (ms) | speed-up | amemctl rate (T elem/s) | peak extra memory (MiB) | one-pass Triton, experimental (ms) |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        peak = f"{r.peak_mib:.0f}" if r.peak_mib is not None else "n/a"
        fused_ms = f"{1e3 * r.fused_s:.1f}" if r.fused_s is not None else "n/a"
        lines.append(
            f"| {r.workload} | {r.similarity} | {r.dtype} | {r.n:,} | {r.d} | {r.q:,} | {1e3 * r.ours_s:.1f} | {1e3 * r.plain_s:.1f} | {r.speedup:.2f}x | {r.rate / 1e12:.3f} | {peak} | {fused_ms} |"
        )
    return "\n".join(lines) + "\n"


def write(rows: list[Row], device: torch.device, path: Path, extra: str = "") -> None:
    """Append a dated section with this run's tables to `path` (BENCHMARKS.md)."""
    append_section(path, device_name(device), markdown(rows, device) + (f"\n{extra}" if extra else ""))


def append_section(path: "str | Path", title: str, body: str) -> None:
    """Append `## <date time>: title` and body to `path`, starting the file's heading if it is new."""
    path = Path(path)
    stamp = time.strftime("%Y-%m-%d %H:%M")
    head = "" if path.exists() else "# Benchmarks\n\nWritten by `amemctl bench`; each section is one run, measured side by side.\n"
    with open(path, "a") as f:
        f.write(head + f"\n## {stamp}: {title}\n\n{body}")


@dataclass
class Streaming:
    """Retrieval from a store read chunk by chunk, against the same rows held in memory."""

    n: int
    d: int
    q: int
    chunk_mib: float
    in_memory_s: float
    streamed_s: float

    @property
    def fraction(self) -> float:
        return self.in_memory_s / self.streamed_s


def measure_streaming(n: int, d: int, q: int, device: torch.device, repeats: int, chunk_mib: float = 32.0, similarity: str = "dot") -> Streaming:
    """Time softmax retrieval over a temporary float16 store against the same keys on the device."""
    import tempfile

    from amemctl.store.memory import MemoryStore

    g = torch.Generator().manual_seed(0)
    keys = random.rand((n, d), g, dtype=torch.float16)
    queries = random.rand((q, d), g, device=device)
    with tempfile.TemporaryDirectory() as folder:
        store = MemoryStore.create(f"{folder}/bench.zarr", chunk_bytes=int(chunk_mib * 2**20), compression="none", checksum=False)
        for start in range(0, n, 1 << 20):
            store.append(patterns=keys[start : start + (1 << 20)], storage={"patterns": "float16"})
        reader = MemoryStore.open(f"{folder}/bench.zarr")
        resident = keys.to(device)
        sep = Softmax(1.0)
        in_memory = _time(lambda: recall(queries, resident, similarity=similarity, separation=sep).output, device, repeats)
        streamed = _time(lambda: recall(queries, reader.rows("patterns", device, prefetch=2), similarity=similarity, separation=sep).output, device, repeats)
    return Streaming(n, d, q, chunk_mib, in_memory, streamed)


def streaming_markdown(rows: list[Streaming]) -> str:
    lines = [
        "Streaming from a store (float16, uncompressed, prefetch 2) against the same keys in memory:",
        "",
        "| N | d | Q | chunk (MiB) | in memory (ms) | streamed (ms) | fraction of the in-memory rate |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(f"| {r.n:,} | {r.d} | {r.q:,} | {r.chunk_mib:g} | {1e3 * r.in_memory_s:.1f} | {1e3 * r.streamed_s:.1f} | {r.fraction:.2f} |")
    return "\n".join(lines) + "\n"
