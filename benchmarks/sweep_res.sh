#!/usr/bin/env bash
# Inference img/s, pixel rate and memory against resolution (batch 1, fp32), four models interleaved at each
# size. One OpenMP thread: at batch 1 two threads on this shared 2-core CPU spend most of the small-input time
# waiting at barriers, which distorts the 224 baseline (BENCHMARKS.md). ~6 minutes.
# Usage: benchmarks/sweep_res.sh [THREADS]
set -euo pipefail
cd "$(dirname "$0")/.."
CVTLAB=${CVTLAB:-.venv/bin/cvtlab}
mkdir -p benchmarks/results
OMP_NUM_THREADS=${1:-1} $CVTLAB benchmark cvt_13 lg_tiny vit_small_patch16_224 swin_tiny_patch4_window7_224 \
    --sweep-res 224,384,512,768,896,1024 --repeats 3 --plot benchmarks/results/sweep_res.png \
    --json > benchmarks/results/sweep_res.json
