"""What token-wise chunking (cvtlab.layers.rowwise_chunked) gains on CPU, measured side by side in one process.

`whole` runs every block's `x + MLP(LayerNorm(x))` as one call (chunk budgets set beyond any tensor);
`chunked` is the library default (4 MiB blocks of the hidden layer in inference, 8 MiB in training).
Parts: (1) the MLP residual of one CvT-13 block per stage on that stage's token count, inference and
training (forward + backward); (2) whole models: CvT-13 inference (fused) and training step, LG-Tiny
inference. Variants take turns (interleaved medians); outputs are compared too.
Usage: .venv/bin/python benchmarks/chunked_mlp.py [--batch-size 32] [--img-size 224] [--repeats 5] [--json F]
"""
import argparse
import contextlib
import json
import statistics

import timm
import torch
import torch.nn.functional as F

import cvtlab  # noqa: F401  (registers the models)
import cvtlab.layers as layers
from cvtlab.benchmark import time_interleaved
from cvtlab.deploy import fuse_for_inference

CPU = torch.device('cpu')


@contextlib.contextmanager
def whole():
    """Every rowwise_chunked call runs as one call."""
    saved = layers.CHUNK_BYTES_INFERENCE, layers.CHUNK_BYTES_TRAINING
    layers.CHUNK_BYTES_INFERENCE = layers.CHUNK_BYTES_TRAINING = 1 << 62
    try:
        yield
    finally:
        layers.CHUNK_BYTES_INFERENCE, layers.CHUNK_BYTES_TRAINING = saved


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

    # (1) one block's MLP residual per stage, on that stage's tokens
    model = timm.create_model('cvt_13')
    fused = fuse_for_inference(model)
    side = size // 4
    for i, stage in enumerate(fused.stages):
        n_tokens = side * side + stage.num_prefix_tokens
        dim = stage.blocks[0].mlp.fc1.in_features
        x = torch.randn(B, n_tokens, dim)
        block = stage.blocks[0]
        with torch.inference_mode():
            rows.append(compare(f'stage {i + 1} MLP residual {B}x{n_tokens}x{dim} infer',
                                lambda: block.mlp_residual(x), args.repeats, B))
        train_block = model.stages[i].blocks[0].train()
        xg = x.clone().requires_grad_()

        def train_step():
            out = train_block.mlp_residual(xg)
            out.backward(torch.ones_like(out))
            grad = xg.grad
            xg.grad = None
            train_block.zero_grad(set_to_none=True)
            return grad
        rows.append(compare(f'stage {i + 1} MLP residual {B}x{n_tokens}x{dim} train', train_step, args.repeats, B))
        side //= 2

    # (2) whole models
    images = torch.randn(B, 3, size, size)
    with torch.inference_mode():
        rows.append(compare('cvt_13 inference (fused)', lambda: fused(images), args.repeats, B))
        lg = timm.create_model('lg_tiny').eval()
        rows.append(compare('lg_tiny inference', lambda: lg(images), args.repeats, B))
    model.train()
    target = torch.randint(0, 1000, (B,))

    def model_step():
        torch.manual_seed(1)  # the same drop-path draws in both variants
        loss = F.cross_entropy(model(images), target)
        loss.backward()
        grad = model.head.weight.grad
        model.zero_grad(set_to_none=True)
        return grad
    rows.append(compare('cvt_13 training step (head grad compared)', model_step, max(3, args.repeats - 2), B))
    if args.json:
        with open(args.json, 'w') as f:
            json.dump(dict(settings=vars(args), threads=torch.get_num_threads(), torch=torch.__version__,
                           rows=rows), f, indent=1)


if __name__ == '__main__':
    main()
