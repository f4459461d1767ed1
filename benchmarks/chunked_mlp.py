"""What token-wise chunking (`cvtlab.deploy.blocks.rowwise_chunked`) gains on CPU, measured side by side in one process.

`whole` runs every block's MLP residual, x + MLP(LayerNorm(x)), as one call (the token-block budget set
beyond any tensor); `chunked` is the default of `cvtlab.fuse_for_inference` (4 MiB blocks of the hidden
layer). Inference only: with gradients recorded the blocks always run whole (a training step gained
nothing from them). Parts: (1) the MLP residual of one fused CvT-13 block per stage on that stage's token
count; (2) whole fused models, CvT-13 and LG-Tiny (sample groups on in both variants). Variants take
turns (interleaved medians); outputs are compared too.
Usage: .venv/bin/python benchmarks/chunked_mlp.py [--batch-size 32] [--img-size 224] [--repeats 5] [--json F]
"""
import argparse
import contextlib
import json
import statistics

import timm
import torch

import cvtlab  # registers the models
from cvtlab.benchmark import time_interleaved
from cvtlab.deploy import blocks

CPU = torch.device('cpu')


@contextlib.contextmanager
def whole():
    """Every rowwise_chunked call runs as one call."""
    saved = blocks.CHUNK_BYTES_INFERENCE
    blocks.CHUNK_BYTES_INFERENCE = 1 << 62
    try:
        yield
    finally:
        blocks.CHUNK_BYTES_INFERENCE = saved


def compare(label: str, run, repeats: int, batch: int) -> dict:
    """Time run() whole and chunked, interleaved; return img/s, speedup and the outputs' max |diff|."""
    def run_whole():
        with whole():
            return run()
    diff = (run_whole() - run()).abs().max().item()  # also the warm-up call of each
    times = time_interleaved({'whole': run_whole, 'chunked': run}, warmup=0, repeats=repeats, device=CPU)
    t_whole, t_chunked = statistics.median(times['whole']), statistics.median(times['chunked'])
    row = dict(case=label, whole_ms=1e3 * t_whole, chunked_ms=1e3 * t_chunked, speedup=t_whole / t_chunked,
               img_per_sec_whole=batch / t_whole, img_per_sec_chunked=batch / t_chunked, max_abs_diff=diff)
    print(f"{label:42s} whole {row['whole_ms']:8.1f} ms  chunked {row['chunked_ms']:8.1f} ms  "
          f"x{row['speedup']:.2f}  max|diff| {diff:.1e}", flush=True)
    return row


def main():
    p = argparse.ArgumentParser()
    p.add_argument('--batch-size', type=int, default=32)
    p.add_argument('--img-size', type=int, default=224)
    p.add_argument('--repeats', type=int, default=5)
    p.add_argument('--json', help='also write the rows here')
    args = p.parse_args()
    B, size = args.batch_size, args.img_size
    torch.manual_seed(0)
    print(f'batch {B}, {size} px, {torch.get_num_threads()} threads, torch {torch.__version__}')
    rows = []
    fused = cvtlab.fuse_for_inference(timm.create_model('cvt_13'))
    with torch.inference_mode():
        # (1) one block's MLP residual per stage, on that stage's tokens
        side = size // 4
        for i, stage in enumerate(fused.stages):
            n_tokens = side * side + stage.num_prefix_tokens
            block = stage.blocks[0]
            dim, hidden = block.mlp.fc1.in_features, block.mlp.fc1.out_features
            x = torch.randn(B, n_tokens, dim)

            def residual(t, block=block):
                return t + block.mlp(block.norm2(t))
            rows.append(compare(f'stage {i + 1} MLP residual {B}x{n_tokens}x{dim} infer',
                                lambda: blocks.rowwise_chunked(residual, x, hidden), args.repeats, B))
            side //= 2

        # (2) whole models
        images = torch.randn(B, 3, size, size)
        rows.append(compare('cvt_13 inference (fused)', lambda: fused(images), args.repeats, B))
        lg = cvtlab.fuse_for_inference(timm.create_model('lg_tiny'))
        rows.append(compare('lg_tiny inference (fused)', lambda: lg(images), args.repeats, B))
    if args.json:
        with open(args.json, 'w') as f:
            json.dump(dict(settings=vars(args), threads=torch.get_num_threads(), torch=torch.__version__,
                           rows=rows), f, indent=1)


if __name__ == '__main__':
    main()
