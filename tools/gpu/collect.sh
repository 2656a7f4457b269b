#!/usr/bin/env bash
# Device calls 2 to 4: wait for the chain (at most WAIT seconds), pack its results; once it is
# done and the GPU is free, time the bench, SimCLR and the L1 kernel alone (BENCH=1), or the
# fused kernel against the default route for the routing table (FUSED=1, about 8 minutes).
set -uo pipefail
export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1
G=/tmp/gpu; start=$(date +%s)
if [ ! -d $G ]; then  # the machine was given back between calls (idle 30 s): call 1's install and the chain are gone
  echo "FRESH MACHINE: /tmp/gpu is gone, so the chain's results and checkpoints are lost; start it again with start.sh (carry .whl and .data)"
  source tools/gpu/setup.sh  # needs .whl carried; exits if it is not
  mkdir -p $G && touch $G/chain.done  # no chain runs here: the GPU is free for BENCH / FUSED
fi
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
