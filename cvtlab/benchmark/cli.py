"""`cvtlab benchmark`: its flags, the command, and the results table. Imported by `cvtlab.cli` only."""
import argparse
import json
import sys
from dataclasses import asdict
from typing import List

import torch

from ..console import console
from ..errors import ConfigError
from .limits import cpu_info, describe_cpu, dtype_notes
from .peers import compare_peers
from .subjects import DTYPES, BenchSettings, benchmark_models
from .sweep import SWEEP_MODELS, plot_sweep, sweep_resolution


def add_benchmark_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser('benchmark', help='inference / training throughput, latency, memory, GMACs')
    p.add_argument('models', nargs='*', default=['cvt_13'], help='timm model names (default: cvt_13)')
    p.add_argument('-b', '--batch-size', type=int, help='batch size (default 8; 1 for --sweep-res)')
    p.add_argument('--img-size', type=int, help="square input size (default: the model's own)")
    p.add_argument('--dtype', default='fp32', choices=sorted(DTYPES), help='fp32, or bf16 / fp16 autocast')
    p.add_argument('--device', default='cpu', help='cpu or cuda')
    p.add_argument('--channels-last', action='store_true', help='channels_last model and input')
    p.add_argument('--compile', action='store_true',
                   help='torch.compile (dynamic=False) every copy; inference copies with freezing')
    p.add_argument('--fuse', action=argparse.BooleanOptionalAction, default=True,
                   help='time the inference copy through cvtlab.fuse_for_inference (default; --no-fuse: as built)')
    p.add_argument('--grad-checkpointing', action='store_true', help='activation checkpointing when training')
    p.add_argument('--no-train', action='store_true', help='skip the training measurements')
    p.add_argument('--no-latency', action='store_true', help='skip the batch-1 latency measurement')
    p.add_argument('--warmup', type=int, default=1, help='untimed calls before timing (default 1)')
    p.add_argument('--repeats', type=int, default=3, help='timed calls per model (default 3)')
    p.add_argument('--latency-repeats', type=int, default=10, help='timed batch-1 calls (default 10)')
    p.add_argument('--compare', help="also time, on the same weights and input and in the same run, any of 'hf' "
                                     "(the same CvT in HF transformers, its training step too), 'onnxruntime' "
                                     "(cvtlab's own ONNX export), 'onnxruntime-int8' (its int8 form, as `cvtlab "
                                     "export --int8` writes it), 'compile' (compile_for_inference), comma-separated")
    p.add_argument('--backend', default='torch', choices=['torch', 'onnxruntime', 'auto'],
                   help="run the inference copy in torch (default), in onnxruntime (cvtlab's ONNX export), or "
                        "whichever a short probe measures faster (auto), as `predict --backend` does")
    p.add_argument('--hf-dtype', choices=sorted(DTYPES), help='with --compare hf: HF in this dtype (default: --dtype)')
    p.add_argument('--hf-eager', action='store_true', help='with --compare hf and --compile: leave HF uncompiled')
    p.add_argument('--sweep-res', help='comma-separated resolutions, e.g. 224,384,512,768,1024')
    p.add_argument('--plot', default='benchmark_sweep.png', help='PNG for --sweep-res (default %(default)s)')
    p.add_argument('--json', action='store_true', help='print the results as JSON')
    p.set_defaults(func=cmd_benchmark)
    return p


def _settings_from_args(args, sweep: bool) -> BenchSettings:
    return BenchSettings(
        batch_size=args.batch_size or (1 if sweep else 8), img_size=args.img_size, dtype=args.dtype,
        device=args.device, channels_last=args.channels_last, compile=args.compile, fuse=args.fuse,
        grad_checkpointing=args.grad_checkpointing, train=not (args.no_train or sweep),
        latency=not (args.no_latency or sweep), warmup=args.warmup, repeats=args.repeats,
        latency_repeats=args.latency_repeats, backend=args.backend)


def cmd_benchmark(args) -> int:
    sweep = bool(args.sweep_res)
    s = _settings_from_args(args, sweep)
    peers = [p.strip() for p in args.compare.split(',')] if args.compare else []
    if (args.hf_eager or args.hf_dtype) and 'hf' not in peers:
        raise ConfigError('--hf-eager and --hf-dtype only apply with --compare hf')
    if sweep and peers:
        raise ConfigError('--sweep-res and --compare do not combine: run them as two commands')
    if args.hf_eager and not args.compile:
        raise ConfigError('--hf-eager only applies with --compile (without it both run eager)')
    if sweep:
        try:
            resolutions = [int(r) for r in args.sweep_res.split(',')]
        except ValueError:
            raise ConfigError(f'--sweep-res takes comma-separated integers, not {args.sweep_res!r}') from None
        names = args.models if args.models != ['cvt_13'] else list(SWEEP_MODELS)
        rows = sweep_resolution(names, resolutions, s)
        plot = plot_sweep(rows, args.plot)
    elif peers:
        if len(args.models) != 1:
            raise ConfigError('--compare takes exactly one model')
        rows, plot = compare_peers(args.models[0], peers, s, hf_dtype=args.hf_dtype, hf_eager=args.hf_eager), None
    else:
        rows, plot = benchmark_models(args.models, s), None
    cpu = dict(cpu_info(), threads=torch.get_num_threads()) if s.device == 'cpu' else None
    if args.json:
        print(json.dumps(dict(settings=asdict(s), cpu=cpu, results=rows, plot=plot), indent=2))
    else:
        _print_table(rows)
    summary = sys.stderr if args.json else sys.stdout  # --json keeps stdout machine-readable
    if cpu is not None:
        print(f"* CPU {describe_cpu(cpu)}; {cpu['threads']} thread(s)", file=summary)
        for note in dtype_notes(s.dtype, cpu):
            print(f'* note: {note}', file=summary)
    limits = {k: v for r in rows for k, v in (r.get('gemm_limits') or {}).items()}
    for dtype in dict.fromkeys(k.split()[0] for k in limits):  # one line per dtype: fp32, int8, ...
        mine = {k: v for k, v in limits.items() if k.split()[0] == dtype}
        print(f'* {dtype} GEMM limit in this run: ' + ', '.join(f'{k} {v:.0f}' for k, v in mine.items())
              + f' GFLOP/s; best: {max(mine, key=mine.get)}', file=summary)
    if plot:
        print(f'* plot written to {plot}', file=summary)
    for r in rows:
        if 'error' not in r:
            print(f"* {r['model']}: {r['infer_samples_per_sec']:.2f} img/s inference "
                  f"(batch {r['infer_batch_size']}, {r['infer_img_size'][0]} px, {_dtype(r, s)})"
                  + (f", {r['train_samples_per_sec']:.2f} img/s training" if 'train_samples_per_sec' in r else '')
                  + (f", peak {r['infer_peak_mem_mb']:.0f} MiB" if 'infer_peak_mem_mb' in r else ''), file=summary)
    return 0


def _dtype(row: dict, s) -> str:
    return row.get('dtype') or s.dtype  # the int8 peer's 'int8', HF's --hf-dtype


_COLUMNS = [  # (field, header, format)
    ('model', 'model', 's'), ('backend', 'backend', 's'), ('infer_img_size', 'px', 'px'), ('infer_batch_size', 'batch', 'd'),
    ('infer_samples_per_sec', 'infer img/s', '.2f'), ('infer_latency_ms', 'b1 ms', '.1f'),
    ('infer_latency_p90_ms', 'b1 p90', '.1f'), ('infer_peak_mem_mb', 'infer MiB', '.0f'),
    ('train_samples_per_sec', 'train img/s', '.2f'), ('train_limit_fraction', 'train of limit', '.0%'),
    ('train_peak_mem_mb', 'train MiB', '.0f'),
    ('param_count', 'params M', '.2f'), ('infer_gmacs', 'GMACs', '.2f'), ('infer_gflops_per_sec', 'GFLOP/s', '.1f'),
    ('infer_matmul_fraction', 'of mm', '.0%'), ('infer_limit_fraction', 'of limit', '.0%'), ('pixel_rate_vs_first', 'px/s vs first', '.2f'),
    ('infer_vs_hf', 'infer vs HF', '.2f'), ('infer_vs_onnxruntime', 'vs onnxruntime', '.2f'),
    ('infer_vs_onnxruntime-int8', 'vs ort int8', '.2f'), ('infer_vs_compile', 'vs compiled', '.2f'), ('train_vs_hf', 'train vs HF', '.2f'),
    ('train_mem_vs_hf', 'train mem vs HF', '.2f'), ('hf_max_abs_diff', 'max|Δ| HF', '.1e'), ('error', 'error', 's'),
]


def _print_table(rows: List[dict]):
    """The rows as one rich table: only the columns some row has; in the title the run's torch.matmul rate
    ('of mm') and the best GEMM rate of any library ('of limit')."""
    from rich.table import Table
    columns = [c for c in _COLUMNS if any(r.get(c[0]) is not None for r in rows)]
    rate = next((r['matmul_gflops_per_sec'] for r in rows if r.get('matmul_gflops_per_sec')), None)
    limit = next((r['limit_gflops_per_sec'] for r in rows if r.get('limit_gflops_per_sec')), None)
    title = 'cvtlab benchmark' + ('' if rate is None else f' (measured in this run: torch.matmul {rate:.0f} GFLOP/s, '
                                                          f'best GEMM {limit:.0f} GFLOP/s)')
    table = Table(title=title)
    for _, header, _ in columns:
        table.add_column(header, justify='left' if header in ('model', 'backend', 'error') else 'right')
    for r in rows:
        cells = []
        for key, _, fmt in columns:
            v = r.get(key)
            cells.append('-' if v is None else f'{v[0]}' if fmt == 'px' else format(v, fmt))
        table.add_row(*cells)
    console.print(table)
