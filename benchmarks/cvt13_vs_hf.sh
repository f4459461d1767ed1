#!/usr/bin/env bash
# CvT-13 against HF transformers' CvtForImageClassification, same weights, interleaved in one process per
# command (ratios are what to read: the machine is small and shared). Results: benchmarks/results/*.json.
# HF keeps its exact GELU (one op; the official QuickGELU is three), which only favours HF.
set -euo pipefail
cd "$(dirname "$0")/.."
CVTLAB=${CVTLAB:-.venv/bin/cvtlab}
out=benchmarks/results
mkdir -p $out
# inference + training + memory, 224, batch 32
$CVTLAB benchmark cvt_13 --compare hf -b 32 --img-size 224 --repeats 5 --json > $out/cvt13_hf_224_b32.json
# inference + training + memory, 384, batch 8
$CVTLAB benchmark cvt_13 --compare hf -b 8 --img-size 384 --repeats 5 --no-latency --json > $out/cvt13_hf_384_b8.json
# the same with glibc's allocator told to keep freed memory (no mmap, no trimming: no fresh pages to fault
# in for large tensors; what jemalloc / tcmalloc give too): HF gains far more than cvtlab (BENCHMARKS.md)
TUNED="MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=68719476736 MALLOC_TOP_PAD_=536870912"
env $TUNED $CVTLAB benchmark cvt_13 --compare hf -b 32 --img-size 224 --repeats 3 --no-latency --json \
    > $out/cvt13_hf_224_b32_malloc_tuned.json
env $TUNED $CVTLAB benchmark cvt_13 --compare hf -b 8 --img-size 384 --repeats 3 --no-latency --json \
    > $out/cvt13_hf_384_b8_malloc_tuned.json
# training memory at 384 with activation checkpointing (ours only; HF has none)
$CVTLAB benchmark cvt_13 --compare hf -b 8 --img-size 384 --repeats 3 --no-latency --grad-checkpointing \
    --json > $out/cvt13_hf_384_b8_ckpt.json
# torch.compile: ours compiled (inference with inductor freezing) against HF eager, then both compiled
$CVTLAB benchmark cvt_13 --compare hf -b 32 --img-size 224 --repeats 5 --no-train --no-latency --compile --hf-eager \
    --json > $out/cvt13_hf_224_b32_compiled_vs_eager.json
$CVTLAB benchmark cvt_13 --compare hf -b 32 --img-size 224 --repeats 5 --no-train --no-latency --compile \
    --json > $out/cvt13_hf_224_b32_both_compiled.json
# training compiled too (ours compiled, HF eager; ~6 min, most of it compiling)
$CVTLAB benchmark cvt_13 --compare hf -b 32 --img-size 224 --repeats 4 --no-latency --compile --hf-eager \
    --json > $out/cvt13_hf_224_b32_train_compiled_vs_eager.json
# bf16: see benchmarks/ablation.py (fused_bf16) and benchmarks/profile_cvt13.py --bf16; a direct
# `--dtype bf16 --hf-dtype fp32` compare did not finish on this CPU (BENCHMARKS.md, bf16 row)
