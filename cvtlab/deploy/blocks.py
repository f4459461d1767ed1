"""Running a per-token or per-sample function over cache-sized blocks on CPU: the same numbers, less memory traffic.

Why: on CPU every tensor above glibc's mmap threshold (32 MiB at most) is fresh memory on each call, paid
for in page faults, and a transformer MLP's 4x-wide hidden layer leaves the cache between its two GEMMs.
Run over blocks of a few MiB, the intermediates stay in cache and their memory is reused. What each block
size gains is measured in BENCHMARKS.md.

Only for inference: with gradients recorded, backward keeps every block's tensors anyway (measured: no
gain in a training step). Left whole on GPUs and in ONNX / TorchScript tracing (a traced loop would
freeze the batch size into the graph).
"""
from typing import Callable, Optional

import torch

# `rowwise_chunked`: the widest intermediate of one block of rows stays this small
CHUNK_BYTES_INFERENCE = 4 << 20  # 4 MiB: stays in L2/L3 between the two GEMMs of an MLP
CHUNK_BYTES_COMPILED = 16 << 20  # compiled with static shapes: fewer unrolled copies to compile
# ... and at most this many rows when compiled: a narrow MLP (CvT stage 1: 64 -> 256) does 4x fewer
# multiply-adds per byte of hidden layer than a wide one, and its larger blocks left the cache
CHUNK_ROWS_COMPILED = 8192
# `samplewise_chunked`: below glibc's 32 MiB mmap ceiling, so a group's memory is reused by the next
CHUNK_BYTES_SAMPLES = 16 << 20
# whole networks in sample groups: a group's first-stage map fits this
CHUNK_BYTES_FEATURES = 8 << 20


def runs_whole(x: torch.Tensor) -> bool:
    # recording gradients: `x` requires them (a fused model's weights never do, see `fuse_for_inference`)
    return x.device.type != 'cpu' or (torch.is_grad_enabled() and x.requires_grad) or torch.jit.is_tracing()


def rowwise_chunked(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, width: int,
                    compiled_blocks: bool = False) -> torch.Tensor:
    """`fn(x)` for an `fn` that treats every token (row of the last dim) on its own, run over blocks of rows
    whose widest intermediate (`width` values per row, e.g. an MLP's hidden layer) stays within
    `CHUNK_BYTES_INFERENCE`. Same result, row for row.

    Under torch.compile it runs whole (a loop over symbolic sizes would pin them), unless `compiled_blocks`
    says the caller compiles with static shapes (`compile_for_inference`): then the blocks, at most
    `CHUNK_BYTES_COMPILED` and `CHUNK_ROWS_COMPILED` rows, unroll into one graph that inductor fuses.
    """
    if runs_whole(x):
        return fn(x)
    compiling = torch.compiler.is_compiling()
    if compiling and not compiled_blocks:
        return fn(x)
    budget = CHUNK_BYTES_COMPILED if compiling else CHUNK_BYTES_INFERENCE
    step = max(64, budget // (width * x.element_size()))
    if compiling:
        step = min(step, CHUNK_ROWS_COMPILED)
    rows = x.numel() // x.shape[-1]
    if rows < 2 * step:
        return fn(x)
    flat = x.reshape(rows, x.shape[-1])  # B ... C -> (B ...) C
    if compiling:  # one cat: inductor writes each block into place itself
        out = torch.cat([fn(block) for block in flat.split(step)])
    else:
        out = _blocks_into_place(fn, flat, step)
    return out.reshape(*x.shape[:-1], out.shape[-1])


def samplewise_chunked(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, bytes_per_sample: int,
                       budget: Optional[int] = None) -> torch.Tensor:
    """`fn(x)` for an `fn` that treats every sample (index of dim 0) on its own, run over groups of samples
    whose widest intermediate (`bytes_per_sample` each) stays within `budget` bytes (default
    `CHUNK_BYTES_SAMPLES`). The fewest groups that fit, of even size where the batch allows (32 samples at
    10 per group run as 8 + 8 + 8 + 8, not 10 + 10 + 10 + 2). Also whole under torch.compile.
    """
    if runs_whole(x) or torch.compiler.is_compiling():
        return fn(x)
    batch = x.shape[0]
    step = max(1, (CHUNK_BYTES_SAMPLES if budget is None else budget) // max(bytes_per_sample, 1))
    if step >= batch:
        return fn(x)
    groups = -(-batch // step)
    return _blocks_into_place(fn, x, -(-batch // groups))


def _blocks_into_place(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, step: int) -> torch.Tensor:
    """fn over slices of `step` along dim 0, each written into one preallocated output (no cat): a slice's
    temporaries are freed and reused by the next."""
    out = None
    for start in range(0, x.shape[0], step):
        y = fn(x[start:start + step])
        if out is None:
            out = y.new_empty((x.shape[0], *y.shape[1:]))
        out[start:start + step] = y
    return out
