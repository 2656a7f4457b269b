#!/usr/bin/env bash
# One device call (about 8 minutes): the whole test suite with CUDA visible, then the H100
# bench table. Everything it prints is kept under $OUT.
set -uo pipefail
source tools/gpu/setup.sh
start=$(date +%s)
timeout 300 python3 -m pytest -q -rs -p no:cacheprovider --durations=20 2>&1 | tee "$OUT/pytest.log" | tail -40
echo "suite: $(( $(date +%s) - start )) s"
timeout 220 amemctl bench --device cuda --repeats 5 -o "$OUT/BENCHMARKS-gpu.md" 2>&1 | tail -40
