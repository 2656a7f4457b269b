"""Compile the Triton kernels for an H100 (sm_90) on a machine without a GPU.

    python3 tools/gpu/compile_check.py          # the variants the CUDA tests and `amemctl bench` launch (~1 min)
    python3 tools/gpu/compile_check.py --all    # and every configuration tools/gpu/kernels.py measures (~8 min)

The interpreter (TRITON_INTERPRET=1, as the tests run the kernels on a CPU) never compiles:
what only the compiler refuses (a tl.dot shape or precision, a loop-carried type, shared
memory past the H100's 227 KiB) would first show on a lent GPU, in scarce minutes. Here the
installed Triton compiles each variant down to a cubin with the ptxas its wheel bundles, as it
would on the GPU, without a CUDA driver. Exits 1 if any variant fails or does not fit.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from amemctl.core.kernels import fused, l1

H100 = GPUTarget("cuda", 90, 32)
#: the H100's shared memory per block (opt-in maximum), bytes
SHARED = 232_448
ARGS = (
    "Q K QT KT QN2 KN2 V M L ACC BEST ARG TOP TOPI n_q d dv n_vt scale per_split n_k stride_q stride_k stride_qt stride_kt stride_v "
    "stride_ms stride_accs stride_accq"
).split()
DTYPES = {"float32": "fp32", "bfloat16": "bf16"}


def fused_variant(sim: str, dtype: str, precision: str, blocks: fused.Blocks, width: int, topk: int | None) -> dict:
    """The signature and constants `fused._launch` gives: softmax with `width`-wide values, or max (topk 0) or top-k without."""
    project = topk is None
    topk = topk or 0
    code = fused.SIMILARITIES[sim]
    keys = DTYPES[dtype]
    queries = "bf16" if precision == "bf16" and code != 0 else "fp32"  # _launch rounds queries for bf16 products
    signature = dict.fromkeys(ARGS, "i32")
    signature.update(
        Q=f"*{queries}", QT=f"*{queries}", K=f"*{keys}", KT=f"*{keys}", V=f"*{keys}", QN2="*fp32", KN2="*fp32",
        M="*fp32", L="*fp32", ACC="*fp32", BEST="*fp32", ARG="*i32", TOP="*fp32", TOPI="*i32", scale="fp32",
    )
    constants = dict(
        SIM=code, BLOCK_Q=blocks.block_q, BLOCK_N=blocks.block_n, BLOCK_D=blocks.block_d,
        BLOCK_DV=blocks.value_tile(width) if project else 16, PRECISION=precision, EMULATE_BF16=False,
        PROJECT=project, TOPK=topk, TOPK_SLOTS=1 << max(0, topk - 1).bit_length(),
    )
    return dict(fn=fused._fused_kernel, signature=signature, constants=constants, num_warps=blocks.num_warps, num_stages=blocks.num_stages)


def l1_variant(dtype: str, config: triton.Config) -> dict:
    signature = dict.fromkeys(("n_q", "n_k", "d", "stride_qt", "stride_kt", "stride_s", "size_class"), "i32")
    signature.update(QT=f"*{DTYPES[dtype]}", KT=f"*{DTYPES[dtype]}", S="*fp32")
    return dict(fn=l1._l1_kernel, signature=signature, constants=dict(config.kwargs), num_warps=config.num_warps, num_stages=config.num_stages)


def default_variants() -> list[tuple[str, dict]]:
    """The L1 kernel's autotuning configurations; the fused kernel as `amemctl bench` and the CUDA tests in tests/test_kernels.py launch it."""
    out = [(f"l1 {dtype} {c}", l1_variant(dtype, c)) for dtype in DTYPES for c in l1.CONFIGS]

    def add(sim, dtype, precision, blocks, width, topk=None):
        out.append((f"fused {sim} {dtype} {precision} {blocks} width {width} top-k {topk}", fused_variant(sim, dtype, precision, blocks, width, topk)))

    B = fused.Blocks
    for sim in fused.SIMILARITIES:
        for width in (512, 3072):  # bench: values = keys, d = 512 and the CIFAR-10 pixels
            add(sim, "float32", "tf32x3", B(), width)
            add(sim, "bfloat16", "bf16", B(), width)
        add(sim, "float32", "tf32", B(), 512)
        add(sim, "float32", "ieee", B(), 300)
        for blocks in (B(), B(64, 64, 64, 128, num_warps=8)):  # wide values at every precision
            for dtype, precision in (("float32", "ieee"), ("float32", "tf32x3"), ("bfloat16", "bf16")):
                add(sim, dtype, precision, blocks, 3072)
        add(sim, "float32", "tf32x3", B(64, 64, 32, 128), 3072)  # a route patched in
        for topk in (0, 8):  # max and top-8 routes
            add(sim, "float32", "tf32x3", B(64, 64, 32), 1, topk)
            add(sim, "bfloat16", "bf16" if sim != "manhattan" else "tf32x3", B(64, 64, 32), 1, topk)
    return out


def measured_variants() -> list[tuple[str, dict]]:
    """Every configuration tools/gpu/kernels.py times (its workloads, similarities, dtypes and tiles)."""
    sys.path.insert(0, str(Path(__file__).parent))
    import kernels

    out = []
    for _, _, _, width, _, sep in kernels.WORKLOADS:
        separation = type(sep).__name__
        topk = None if separation == "Softmax" else getattr(sep, "k", 0) if separation == "TopK" else 0
        for dtype in DTYPES:
            for sim in kernels.SIMILARITIES if topk is None else kernels.MAX_SIMILARITIES:
                precision = "bf16" if dtype == "bfloat16" and sim != "manhattan" else "tf32x3"
                for blocks in kernels.L1_BLOCKS if sim == "manhattan" else kernels.DOT_BLOCKS:
                    out.append((f"fused {sim} {dtype} {precision} {blocks} width {width} top-k {topk}", fused_variant(sim, dtype, precision, blocks, width, topk)))
    return out


def compile_variant(v: dict) -> int:
    """Compile one variant for the H100 down to a cubin; the shared memory it takes, in bytes (raises what the compiler raises)."""
    signature = {**v["signature"], **dict.fromkeys(v["constants"], "constexpr")}
    kernel = triton.compile(ASTSource(v["fn"], signature, v["constants"]), target=H100, options=dict(num_warps=v["num_warps"], num_stages=v["num_stages"]))
    return kernel.metadata.shared


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--all", action="store_true", help="also every configuration tools/gpu/kernels.py measures")
    args = parser.parse_args(argv)
    variants = default_variants() + (measured_variants() if args.all else [])
    seen, failed, start = set(), 0, time.monotonic()
    largest = 0
    for name, v in variants:
        key = (v["fn"].__name__, tuple(sorted(v["signature"].items())), tuple(sorted(v["constants"].items())), v["num_warps"], v["num_stages"])
        if key in seen:
            continue
        seen.add(key)
        try:
            shared = compile_variant(v)
        except Exception as exc:
            failed += 1
            print(f"FAILED {name}: {type(exc).__name__}: {str(exc)[:1000]}", flush=True)
            continue
        largest = max(largest, shared)
        if shared > SHARED:
            failed += 1
            print(f"TOO LARGE {name}: {shared:,} bytes of shared memory (an H100 has {SHARED:,})", flush=True)
    print(f"triton {triton.__version__}: {len(seen)} variants for sm_90 in {time.monotonic() - start:.0f} s, {failed} failed; most shared memory {largest:,} bytes")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
