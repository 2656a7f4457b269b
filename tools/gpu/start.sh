#!/usr/bin/env bash
# Device call 1 (about 9 minutes): set up, start chain.sh in the background, run the whole
# test suite with CUDA visible while it trains, then show the chain's progress.
set -uo pipefail
source tools/gpu/setup.sh
G=/tmp/gpu; mkdir -p $G
setsid nohup bash tools/gpu/chain.sh > $G/chain.log 2>&1 < /dev/null &
start=$(date +%s)
# SIGINT, not timeout's TERM: a suite stopped at the limit still prints its failures so far and
# the test it was in; -rfEs names failures and errors in the summary the tail shows. 450 s fits
# inside WAIT=500 (a 2-core CPU machine runs it in about 335 s with CUDA tests skipped).
timeout -s INT -k 30 450 python3 -m pytest -q -rfEs -p no:cacheprovider --durations=25 2>&1 | tee $OUT/pytest.log | tail -45
echo "suite: $(( $(date +%s) - start )) s"
while [ $(( $(date +%s) - start )) -lt ${WAIT:-500} ] && [ ! -e $G/chain.done ]; do sleep 15; done
tail -n 4 $G/table1.log $G/phi.log; nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv
bash tools/gpu/pack.sh
