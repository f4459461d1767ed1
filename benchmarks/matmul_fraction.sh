#!/usr/bin/env bash
# The spread of "fraction of the matmul rate" (CvT-13, fp32 inference, 224 px, batch 32) over repeated
# commands, three ways of running the model taking turns in every round (on a shared machine one command
# is one sample, not the answer):
#   eager     cvtlab's fused eager model (the default);
#   frozen    `--compile`: inductor with freezing, Linears as pre-packed MKL GEMMs, element-wise work fused
#             by inductor into separate passes;
#   autotune  the same with max-autotune choosing, per GEMM, between MKL and inductor's own C++ GEMM
#             template, which can fuse bias, SiLU and residual adds into the GEMM's output (epilogue).
# Usage: benchmarks/matmul_fraction.sh [rounds, default 4] [ways, default "eager frozen autotune"]
#        (~6 min per round with all three ways on a 2-core CPU). Results: results/matmul_fraction_<commit>/
#        OLD=<commit> adds the way "old": that commit's package (git archive) compiled frozen, in every round.
set -euo pipefail
cd "$(dirname "$0")/.."
CVTLAB=${CVTLAB:-.venv/bin/cvtlab}
out=benchmarks/results/matmul_fraction_$(git rev-parse --short HEAD)
WAYS=${2:-eager frozen autotune}
mkdir -p $out
if [ -n "${OLD:-}" ]; then
    old_pkg=$(mktemp -d)
    trap 'rm -rf "$old_pkg"' EXIT
    git archive "$OLD" cvtlab | tar -x -C "$old_pkg"
    WAYS="$WAYS old"
fi
ARGS="cvt_13 -b 32 --img-size 224 --no-train --no-latency --repeats 8 --json"
AUTOTUNE="TORCHINDUCTOR_MAX_AUTOTUNE=1 TORCHINDUCTOR_MAX_AUTOTUNE_GEMM_BACKENDS=CPP,ATEN"
for i in $(seq 1 "${1:-4}"); do
    for way in $WAYS; do
        case $way in
            eager) $CVTLAB benchmark $ARGS > $out/eager_$i.json 2> /dev/null ;;
            frozen) $CVTLAB benchmark $ARGS --compile > $out/frozen_$i.json 2> /dev/null ;;
            autotune) env $AUTOTUNE $CVTLAB benchmark $ARGS --compile > $out/autotune_$i.json 2> /dev/null ;;
            old) env PYTHONPATH="$old_pkg" $CVTLAB benchmark $ARGS --compile > $out/frozen_${OLD}_$i.json 2> /dev/null ;;
        esac
    done
done
.venv/bin/python - "$out" <<'PY' | tee $out/summary.txt
import glob, json, statistics, sys
print('way             runs  fraction of the probe: median (min-max)   probe GFLOP/s (min-max)   img/s median')
files = {}  # way -> its round files, e.g. frozen -> frozen_1.json ..., frozen_4cb040b -> frozen_4cb040b_1.json ...
for f in sorted(glob.glob(f'{sys.argv[1]}/*.json')):
    files.setdefault(f.split('/')[-1].rsplit('_', 1)[0], []).append(f)
for way, paths in files.items():
    rows = [json.load(open(f))['results'][0] for f in paths]
    frac = [100 * r['infer_matmul_fraction'] for r in rows]
    rate = [r['matmul_gflops_per_sec'] for r in rows]
    ips = [r['infer_samples_per_sec'] for r in rows]
    print(f'{way:15s} {len(rows):4d}  {statistics.median(frac):5.1f}% ({min(frac):.1f}-{max(frac):.1f}%)'
          f'{"":22s}{min(rate):4.0f}-{max(rate):4.0f}{"":18s}{statistics.median(ips):5.2f}')
PY
