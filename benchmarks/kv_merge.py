"""Would merging CvT's key and value projections pay? Measured on their real shapes (CvT-13, 224, batch 32).

The issue asks to run the k and v depth-wise convs as one grouped conv and their Linears as one matmul.
Both read the same map, so the math allows it: a conv with groups=C and 2C outputs (channel multiplier 2,
k and v interleaved), then one batched matmul over the two (2, B N', C) x (2, C, C). This script times
that against what cvtlab runs (two depth-wise convs, two Linears), and the convs alone, interleaved, medians.

Usage: .venv/bin/python benchmarks/kv_merge.py [--repeats 30]
"""
import argparse
import statistics

import torch
import torch.nn.functional as F

from cvtlab.benchmark import time_interleaved

STAGES = ((64, 56), (192, 28), (384, 14))  # CvT-13 (channels, map side) per stage at 224


def median_ms(steps, repeats):
    times = time_interleaved(steps, warmup=1, repeats=repeats, device=torch.device('cpu'))
    return {name: 1e3 * statistics.median(t) for name, t in times.items()}


def kv_paths(x: torch.Tensor):
    """The separate and the merged k/v projection of one map x (B C H W, channels_last), same weights."""
    B, C = x.shape[:2]
    wk, wv = torch.randn(C, 1, 3, 3), torch.randn(C, 1, 3, 3)
    bk, bv = torch.randn(C), torch.randn(C)
    lin_k, lin_v, lin_bk, lin_bv = torch.randn(C, C), torch.randn(C, C), torch.randn(C), torch.randn(C)
    w_kv = torch.stack([wk, wv], 1).flatten(0, 1)  # 2C 1 3 3: output 2c is k_c, 2c + 1 is v_c
    b_kv = torch.stack([bk, bv], 1).flatten()
    lin_kv = torch.stack([lin_k.t(), lin_v.t()])  # 2 C C
    lin_b = torch.stack([lin_bk, lin_bv]).unsqueeze(1)  # 2 1 C

    def tokens(m):  # B C H W -> B (H W) C
        return m.flatten(2).transpose(1, 2)

    def separate():
        k = F.linear(tokens(F.conv2d(x, wk, bk, 2, 1, 1, C)), lin_k, lin_bk)
        v = F.linear(tokens(F.conv2d(x, wv, bv, 2, 1, 1, C)), lin_v, lin_bv)
        return k, v

    def merged():
        kv = F.conv2d(x, w_kv, b_kv, 2, 1, 1, C)  # B 2C H' W', memory B H' W' C 2
        kv = kv.permute(0, 2, 3, 1).unflatten(-1, (C, 2)).permute(4, 0, 1, 2, 3).reshape(2, -1, C)  # 2 (B N') C
        k, v = torch.baddbmm(lin_b, kv, lin_kv).view(2, B, -1, C)
        return k, v

    convs = dict(conv_separate=lambda: (F.conv2d(x, wk, None, 2, 1, 1, C), F.conv2d(x, wv, None, 2, 1, 1, C)),
                 conv_multiplier2=lambda: F.conv2d(x, w_kv, None, 2, 1, 1, C))
    return separate, merged, convs


def main():
    p = argparse.ArgumentParser()
    p.add_argument('--batch-size', type=int, default=32)
    p.add_argument('--repeats', type=int, default=30)
    args = p.parse_args()
    torch.manual_seed(0)
    print(f'torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch_size}; ms, medians')
    print(f'{"C x H x W":>12} {"separate":>9} {"merged":>9} {"merged/sep":>10} {"2 convs":>8} {"1 conv x2":>9} {"max|diff|":>10}')
    with torch.inference_mode():
        for C, side in STAGES:
            x = torch.randn(args.batch_size, C, side, side).contiguous(memory_format=torch.channels_last)
            separate, merged, convs = kv_paths(x)
            diff = max((a - b).abs().max().item() for a, b in zip(separate(), merged()))
            t = median_ms(dict(separate=separate, merged=merged, **convs), args.repeats)
            print(f'{f"{C}x{side}x{side}":>12} {t["separate"]:9.2f} {t["merged"]:9.2f} {t["merged"] / t["separate"]:9.2f}x'
                  f' {t["conv_separate"]:8.2f} {t["conv_multiplier2"]:9.2f} {diff:10.1e}')


if __name__ == '__main__':
    main()
