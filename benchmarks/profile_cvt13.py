"""Where CvT-13 time goes (fused inference, fp32 or bf16 autocast), and whether bf16 kernels are fast here.

With --compare-hf: the same weights in cvtlab and in HF transformers, inference (ours fused) or a training
step (--train), op self-times grouped into GEMM / attention / conv / activation / norm / copy / other, so
the bound on the ratio is visible: both run the same GEMMs.

Usage: .venv/bin/python benchmarks/profile_cvt13.py [--batch-size 8] [--img-size 224] [--bf16]
       .venv/bin/python benchmarks/profile_cvt13.py --compile --batch-size 32 [--repeats 4]
       .venv/bin/python benchmarks/profile_cvt13.py --compare-hf [--train] [--by-shape] [--batch-size 4]
Run with OMP_NUM_THREADS=1 for a profile that a busy neighbour on the other core does not distort.
"""
import argparse
import statistics
import time

import timm
import torch
import torch.nn.functional as F
from torch.profiler import profile

import cvtlab  # registers the models
from cvtlab.benchmark import gmacs, hf_logits, hf_twin, matmul_probe, time_interleaved


def bf16_probe():
    """One CvT-13 stage-2 fc1 GEMM and one depth-wise conv, fp32 against bf16 (ms, median of 5)."""
    def ms(fn):
        fn()
        times = []
        for _ in range(5):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
        return 1e3 * sorted(times)[2]
    a, w, b = torch.randn(394, 384), torch.randn(1536, 384), torch.randn(1536)
    x, cw = torch.randn(2, 384, 14, 14), torch.randn(384, 1, 3, 3)
    with torch.inference_mode():
        print('mkldnn bf16 supported on this CPU:', torch.ops.mkldnn._is_mkldnn_bf16_supported())
        for dtype in (torch.float32, torch.bfloat16):
            print(f'{str(dtype):15s} linear 394x384x1536 {ms(lambda: F.linear(a.to(dtype), w.to(dtype), b.to(dtype))):7.2f} ms'
                  f'  dw-conv 2x384x14x14 s2 {ms(lambda: F.conv2d(x.to(dtype), cw.to(dtype), None, 2, 1, 1, 384)):7.2f} ms')


CATEGORIES = (  # (category, substrings of aten op names), first match wins
    ('GEMM (Linears, HF attention bmm)', ('addmm', 'aten::mm', 'bmm', 'baddbmm')),
    ('attention (SDPA / softmax)', ('scaled_dot_product', 'softmax')),
    ('conv', ('conv',)),
    ('activation (+ its muls)', ('sigmoid', 'silu', 'gelu', 'aten::mul')),
    ('norm (LayerNorm, BN)', ('layer_norm', 'batch_norm')),
    ('copies (copy_, cat, clone)', ('copy_', 'aten::cat', 'clone')),
)


def categorised_ms(prof) -> dict:
    totals = {name: 0.0 for name, _ in CATEGORIES}
    totals['other'] = 0.0
    for event in prof.key_averages():
        if not event.key.startswith('aten::'):
            continue  # autograd wrappers: their self time is bookkeeping, counted under other via the total
        name = next((c for c, keys in CATEGORIES if any(k in event.key for k in keys)), 'other')
        totals[name] += event.self_cpu_time_total / 1e3
    return totals


def compare_hf_profile(args):
    torch.manual_seed(0)
    ours = timm.create_model('cvt_13')
    hf = hf_twin(ours)
    x = torch.randn(args.batch_size, 3, args.img_size, args.img_size)
    if args.train:
        ours.train(), hf.train()
        subjects = {'cvtlab': lambda: ours(x).mean().backward(), 'hf': lambda: hf_logits(hf, x).mean().backward()}
    else:
        ours, hf = cvtlab.fuse_for_inference(ours), hf.eval()
        subjects = {'cvtlab': lambda: ours(x), 'hf': lambda: hf_logits(hf, x)}
    probe, probe_gflop = matmul_probe()
    probe_ms = []
    samples = {name: [] for name in subjects}  # per profiled call: {category: ms}
    with torch.inference_mode(not args.train):
        for step in subjects.values():
            step()  # warm-up
        for repeat in range(args.repeats):  # the two models take turns, so drift hits both alike
            for name, step in subjects.items():
                start = time.perf_counter()
                step()
                wall = 1e3 * (time.perf_counter() - start)
                last = repeat == args.repeats - 1
                with profile(record_shapes=args.by_shape and last) as prof:
                    step()
                samples[name].append(dict(categorised_ms(prof), wall=wall))
                if args.by_shape and last:
                    print(f'--- {name}: top ops by input shape (last profiled call)')
                    print(prof.key_averages(group_by_input_shape=True).table(
                        sort_by='self_cpu_time_total', row_limit=16, max_name_column_width=45,
                        max_shapes_column_width=60))
            if not args.train:  # the matmul rate, taken between the model calls (an inference figure)
                start = time.perf_counter()
                probe()
                probe_ms.append(1e3 * (time.perf_counter() - start))
    rows = {name: {cat: statistics.median(r[cat] for r in runs) for cat in runs[0]} for name, runs in samples.items()}
    what = 'training step' if args.train else 'inference (ours fused)'
    print(f'CvT-13 {what}, batch {args.batch_size}, {args.img_size}px, {torch.get_num_threads()} thread(s); '
          f'op self time in ms, median of {args.repeats} profiled calls per model')
    print(f'{"":36s} {"cvtlab":>9s} {"hf":>9s}')
    for cat in [c for c, _ in CATEGORIES] + ['other']:
        print(f'{cat:36s} {rows["cvtlab"][cat]:9.1f} {rows["hf"][cat]:9.1f}')
    sums = {k: sum(v for c, v in r.items() if c != 'wall') for k, r in rows.items()}
    print(f'{"sum of op self times":36s} {sums["cvtlab"]:9.1f} {sums["hf"]:9.1f}')
    print(f'{"wall time, unprofiled calls":36s} {rows["cvtlab"]["wall"]:9.1f} {rows["hf"]["wall"]:9.1f}')
    gemm = rows['cvtlab'][CATEGORIES[0][0]]
    core = gemm + rows['cvtlab'][CATEGORIES[1][0]] + rows['cvtlab']['conv']  # the FLOP-carrying ops
    print(f'hf / cvtlab (op sums): {sums["hf"] / sums["cvtlab"]:.2f}x; upper bound if everything but our GEMMs '
          f'cost nothing: {sums["hf"] / gemm:.2f}x; if only GEMM + attention + conv remain: {sums["hf"] / core:.2f}x')
    if not args.train:
        rate = probe_gflop / statistics.median(probe_ms) * 1e3  # GFLOP/s
        gflop = 2 * gmacs('cvt_13', (args.img_size, args.img_size)) * args.batch_size
        print(f'matmul probe {rate:.0f} GFLOP/s; cvtlab reaches {gflop / rows["cvtlab"]["wall"] * 1e3 / rate:.0%} '
              f'of it (unprofiled calls), {gflop / sums["cvtlab"] * 1e3 / rate:.0%} by its op sum, and at most '
              f'{gflop / core * 1e3 / rate:.0%} if only GEMM + attention + conv remained; '
              f'HF {gflop / rows["hf"]["wall"] * 1e3 / rate:.0%}')


def compiled_profile(args):
    """The frozen compiled model, one profiled call after timed calls interleaved with the matmul probe;
    inductor's own kernels appear by name (`cpp.enable_kernel_profile`), extern ones under their op or, with
    the C++ wrapper, as `aoti_torch_cpu_*` without shapes."""
    torch._inductor.config.cpp.enable_kernel_profile = True
    torch.manual_seed(0)
    model = cvtlab.compile_for_inference(timm.create_model('cvt_13'))
    x = torch.randn(args.batch_size, 3, args.img_size, args.img_size)
    probe, probe_gflop = matmul_probe()
    gflop = 2 * gmacs('cvt_13', (args.img_size, args.img_size))
    with torch.inference_mode():
        start = time.perf_counter()
        model(x)
        print(f'compile + first call: {time.perf_counter() - start:.0f} s')
        times = time_interleaved({'model': lambda: model(x), 'probe': probe}, warmup=0, repeats=args.repeats,
                                 device=torch.device('cpu'))
        model_s, rate = statistics.median(times['model']), probe_gflop / statistics.median(times['probe'])
        print(f'median of {args.repeats}: {model_s:.3f} s per call, probe {rate:.0f} GFLOP/s, '
              f'{gflop * args.batch_size / model_s / rate:.1%} of it')
        with profile(record_shapes=True) as prof:
            model(x)
    print(prof.key_averages(group_by_input_shape=True).table(
        sort_by='self_cpu_time_total', row_limit=40, max_name_column_width=55, max_shapes_column_width=70))


def main():
    p = argparse.ArgumentParser()
    p.add_argument('--batch-size', type=int, default=8)
    p.add_argument('--img-size', type=int, default=224)
    p.add_argument('--bf16', action='store_true')
    p.add_argument('--compare-hf', action='store_true', help='categorised profile of cvtlab against HF')
    p.add_argument('--train', action='store_true', help='with --compare-hf: a training step')
    p.add_argument('--by-shape', action='store_true', help='with --compare-hf: also the top ops by input shape')
    p.add_argument('--repeats', type=int, default=5, help='with --compare-hf: profiled calls per model')
    p.add_argument('--compile', action='store_true',
                   help='cvtlab.compile_for_inference (frozen), inductor kernels profiled, top ops by input shape')
    args = p.parse_args()
    if args.compare_hf:
        return compare_hf_profile(args)
    if args.compile:
        return compiled_profile(args)
    model = cvtlab.fuse_for_inference(timm.create_model('cvt_13'))
    x = torch.randn(args.batch_size, 3, args.img_size, args.img_size)
    with torch.inference_mode(), torch.autocast('cpu', torch.bfloat16, enabled=args.bf16):
        model(x)
        with profile() as prof:
            model(x)
    print(prof.key_averages().table(sort_by='self_cpu_time_total', row_limit=12, max_name_column_width=50))
    bf16_probe()


if __name__ == '__main__':
    main()
