#!/usr/bin/env bash
# Inference img/s and memory against resolution (batch 1). Usage: benchmarks/sweep_res.sh [full]
# Default (what BENCHMARKS.md reports): lg_tiny, ViT-S/16, Swin-T at 224 and 896. `full` adds cvt_13 and
# 384..1024 (did not finish in 7 minutes on the shared 2-core CPU).
set -euo pipefail
cd "$(dirname "$0")/.."
CVTLAB=${CVTLAB:-.venv/bin/cvtlab}
mkdir -p benchmarks/results
if [ "${1:-}" = full ]; then
  $CVTLAB benchmark cvt_13 lg_tiny vit_small_patch16_224 swin_tiny_patch4_window7_224 \
      --sweep-res 224,384,512,768,896,1024 --repeats 3 --plot benchmarks/results/sweep_res_full.png \
      --json > benchmarks/results/sweep_res_full.json
else
  $CVTLAB benchmark lg_tiny vit_small_patch16_224 swin_tiny_patch4_window7_224 \
      --sweep-res 224,896 --repeats 2 --plot benchmarks/results/sweep_res.png \
      --json > benchmarks/results/sweep_res.json
fi
