#!/usr/bin/env bash
# Every number in BENCHMARKS.md, in order (~50 min on a 2-core CPU).
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p benchmarks/results
r=benchmarks/results
(lscpu | grep -E 'Model name|^CPU\(s\)'; .venv/bin/python -c 'import torch, transformers, timm; print("torch", torch.__version__, "transformers", transformers.__version__, "timm", timm.__version__)'; date -u) > $r/machine.txt
benchmarks/cvt13_vs_hf.sh
.venv/bin/python benchmarks/ablation.py --batch-size 32 --repeats 8 --compile --no-bf16 2> $r/ablation.json | tee $r/ablation.txt
.venv/bin/python benchmarks/ablation.py --batch-size 16 --repeats 5 --compile 2> $r/ablation_b16.json | tee $r/ablation_b16.txt  # includes the bf16 variant (slow on CPUs without bf16 GEMMs)
.venv/bin/python benchmarks/ablation.py --train --batch-size 32 --repeats 4 2> $r/ablation_train.json | tee $r/ablation_train.txt
.venv/bin/python benchmarks/chunked_mlp.py --json $r/chunked_mlp_224_b32.json | tee $r/chunked_mlp_224_b32.txt
.venv/bin/python benchmarks/kv_merge.py | tee $r/kv_merge.txt
OMP_NUM_THREADS=1 .venv/bin/python benchmarks/profile_cvt13.py --compare-hf --by-shape --batch-size 8 > $r/profile_infer_vs_hf_1thread.txt 2>&1
OMP_NUM_THREADS=1 .venv/bin/python benchmarks/profile_cvt13.py --compare-hf --train --batch-size 4 > $r/profile_train_vs_hf_1thread.txt 2>&1
OMP_NUM_THREADS=1 .venv/bin/python benchmarks/profile_cvt13.py --batch-size 8 > $r/profile_fp32_1thread.txt 2>&1
.venv/bin/python benchmarks/profile_cvt13.py --batch-size 32 > $r/profile_fp32_2threads_b32.txt 2>&1
.venv/bin/python benchmarks/profile_cvt13.py --compare-hf --batch-size 32 --repeats 5 > $r/profile_infer_vs_hf_2threads_b32.txt 2>&1
.venv/bin/python benchmarks/profile_cvt13.py --compare-hf --train --batch-size 32 --repeats 4 > $r/profile_train_vs_hf_2threads_b32.txt 2>&1
benchmarks/sweep_res.sh
