#!/usr/bin/env bash
# One device call (up to 10 minutes): Salvatori et al.'s Table 1 / Table 3 / Fig. 3 on the
# 10,000 CIFAR-10 test images (carried in .data/cifar10-test-jpeg): pipelines/cifar10_semantic.yaml
# with its two loads pointed at the image folder, so SimCLR trains (no labels) on the same
# images that are stored. Pass --set stages.1.epochs=N to change the epochs (default 200).
set -uo pipefail
source tools/gpu/setup.sh
folder=(--set stages.0.dataset=folder --set stages.0.root=.data/cifar10-test-jpeg --set stages.0.split=null
        --set stages.2.dataset=folder --set stages.2.root=.data/cifar10-test-jpeg --set stages.2.split=null)
timeout 560 amemctl run pipelines/cifar10_semantic.yaml --device cuda --out "$OUT/runs" "${folder[@]}" "$@" 2>&1 | tail -60
