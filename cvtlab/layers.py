"""Paper-neutral primitives: parity with released checkpoints (LayerNormFp32) and CPU speed (rowwise_chunked).

Everything else comes from timm.layers.
"""
from typing import Callable, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F


class LayerNormFp32(nn.LayerNorm):
    """LayerNorm computed in fp32 whatever the input dtype, result cast back.

    parity: the official CvT LayerNorm upcasts to fp32 (eps 1e-5), which keeps bf16/fp16 autocast
    runs numerically close to fp32 ones.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.weight.float() if self.weight is not None else None
        bias = self.bias.float() if self.bias is not None else None
        return F.layer_norm(x.float(), self.normalized_shape, weight, bias, self.eps).to(x.dtype)


def map_to_tokens(x: torch.Tensor) -> torch.Tensor:
    """B C H W -> B (H W) C."""
    return x.flatten(2).transpose(1, 2)


# Row blocks for `rowwise_chunked`: the widest intermediate of one block of rows stays this small.
CHUNK_BYTES_INFERENCE = 4 << 20  # 4 MiB: stays in L2/L3 between the two GEMMs of an MLP
CHUNK_BYTES_TRAINING = 8 << 20  # larger: every block adds a weight-gradient GEMM and an accumulation
CHUNK_BYTES_COMPILED = 16 << 20  # under torch.compile (inference): fewer unrolled copies to compile
# ... and at most this many rows: a narrow MLP (CvT stage 1: 64 -> 256) does 4x fewer multiply-adds per byte
# of hidden layer than stage 3's, and its 16 MiB blocks (16384 rows) left the cache: fc1 / fc2 at 53% / 62%
# of the probe's rate in the frozen profile, against ~100% for stage 3's 2730-row blocks
CHUNK_ROWS_COMPILED = 8192


def rowwise_chunked(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, width: int,
                    compiled_blocks: bool = False) -> torch.Tensor:
    """`fn(x)` for an `fn` that treats every token (row of the last dim) on its own, run on CPU over
    blocks of rows whose widest intermediate (`width` values per row, e.g. an MLP's hidden layer) stays
    a few MiB. Same result, row for row.

    Why: on CPU every tensor above glibc's mmap threshold (32 MiB at most) is fresh memory on each
    call, paid for in page faults, and an MLP's 4x-wide hidden layer leaves the cache between its two
    GEMMs. CvT-13's stage-1 MLP residual at 224 px, batch 32 (100352 tokens, 103 MB hidden) ran 3.1x
    faster in inference and 1.5x in training in blocks; whole CvT-13 inference 1.13x, LG-Tiny 1.12x,
    training 1.00x (benchmarks/chunked_mlp.py, BENCHMARKS.md).
    Under torch.compile it runs whole (dynamo cannot tell static sizes from symbolic ones here, and a loop
    over symbolic sizes would pin them), unless `compiled_blocks` says the caller compiles inference with
    static shapes (`cvtlab.compile_for_inference`): then the blocks, 16 MiB and 8192 rows at most, unroll
    into one graph that inductor fuses (CvT-13 1.05x over compiled whole, BENCHMARKS.md). Also whole on GPUs
    and in ONNX tracing (a traced loop would freeze the batch size).
    """
    if x.device.type != 'cpu' or torch.jit.is_tracing():
        return fn(x)
    grad = torch.is_grad_enabled()
    compiling = torch.compiler.is_compiling()
    if compiling and (grad or not compiled_blocks):
        return fn(x)
    budget = CHUNK_BYTES_COMPILED if compiling else CHUNK_BYTES_TRAINING if grad else CHUNK_BYTES_INFERENCE
    rows = x.numel() // x.shape[-1]
    step = max(64, budget // (width * x.element_size()))
    if compiling:
        step = min(step, CHUNK_ROWS_COMPILED)
    if rows < 2 * step:
        return fn(x)
    flat = x.reshape(rows, x.shape[-1])
    if grad or compiling:  # one cat: autograd, or inductor, which writes each block into place itself
        out = torch.cat([fn(block) for block in flat.split(step)])
    else:
        out = _blocks_into_place(fn, flat, step)
    return out.reshape(*x.shape[:-1], out.shape[-1])


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


CHUNK_BYTES_SAMPLES = 16 << 20  # `samplewise_chunked`: below glibc's 32 MiB mmap ceiling, so memory is reused


def samplewise_chunked(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, bytes_per_sample: int,
                       budget: Optional[int] = None) -> torch.Tensor:
    """`fn(x)` for an `fn` that treats every sample (index of dim 0) on its own, run in CPU inference over
    groups of samples whose widest intermediate (`bytes_per_sample` each) stays within `budget` bytes
    (default `CHUNK_BYTES_SAMPLES`, 16 MiB). The fewest groups that fit, of even size where the batch allows
    (32 samples at 10 per group run as 8 + 8 + 8 + 8, not 10 + 10 + 10 + 2).

    Why: the same page faults and cache misses as in `rowwise_chunked`, for layers whose tokens depend on
    each other within a sample (attention). LG-Tiny's stage-1 qkv map is 115 MB at 224 px, batch 32;
    its attention in groups of 4 images made the model 1.18x faster in inference (BENCHMARKS.md); whole
    networks run this way through `features_in_sample_groups`.
    Left whole when recording gradients (backward keeps every group's tensors anyway), on GPUs, under
    torch.compile and in ONNX tracing (a traced split would freeze the batch size).
    """
    if (x.device.type != 'cpu' or torch.is_grad_enabled() or torch.jit.is_tracing()
            or torch.compiler.is_compiling()):
        return fn(x)
    batch = x.shape[0]
    step = max(1, (CHUNK_BYTES_SAMPLES if budget is None else budget) // max(bytes_per_sample, 1))
    if step >= batch:
        return fn(x)
    groups = -(-batch // step)
    return _blocks_into_place(fn, x, -(-batch // groups))


CHUNK_BYTES_FEATURES = 8 << 20  # `features_in_sample_groups`: a group's first-stage map fits this


def features_in_sample_groups(features: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor,
                              first_conv: nn.Conv2d) -> torch.Tensor:
    """A model's whole feature extraction, `features(x)`, over groups of samples whose first-stage map
    (what `first_conv`, the stem, makes of one image) fits `CHUNK_BYTES_FEATURES`, in CPU inference
    (`samplewise_chunked`); the caller must run it whole in train mode (BatchNorm's batch statistics).

    Why: every stage's maps of a few images stay in cache, where a batch's would not. At 224 px, batch 32:
    CvT-13 in groups of 8 1.08x, LG-Tiny in groups of 6 1.07x; CvT-13 at 384, batch 8, in 3 + 3 + 2 1.07x
    (BENCHMARKS.md; more where other jobs share the cache).
    """
    sh, sw = first_conv.stride
    first_map = (x.shape[-2] // sh) * (x.shape[-1] // sw) * first_conv.out_channels * x.element_size()
    return samplewise_chunked(features, x, first_map, budget=CHUNK_BYTES_FEATURES)


class TokenwiseMlpResidual:
    """Mixin for pre-norm transformer blocks with `norm2`, `mlp` and `drop_path`: the second residual
    `x + drop_path(mlp(norm2(x)))`, every part of which acts per token, through `rowwise_chunked`."""
    compiled_blocks = False  # True: compiled for inference with static shapes (cvtlab.compile_for_inference)

    def mlp_residual(self, x: torch.Tensor) -> torch.Tensor:
        hidden = self.mlp.fc1.out_features
        if self.training and not isinstance(self.drop_path, nn.Identity):  # drop path picks whole samples
            return x + self.drop_path(rowwise_chunked(self._mlp_branch, x, hidden))
        return rowwise_chunked(self._mlp_residual, x, hidden, self.compiled_blocks)

    def _mlp_branch(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.norm2(x))

    def _mlp_residual(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.mlp(self.norm2(x))


def set_compiled_blocks(model: nn.Module, static: bool = True) -> nn.Module:
    """Tell every `TokenwiseMlpResidual` block in `model` that it is compiled for inference with static
    shapes (`static`), so that its token blocks unroll into the compiled graph. Returns `model`."""
    for m in model.modules():
        if isinstance(m, TokenwiseMlpResidual):
            m.compiled_blocks = static
    return model
