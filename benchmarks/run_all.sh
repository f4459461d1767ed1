#!/usr/bin/env bash
# Every number in BENCHMARKS.md, in order (~20 min on a 2-core CPU).
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p benchmarks/results
(lscpu | grep -E 'Model name|^CPU\(s\)'; .venv/bin/python -c 'import torch, transformers, timm; print("torch", torch.__version__, "transformers", transformers.__version__, "timm", timm.__version__)'; date -u) > benchmarks/results/machine.txt
.venv/bin/python benchmarks/ablation.py --batch-size 16 --repeats 5 --compile 2> benchmarks/results/ablation.json | tee benchmarks/results/ablation.txt
benchmarks/cvt13_vs_hf.sh
benchmarks/sweep_res.sh
OMP_NUM_THREADS=1 .venv/bin/python benchmarks/profile_cvt13.py --batch-size 8 > benchmarks/results/profile_fp32_1thread.txt 2>&1
