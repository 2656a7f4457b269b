#!/usr/bin/env bash
# Device calls 2 and 3: wait for the chain (at most WAIT seconds), pack its results; once it is
# done and the GPU is free, time the bench and the kernels alone (BENCH=1).
set -uo pipefail
export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1
G=/tmp/gpu; start=$(date +%s)
while [ $(( $(date +%s) - start )) -lt ${WAIT:-500} ] && [ ! -e $G/chain.done ]; do sleep 15; done
tail -n 6 $G/table1.log $G/phi.log
bash tools/gpu/pack.sh
if [ -e $G/chain.done ] && [ "${BENCH:-0}" = 1 ]; then
  timeout ${BENCH_S:-300} amemctl bench --device cuda --repeats 5 -o $OUT/BENCHMARKS-gpu.md 2>&1 | tee $OUT/bench.log
  timeout ${KERNEL_S:-120} python3 tools/gpu/kernels.py 2>&1 | tee $OUT/kernels.log
fi
