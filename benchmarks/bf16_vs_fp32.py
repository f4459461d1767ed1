"""bf16 against fp32 inference, both through `cvtlab.fuse_for_inference`, interleaved in one process.

Usage: .venv/bin/python benchmarks/bf16_vs_fp32.py [--model cvt_13] [--batch-size 8] [--img-size 224]
           [--repeats 8] [--json FILE]
Prints img/s of each, the ratio, the largest logit difference and the top-1 agreement on the timed batch
(random weights and inputs: agreement on a trained model is tested in tests/test_train.py).
"""
import argparse
import json
import statistics
from pathlib import Path

import timm
import torch

import cvtlab
from cvtlab.benchmark import cpu_info, time_interleaved


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--model', default='cvt_13')
    p.add_argument('--batch-size', type=int, default=8)
    p.add_argument('--img-size', type=int, default=224)
    p.add_argument('--repeats', type=int, default=8)
    p.add_argument('--json', help='also write the result here')
    args = p.parse_args()
    torch.manual_seed(0)
    model = timm.create_model(args.model).eval()
    paths = {'fp32': cvtlab.fuse_for_inference(model),
             'bf16': cvtlab.fuse_for_inference(model, dtype=torch.bfloat16)}
    x = torch.randn(args.batch_size, 3, args.img_size, args.img_size)
    with torch.inference_mode():
        out = {k: m(x) for k, m in paths.items()}  # also the warm-up
        times = time_interleaved({k: (lambda m=m: m(x)) for k, m in paths.items()}, warmup=0,
                                 repeats=args.repeats, device=torch.device('cpu'))
    ips = {k: args.batch_size / statistics.median(t) for k, t in times.items()}
    result = dict(model=args.model, batch_size=args.batch_size, img_size=args.img_size, repeats=args.repeats,
                  threads=torch.get_num_threads(), cpu=cpu_info(), img_per_sec=ips, bf16_vs_fp32=ips['bf16'] / ips['fp32'],
                  max_abs_diff=(out['bf16'] - out['fp32']).abs().max().item(),
                  top1_agreement=(out['bf16'].argmax(-1) == out['fp32'].argmax(-1)).float().mean().item())
    print(f"{args.model}, batch {args.batch_size}, {args.img_size} px: fp32 {ips['fp32']:.2f} img/s, bf16 "
          f"{ips['bf16']:.2f} img/s, x{result['bf16_vs_fp32']:.3f}, max|diff| {result['max_abs_diff']:.1e}, "
          f"top-1 agreement {result['top1_agreement']:.3f}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + '\n')


if __name__ == '__main__':
    main()
