"""Where CvT-13 inference time goes (fused, fp32 or bf16 autocast), and whether bf16 kernels are fast here.

Usage: .venv/bin/python benchmarks/profile_cvt13.py [--batch-size 8] [--img-size 224] [--bf16]
Run with OMP_NUM_THREADS=1 for a profile that a busy neighbour on the other core does not distort.
"""
import argparse
import time

import timm
import torch
import torch.nn.functional as F
from torch.profiler import profile

import cvtlab  # noqa: F401
from cvtlab.models.cvt import fuse_for_inference


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


def main():
    p = argparse.ArgumentParser()
    p.add_argument('--batch-size', type=int, default=8)
    p.add_argument('--img-size', type=int, default=224)
    p.add_argument('--bf16', action='store_true')
    args = p.parse_args()
    model = fuse_for_inference(timm.create_model('cvt_13'))
    x = torch.randn(args.batch_size, 3, args.img_size, args.img_size)
    with torch.inference_mode(), torch.autocast('cpu', torch.bfloat16, enabled=args.bf16):
        model(x)
        with profile() as prof:
            model(x)
    print(prof.key_averages().table(sort_by='self_cpu_time_total', row_limit=12, max_name_column_width=50))
    bf16_probe()


if __name__ == '__main__':
    main()
