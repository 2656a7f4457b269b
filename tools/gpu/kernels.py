# ruff: noqa: B023  (each lambda is timed at once, inside its loop)
"""Device-call measurements behind the routing choices of issue 13 and the SimCLR speed of 14.

Run alone on the GPU (nothing else training): the Triton L1 kernel's rate and autotuned
block sizes, the one-pass fused kernel's block sizes against the default route, and SimCLR
throughput (ResNet18 and the small encoder at 32x32, batch 512) with the augmentations'
share of an epoch. Prints markdown tables.
"""

from __future__ import annotations

import statistics
import time

import torch

from amemctl.core.kernels import fused, l1
from amemctl.core.retrieval import recall
from amemctl.core.separation import Softmax


def timed(fn, repeats: int = 5) -> float:
    fn()
    times = []
    for _ in range(repeats):
        torch.cuda.synchronize()
        t = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


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


def fused_kernel() -> None:
    print("\n## One-pass fused kernel against the default route, N = 1e6, d = 512, Q = 1,024, values = keys, beta 1\n")
    print("| similarity | dtype | block_q x block_n | fused ms | default route ms | ratio |")
    print("|---|---|---|---:|---:|---:|")
    for dtype in (torch.float32, torch.bfloat16):
        k = torch.rand(1_000_000, 512, device="cuda", dtype=dtype)
        q = torch.rand(1024, 512, device="cuda", dtype=dtype)
        for sim, ours_sim in (("dot", "dot"), ("manhattan", "manhattan"), ("squared_euclidean", "squared_euclidean")):
            try:
                route = timed(lambda: recall(q, k, similarity=ours_sim, separation=Softmax(1.0)).output, 3)
            except Exception as exc:  # a similarity name the route lacks
                route = float("nan")
                print(f"<!-- route {ours_sim}: {exc} -->")
            for bq, bn in ((16, 32), (32, 32), (32, 64), (64, 32), (64, 64)):
                try:
                    f = timed(lambda: fused.softmax_retrieve(q, k, k, sim, 1.0, block_q=bq, block_n=bn), 3)
                except Exception as exc:
                    print(f"| {sim} | {str(dtype)[6:]} | {bq} x {bn} | failed: {type(exc).__name__} | | |")
                    continue
                print(f"| {sim} | {str(dtype)[6:]} | {bq} x {bn} | {1e3 * f:.1f} | {1e3 * route:.1f} | {route / f:.2f}x |")
        k = q = None
        torch.cuda.empty_cache()


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


if __name__ == "__main__":
    print(f"device: {torch.cuda.get_device_name()}; torch {torch.__version__}")
    for part in (simclr_speed, l1_kernel, fused_kernel):
        try:
            part()
        except Exception as exc:  # one part failing must not lose the others' numbers
            print(f"\n{part.__name__} failed: {type(exc).__name__}: {exc}")
