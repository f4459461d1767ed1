#!/usr/bin/env bash
# Issue 16's figures, side by side in one session (~25 min on a 2-core CPU): fp32 against onnxruntime (fp32 and
# int8) and the best GEMM per dtype, bf16 against fp32, int8 accuracy on the trained digits run, the training
# step against HF, and the server with and without batching. Needs runs/demo (`make demo`).
# TAG names the files (default final16: benchmarks/results/$TAG_*); SERVE=0 leaves out the server runs.
set -euo pipefail
cd "$(dirname "$0")/.."
r=benchmarks/results
t=${TAG:-final16}
mkdir -p $r
py=.venv/bin/python
# THREADS=1 (default 2, the machine's cores): one thread per library when other jobs share the cores. cvtlab's
# inference and its onnxruntime runner split a batch across the threads by images and hold up under load; HF's
# and the training step's OpenMP threads stall whenever one core is taken, which would make those ratios measure the load
export OMP_NUM_THREADS=${THREADS:-2}
(uptime; lscpu | grep -E 'Model name|^CPU\(s\)|^Flags'; $py -c 'import torch, timm, onnxruntime; print("torch", torch.__version__, "timm", timm.__version__, "onnxruntime", onnxruntime.__version__)'; date -u) > $r/machine_${TAG:-issue16_final}.txt
for spec in "cvt_13 8 224" "cvt_13 32 224" "cvt_13 8 384" "lg_tiny 8 224"; do
  set -- $spec
  .venv/bin/cvtlab benchmark $1 -b $2 --img-size $3 --no-train --no-latency --compare onnxruntime,onnxruntime-int8 \
    --repeats 6 --json > $r/${t}_$1_$3_b$2_ort.json
done
for spec in "cvt_13 8" "cvt_13 32" "lg_tiny 8"; do
  set -- $spec
  $py benchmarks/bf16_vs_fp32.py --model $1 --batch-size $2 --repeats 8 --json $r/${t}_bf16_$1_b$2.json
done
$py benchmarks/int8_accuracy.py runs/demo --repeats 8 --json $r/${t}_int8_digits.json
.venv/bin/cvtlab benchmark cvt_13 -b 32 --compare hf --no-latency --repeats 4 --json > $r/${t}_cvt13_224_b32_hf.json
[ "${SERVE:-1}" = 0 ] && exit 0
$py benchmarks/serve_load.py runs/demo --image-size 64 --requests 480 --json $r/final18_serve_demo.json
$py benchmarks/serve_load.py cvt_13 --image-size 224 --requests 96 --json $r/final18_serve_cvt13.json
