#!/usr/bin/env bash
# One device call (up to 10 minutes): train the shipped small phi on the CIFAR-10 test images
# (carried in .data/cifar10-test-jpeg), ship it into amemctl/weights, and bring back the run
# folders and the weights under $OUT. Pass extra --set overrides as arguments.
set -uo pipefail
source tools/gpu/setup.sh
timeout 420 amemctl run pipelines/phi_small_cifar10.yaml --device cuda --out "$OUT/runs" "$@" 2>&1 | tail -20
run=$(ls -d "$OUT"/runs/phi_small_cifar10/* | tail -1)
python3 tools/ship_encoder.py "$run" small-cifar10-simclr --data "the 10,000 CIFAR-10 test images (JPEG q=75 re-encodings)" 2>&1 | tail -3
mkdir -p "$OUT/weights" && cp amemctl/weights/* "$OUT/weights/"
cat "$run/metrics.json" | head -40
