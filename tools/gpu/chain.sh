#!/usr/bin/env bash
# Started in the background by start.sh (setsid: it outlives the device call that starts it):
# the semantic paper's Table 1 run (ResNet18 SimCLR on the 10,000 CIFAR-10 test images, then the
# 66-point sweep) and, with PHI=1, the small phi's training beside it on the one GPU (a phi
# trained on the CPU already ships; retrain it only when the device time allows). Everything
# lands in /tmp/gpu, which later calls pack into $OUT (pack.sh).
# `python3 -m amemctl`, not the `amemctl` script: pip may put scripts in a folder not on PATH.
set -u
G=/tmp/gpu
folder=(--set stages.0.dataset=folder --set stages.0.root=.data/cifar10-test-jpeg --set stages.0.split=null
        --set stages.2.dataset=folder --set stages.2.root=.data/cifar10-test-jpeg --set stages.2.split=null)
( python3 -m amemctl run pipelines/cifar10_semantic.yaml --device cuda --out $G/runs "${folder[@]}" \
    --set stages.1.epochs=${EPOCHS:-100} --set stages.1.checkpoints=$G/ck/resnet18 > $G/table1.log 2>&1
  echo $? > $G/table1.rc ) &
[ "${PHI:-0}" = 1 ] && ( python3 -m amemctl run pipelines/phi_small_cifar10.yaml --device cuda --out $G/runs --set stages.1.checkpoints=$G/ck/small > $G/phi.log 2>&1
  echo $? > $G/phi.rc
  run=$(ls -d $G/runs/phi_small_cifar10/* | tail -1)
  python3 tools/ship_encoder.py "$run" small-cifar10-simclr --data "the 10,000 CIFAR-10 test images (JPEG q=75 re-encodings, no labels)" >> $G/phi.log 2>&1
  mkdir -p $G/weights && cp amemctl/weights/* $G/weights/ ) &
wait
touch $G/chain.done
