# ruff: noqa: B023  (each lambda is timed at once, inside its loop)
"""Device-call measurements behind the routing table of issue 13 and the SimCLR speed of 14.

Run alone on the GPU (nothing else training):

    python3 tools/gpu/kernels.py [--parts simclr,l1,fused] [--budget SECONDS] [--json PATH]
    python3 tools/gpu/kernels.py --from-json PATH     # anywhere: the table entries again

- l1: the Triton L1 kernel's rate and autotuned block sizes.
- fused: the one-pass fused kernel against the default route, each through `recall` with a
  one-entry table patched in, on every workload the table needs: dot, euclidean, manhattan
  and cosine; float32 (precision tf32x3) and bfloat16 (precision bf16, the tensor-core route;
  tf32x3 for manhattan, whose one product is the projection); N = 1e5 and 1e6,
  d = 512, Q = 1,024 with values = keys and with 3,072-wide values (the semantic memory's
  pixels); the CIFAR-10 pixel workload (10,000 x 3,072 keys = values, 10,000 queries,
  beta 1,000); max (the kernel without values) on the CIFAR-10 pixels, which is also
  `evaluate`'s nearest-memory rule (squared euclidean), and at N = 1e6; top-16 at N = 1e6;
  several block sizes each. Prints every timing, a summary of the best
  configuration per workload, and the `routes.TABLE` entries to paste into
  amemctl/core/kernels/routes.py (`routes.from_measurements`). --json keeps the measurements
  so that the entries can be derived again without a GPU.
- simclr: SimCLR throughput (ResNet18 and the small encoder at 32x32, batch 512) with the
  augmentations' share of an epoch.

Workloads run in priority order; when --budget seconds are spent, the rest are skipped and
what was measured is still summarised.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import statistics
import sys
import time

import torch

from amemctl.core.kernels import l1, routes
from amemctl.core.kernels.fused import Blocks
from amemctl.core.retrieval import recall
from amemctl.core.separation import Softmax, TopK, max_

#: (workload, N, key width d, value width, Q, separation), most needed first
WORKLOADS = [
    ("CIFAR-10 pixels", 10_000, 3072, 3072, 10_000, Softmax(1000.0)),
    ("CIFAR-10 pixels, nearest", 10_000, 3072, 3072, 10_000, max_()),
    ("random, values = keys", 100_000, 512, 512, 1024, Softmax(1.0)),
    ("semantic: 3,072-wide values", 100_000, 512, 3072, 1024, Softmax(1.0)),
    ("random, values = keys", 1_000_000, 512, 512, 1024, Softmax(1.0)),
    ("semantic: 3,072-wide values", 1_000_000, 512, 3072, 1024, Softmax(1.0)),
    ("random, nearest", 1_000_000, 512, 512, 1024, max_()),
    ("random, top-16", 1_000_000, 512, 512, 1024, TopK(k=16)),
]
SIMILARITIES = ("dot", "euclidean", "manhattan", "cosine")
#: max also measures squared euclidean: evaluate's nearest-memory rule for every retrieval
MAX_SIMILARITIES = (*SIMILARITIES, "squared_euclidean")
#: tile sizes tried for the tl.dot similarities: (block_q, block_n, block_d, block_dv, warps, stages)
DOT_BLOCKS = [Blocks(*b[:4], num_warps=b[4], num_stages=b[5]) for b in [
    (64, 64, 64, 128, 4, 3), (64, 64, 32, 256, 8, 3), (128, 64, 64, 128, 8, 3),
    (64, 128, 64, 128, 8, 3), (128, 128, 32, 128, 8, 2), (32, 64, 64, 512, 8, 2),
]]
#: and for L1 (no block_d): few value tiles, since each recomputes the dominant L1 score
L1_BLOCKS = [Blocks(*b[:4], num_warps=b[4], num_stages=b[5]) for b in [
    (64, 64, 32, 128, 4, 2), (64, 128, 32, 128, 8, 2), (128, 64, 32, 128, 8, 2), (32, 64, 32, 512, 8, 1),
]]
#: a configuration whose first timed run is this much slower than the default route is not repeated
HOPELESS = 3.0
#: where the fused measurements run ("cpu" under TRITON_INTERPRET=1 checks this script itself, on tiny WORKLOADS)
DEVICE = "cuda"


def sync() -> None:
    if DEVICE == "cuda":
        torch.cuda.synchronize()


def device_name() -> str:
    return torch.cuda.get_device_name() if DEVICE == "cuda" else "cpu"


def timed(fn, repeats: int = 5) -> float:
    fn()
    return statistics.median(once(fn) for _ in range(repeats))


def once(fn) -> float:
    sync()
    t = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - t


def l1_kernel() -> None:
    print("\n## Triton L1 distances (autotuned), Q = 1,024, d = 512\n")
    print("| dtype | N | ms | T elem/s | best config | cdist ms |")
    print("|---|---:|---:|---:|---|---:|")
    for dtype in (torch.float32, torch.bfloat16):
        for n in (65_536, 262_144):
            q = torch.rand(1024, 512, device="cuda", dtype=dtype)
            k = torch.rand(n, 512, device="cuda", dtype=dtype)
            s = timed(lambda: l1.l1_distances(q, k))
            c = timed(lambda: torch.cdist(q.float(), k.float(), p=1), 3)
            print(f"| {str(dtype)[6:]} | {n:,} | {1e3 * s:.2f} | {1024 * n * 512 / s / 1e12:.2f} | {l1._l1_tuned.best_config} | {1e3 * c:.1f} |")


@contextlib.contextmanager
def only_route(route: routes.Route | None):
    """routes.TABLE holding this one entry (or none: the default route) for the duration."""
    saved = routes.TABLE
    routes.TABLE = () if route is None else (route,)
    try:
        yield
    finally:
        routes.TABLE = saved


def relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    return float((got.float() - want.float()).abs().max() / want.float().abs().max().clamp_min(1e-30))


def fused_routes(budget_s: float, json_path: str | None) -> list[routes.Measurement]:
    print("\n## The one-pass fused kernel against the default route (retrieval's `recall`, a one-entry table patched in)\n")
    print("| workload | similarity | separation | dtype | N | d | w | Q | blocks (q, n, d, dv, warps, stages) | precision | fused ms | default ms | speed-up | error | bf16 storage error |")
    print("|---|---|---|---|---:|---:|---:|---:|---|---|---:|---:|---:|---:|---:|")
    device = device_name()
    deadline = time.monotonic() + budget_s
    measurements: list[routes.Measurement] = []
    for label, n, d, width, n_q, sep in WORKLOADS:
        g = torch.Generator(device=DEVICE).manual_seed(0)
        keys32 = torch.rand(n, d, device=DEVICE, generator=g)
        values32 = keys32 if width == d else torch.rand(n, width, device=DEVICE, generator=g)
        queries = torch.rand(n_q, d, device=DEVICE, generator=g)
        separation = routes._separation(sep)
        k = sep.k if separation == "topk" else 1
        # max: the best score, since near-equal scores may pick either row; top-k: the output, which
        # weighs all k rows (a swap at the k-th place shows, and keeps the route off: the safe side)
        answer = (lambda got: got.score) if separation == "max" else (lambda got: got.output)
        for dtype in (torch.float32, torch.bfloat16):
            keys = keys32.to(dtype)
            values = keys if width == d else values32.to(dtype)
            for sim in SIMILARITIES if separation == "softmax" else MAX_SIMILARITIES:
                if time.monotonic() > deadline:
                    print(f"\n<!-- time budget of {budget_s:.0f} s spent: {label} N = {n:,} {sim} and later workloads not measured -->")
                    return _summarise(measurements, json_path)
                with only_route(None):
                    run = lambda: answer(recall(queries, keys, values, similarity=sim, separation=sep))
                    default_s = timed(run, 3)
                    want = run()
                    storage = relative_error(want, answer(recall(queries, keys32, values32, similarity=sim, separation=sep))) if dtype != torch.float32 else 0.0
                # bf16 keys: the tensor-core route; L1's only product is the projection, a small share of its cost
                precision = "bf16" if dtype == torch.bfloat16 and sim != "manhattan" else "tf32x3"
                for blocks in (L1_BLOCKS if sim == "manhattan" else DOT_BLOCKS):
                    kind = str(dtype).removeprefix("torch.")
                    route = routes.Route(device, sim, kind, (d, d), (width, width), blocks, precision, separation=separation, k=k)
                    with only_route(route):
                        run = lambda: answer(recall(queries, keys, values, similarity=sim, separation=sep))
                        try:
                            got = run()  # compiles
                            first = once(run)
                            fused_s = first if first > HOPELESS * default_s else timed(run, 3)
                            error = relative_error(got, want)
                        except Exception as exc:  # a configuration that does not compile or fit: recorded, not fatal
                            print(f"<!-- {label} {sim} {kind} {blocks}: {type(exc).__name__}: {str(exc)[:200]} -->")
                            fused_s, error = math.nan, math.nan
                    m = routes.Measurement(device, sim, kind, n, d, width, n_q, blocks, precision, fused_s, default_s, error, storage, separation, k)
                    measurements.append(m)
                    b = blocks
                    print(
                        f"| {label} | {sim} | {separation} | {kind} | {n:,} | {d} | {width} | {n_q:,} | {b.block_q}, {b.block_n}, {b.block_d}, {b.block_dv}, {b.num_warps}, {b.num_stages} | {precision} "
                        f"| {1e3 * fused_s:.1f} | {1e3 * default_s:.1f} | {m.speedup:.2f}x | {error:.1e} | {storage:.1e} |",
                        flush=True,
                    )
            keys = values = None
            free()
        keys32 = values32 = queries = None
        free()
    return _summarise(measurements, json_path)


def free() -> None:
    if DEVICE == "cuda":
        torch.cuda.empty_cache()


def _summarise(measurements: list[routes.Measurement], json_path: str | None) -> list[routes.Measurement]:
    if json_path:
        with open(json_path, "w") as f:
            json.dump([{**dataclasses.asdict(m), "blocks": dataclasses.asdict(m.blocks)} for m in measurements], f, indent=1)
        print(f"\n<!-- measurements written to {json_path} -->")
    summary(measurements)
    return measurements


def load(path: str) -> list[routes.Measurement]:
    """Measurements written by --json."""
    with open(path) as f:
        return [routes.Measurement(**{**row, "blocks": Blocks(**row["blocks"])}) for row in json.load(f)]


def summary(measurements: list[routes.Measurement]) -> None:
    """The fastest accurate configuration per workload, then the table entries."""
    print("\n### Best configuration per workload\n")
    print("| similarity | separation | dtype | N | d | w | Q | default ms | best fused ms | blocks | speed-up | error | accurate |")
    print("|---|---|---|---:|---:|---:|---:|---:|---:|---|---:|---:|---|")
    shapes: dict[tuple, list[routes.Measurement]] = {}
    for m in measurements:
        shapes.setdefault((m.similarity, m.separation if m.separation != "topk" else f"top-{m.k}", m.dtype, m.n, m.d, m.width, m.queries), []).append(m)
    for (sim, separation, dtype, n, d, width, n_q), rows in shapes.items():
        timed_rows = [m for m in rows if math.isfinite(m.fused_s)]
        if not timed_rows:
            print(f"| {sim} | {separation} | {dtype} | {n:,} | {d} | {width} | {n_q:,} | {1e3 * rows[0].default_s:.1f} | failed | | | | |")
            continue
        best = min(timed_rows, key=lambda m: (not m.accurate, m.fused_s))
        b = best.blocks
        print(
            f"| {sim} | {separation} | {dtype} | {n:,} | {d} | {width} | {n_q:,} | {1e3 * best.default_s:.1f} | {1e3 * best.fused_s:.1f} "
            f"| {b.block_q}, {b.block_n}, {b.block_d}, {b.block_dv}, {b.num_warps}, {b.num_stages} | {best.speedup:.2f}x | {best.error:.1e} | {'yes' if best.accurate else 'no'} |"
        )
    print(f"\n### routes.TABLE from these measurements (margin {routes.MARGIN}x; paste into amemctl/core/kernels/routes.py)\n")
    print("```python")
    print(routes.render(routes.from_measurements(measurements)), end="")
    print("```")


def simclr_speed() -> None:
    from amemctl.training.augment import views
    from amemctl.training.simclr import SimCLRConfig, train_simclr, view_spec

    print("\n## SimCLR throughput alone, 10,000 random 32x32 images, batch 512, bf16 + channels_last\n")
    print("| encoder | s per epoch (median of epochs 2-4) | images/s | views alone, s per epoch |")
    print("|---|---:|---:|---:|")
    images = torch.rand(10_000, 3, 32, 32)
    for arch in ("resnet18", "small"):
        config = SimCLRConfig(arch=arch, epochs=4, batch_size=512)
        import tempfile

        with tempfile.TemporaryDirectory() as folder:
            trained = train_simclr(images, config, folder, torch.device("cuda"))
        each = statistics.median(trained.epoch_seconds[1:])
        spec = view_spec(32, config)
        src = images.cuda()
        g = torch.Generator().manual_seed(0)

        def all_views():
            for b in range(0, 10_000, 512):
                views(src[b : b + 512], spec, g)
                views(src[b : b + 512], spec, g)

        v = timed(all_views, 3)
        print(f"| {arch} | {each:.2f} | {20_000 / each:,.0f} (two views of 10,000) | {v:.2f} |")


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", default="simclr,l1,fused", help="comma-separated: simclr, l1, fused")
    parser.add_argument("--budget", type=float, default=420.0, help="seconds for the fused measurements")
    parser.add_argument("--json", default=None, help="write the fused measurements here")
    parser.add_argument("--from-json", default=None, help="no GPU: summarise measurements written by --json")
    args = parser.parse_args(argv)
    if args.from_json:
        summary(load(args.from_json))
        return
    print(f"device: {torch.cuda.get_device_name()}; torch {torch.__version__}")
    parts = {"simclr": simclr_speed, "l1": l1_kernel, "fused": lambda: fused_routes(args.budget, args.json)}
    for name in args.parts.split(","):
        try:
            parts[name]()
        except Exception as exc:  # one part failing must not lose the others' numbers
            print(f"\n{name} failed: {type(exc).__name__}: {exc}")


if __name__ == "__main__":
    main(sys.argv[1:])
