#!/usr/bin/env bash
# Device calls 2 to 4: wait for the chain (at most WAIT seconds), pack its results; once it is
# done and the GPU is free, time the bench, SimCLR and the L1 kernel alone (BENCH=1), or the
# fused kernel against the default route for the routing table (FUSED=1, about 8 minutes).
set -uo pipefail
export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1
G=/tmp/gpu; start=$(date +%s)
while [ $(( $(date +%s) - start )) -lt ${WAIT:-500} ] && [ ! -e $G/chain.done ]; do sleep 15; done
tail -n 6 $G/table1.log $G/phi.log
bash tools/gpu/pack.sh
if [ -e $G/chain.done ] && [ "${BENCH:-0}" = 1 ]; then
  timeout ${BENCH_S:-300} python3 -m amemctl bench --device cuda --repeats 5 -o $OUT/BENCHMARKS-gpu.md 2>&1 | tee $OUT/bench.log
  timeout ${KERNEL_S:-120} python3 tools/gpu/kernels.py --parts simclr,l1 2>&1 | tee $OUT/kernels.log
fi
if [ -e $G/chain.done ] && [ "${FUSED:-0}" = 1 ]; then
  timeout ${FUSED_S:-560} python3 tools/gpu/kernels.py --parts fused --budget $(( ${FUSED_S:-560} - 60 )) --json $OUT/fused.json 2>&1 | tee $OUT/fused.log
fi
