#!/usr/bin/env bash
# Packs what /tmp/gpu holds so far (logs, run folders' small files, loss curves, weights) into
# $OUT/results.tgz: one file, since a call brings back at most eight.
G=/tmp/gpu; R=$G/results
rm -rf $R && mkdir -p $R
cp $G/*.log $G/*.rc $R/ 2>/dev/null
for run in $G/runs/*/*/; do
  name=$(basename $(dirname $run)); mkdir -p $R/$name
  for f in report.md metrics.csv metrics.json run.json resolved.yaml error.txt; do cp $run/$f $R/$name/ 2>/dev/null; done
  cp -r $run/figures $R/$name/ 2>/dev/null
done
for ck in $G/ck/*/; do cp $ck/loss.json $R/loss-$(basename $ck).json 2>/dev/null; done
cp -r $G/weights $R/ 2>/dev/null
tar czf $OUT/results.tgz -C $G results && ls -la $OUT
