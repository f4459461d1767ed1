"""`fuse_for_inference`: an eval-only copy of a model, rebuilt from module swaps for fast inference.

The model files (`cvtlab/models/`) read like the papers; everything here changes how the same function
is computed, never what it computes (outputs equal the original eval model's within 1e-5):
- BatchNorm after a conv (CvT's q/k/v projections) folded into the conv's weights and bias;
- CvT's QuickGELU MLP as timm's `Mlp` with SiLU on pre-scaled weights (one element-wise pass);
- every transformer block's MLP residual, x + mlp(norm2(x)), over cache-sized blocks of tokens, and an
  LG block's attention over groups of samples (`blocks.py`);
- the whole forward over groups of samples whose first-stage map fits the cache (`SampleGroups`), and on
  CPU a batch split across the threads by samples (`parallel.py`);
- on CPUs where oneDNN's GEMM measures faster than `F.linear`'s, every Linear through oneDNN with packed
  weights, an MLP's activation fused into its first Linear (`kernels.py`);
- wherever oneDNN runs the dtype, every conv with its weights kept in oneDNN's layout (`kernels.py`);
- LG's window attention on windows cut from the C-wide map before qkv, not from the 3C-wide qkv map
  (`lg_windows.py`);
- in bf16, CvT's attention as two GEMMs and a softmax over cache-sized groups of samples (`attention.py`);
- on CPU, glibc's malloc keeping freed memory for the next call instead of fresh pages (`memory.py`).
Parameter and buffer names stay those of the model, under `model.` (BN folded: `conv.bias`, no `bn.*`).
"""
import copy
import logging

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils.fusion import fuse_conv_bn_eval
from timm.layers import Mlp

from ..models import cvt, lg
from . import blocks, parallel
from .attention import use_gemm_attention
from .blocks import rowwise_chunked, samplewise_chunked
from .kernels import fastest_linear_kernel, onednn_supports, pack_convs, pack_linears
from .lg_windows import use_window_first_paths
from .memory import retain_freed_memory
from .wrapper import Wrapper

__all__ = ['fuse_for_inference', 'InferenceBlock', 'SampleGroups']

_logger = logging.getLogger('cvtlab')


class InferenceBlock(nn.Module):
    """A pre-norm transformer block (CvT's or LG's `Block`) in eval mode: the same two residuals, with the
    MLP residual over blocks of tokens and, with `group_attention`, the attention over groups of samples.

    `compiled_blocks` is set by `compile_for_inference` when it compiles with static shapes: the token
    blocks then unroll into the compiled graph.
    """

    def __init__(self, block: nn.Module, group_attention: bool):
        super().__init__()
        self.norm1, self.attn, self.norm2, self.mlp = block.norm1, block.attn, block.norm2, block.mlp
        self.group_attention = group_attention
        self.compiled_blocks = False

    def forward(self, x: torch.Tensor, *size: int) -> torch.Tensor:
        if self.group_attention:  # the widest tensor is the qkv map: 3x the sample's own bytes
            per_sample = 3 * x[0].numel() * x.element_size()
            x = x + samplewise_chunked(lambda t: self.attn(self.norm1(t), *size), x, per_sample)
        else:
            x = x + self.attn(self.norm1(x), *size)
        return rowwise_chunked(self._mlp_residual, x, self.mlp.fc1.out_features, self.compiled_blocks)

    def _mlp_residual(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.mlp(self.norm2(x))

    def train(self, mode: bool = True) -> 'InferenceBlock':
        if mode:  # no stochastic depth, and BatchNorm folded with its statistics
            raise RuntimeError('a model from cvtlab.fuse_for_inference is for inference only; train the original')
        return super().train(False)


class SampleGroups(Wrapper):
    """`model` (eval only) run over groups of samples whose first-stage map (the output of the stem conv
    of one image) fits `CHUNK_BYTES_FEATURES`: every stage's maps of a few images stay in cache where a
    whole batch's would not. With `sample_parallel` (the default) a CPU batch is also split across the threads
    by samples, each share on a one-thread worker, when it shares out evenly (`parallel.py`). Attributes not
    found here are looked up on `model`."""

    def __init__(self, model: nn.Module, stem: nn.Module, dtype: torch.dtype = torch.float32,
                 sample_parallel: bool = True):
        super().__init__()
        self.model = model
        self.stem_stride, self.stem_channels = stem.stride, stem.out_channels  # not the module: no second registration
        self.dtype = dtype  # of the weights: inputs are cast to it, outputs come back in fp32
        self.sample_parallel = sample_parallel

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._over_samples(self.model, x.to(self.dtype)).float()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self._over_samples(self.model.forward_features, x.to(self.dtype)).float()

    def _over_samples(self, fn, x: torch.Tensor) -> torch.Tensor:
        def in_groups(part: torch.Tensor) -> torch.Tensor:
            return samplewise_chunked(fn, part, self._first_map_bytes(part), blocks.CHUNK_BYTES_FEATURES)

        # autocast, like grad mode, is the caller thread's own: under it the batch runs whole, in that thread
        if (not self.sample_parallel or blocks.runs_whole(x) or torch.compiler.is_compiling()
                or torch.is_autocast_enabled('cpu')):
            return in_groups(x)
        return parallel.sample_parallel(in_groups, x, torch.get_num_threads())

    def _first_map_bytes(self, x: torch.Tensor) -> int:
        (sh, sw), (H, W) = self.stem_stride, x.shape[-2:]
        return (H // sh) * (W // sw) * self.stem_channels * x.element_size()


def fold_batchnorm(module: nn.Module) -> nn.Module:
    """Every CvT `ConvProjection` (depth-wise conv -> BatchNorm) and `ConvStem` (conv -> BatchNorm -> GELU) with
    the BatchNorm folded into the conv's weights and bias, in place."""
    for m in module.modules():
        if isinstance(m, (cvt.ConvProjection, cvt.ConvStem)) and isinstance(m.bn, nn.BatchNorm2d):
            m.conv = fuse_conv_bn_eval(m.conv.eval(), m.bn.eval())
            m.bn = nn.Identity()
    return module


@torch.no_grad()
def silu_mlp(mlp: cvt.QuickGeluMlp) -> Mlp:
    """fc2(QuickGELU(fc1 x)) = (W2 / a) SiLU(a W1 x + a b1) + b2 with a = 1.702, the scales in the weights."""
    a = mlp.act_scale
    fc1, fc2 = mlp.fc1, mlp.fc2
    fast = Mlp(fc1.in_features, fc1.out_features, fc2.out_features, act_layer=nn.SiLU,
               device=fc1.weight.device, dtype=fc1.weight.dtype)
    fast.fc1.weight.copy_(fc1.weight * a)
    fast.fc1.bias.copy_(fc1.bias * a)
    fast.fc2.weight.copy_(fc2.weight / a)
    fast.fc2.bias.copy_(fc2.bias)
    return fast.eval()


def _swap_blocks(model: nn.Module):
    """Replace CvT / LG blocks by `InferenceBlock`s in place (CvT's with the SiLU MLP)."""
    for parent in list(model.modules()):
        for name, child in parent.named_children():
            if isinstance(child, cvt.Block):
                child.mlp = silu_mlp(child.mlp)
                setattr(parent, name, InferenceBlock(child, group_attention=False))
            elif isinstance(child, lg.Block):
                setattr(parent, name, InferenceBlock(child, group_attention=True))


def _stem(model: nn.Module) -> nn.Module:
    """The conv that makes the first-stage map."""
    return model.stages[0].patch_embed.proj if isinstance(model, cvt.CvT) else model.patch_embed.proj


class MixedLayerNorm(nn.LayerNorm):
    """A LayerNorm for bf16 activations with fp32 parameters, computing in fp32 in one pass: torch's
    layer_norm kernels take a bf16 input with fp32 weight and bias and accumulate in fp32, so there is no
    cast of the input to fp32 and back (`LayerNormFp32`'s two extra passes over the tokens)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)


def to_bf16(model: nn.Module) -> nn.Module:
    """Weights in bf16, in place, except the LayerNorms': every LayerNorm keeps fp32 parameters and computes
    in fp32 (`MixedLayerNorm`), returning bf16. Attention's softmax computes in fp32
    (`attention.gemm_attention`)."""
    for parent in list(model.modules()):
        for name, child in parent.named_children():
            if isinstance(child, nn.LayerNorm):
                mixed = MixedLayerNorm(child.normalized_shape, child.eps, child.elementwise_affine,
                                       bias=child.bias is not None)
                mixed.load_state_dict(child.state_dict())
                setattr(parent, name, mixed)
    norms = {id(p) for m in model.modules() if isinstance(m, nn.LayerNorm) for p in m.parameters()}
    for p in model.parameters():
        if id(p) not in norms:
            p.data = p.data.to(torch.bfloat16)
    for name, buf in model.named_buffers():
        if buf.is_floating_point():
            buf.data = buf.data.to(torch.bfloat16)
    return model


def fuse_for_inference(model: nn.Module, inplace: bool = False, linear_kernel: str = 'auto',
                       dtype: torch.dtype = torch.float32) -> nn.Module:
    """An eval-only copy of `model` (or `model` itself, rebuilt, with `inplace`) computing the same outputs
    faster (within 1e-5; module docstring). Works for any timm model: cvtlab's families get the swaps above
    (whole classifiers also `SampleGroups`; feature extractors built on them keep their own forward), other
    families timm's own `reparameterize_model`. Do not train the result: BatchNorm statistics are baked in.

    `linear_kernel`: 'auto' runs cvtlab's Linears on whichever of oneDNN (pre-packed weights, activation
    fused) and `F.linear` a short probe measures faster on this machine (`kernels.fastest_linear_kernel`);
    'onednn' or 'torch' forces one.

    `dtype=torch.bfloat16` (cvtlab's families): bf16 weights and activations, LayerNorm in fp32, inputs cast
    and logits returned in fp32; outputs then differ from fp32 by bf16 rounding (~1e-2), not 1e-5. On a CPU
    without bf16 instructions (avx512_bf16 / AMX) it warns and keeps fp32, which is faster there.

    For cvtlab's families on CPU it also tunes glibc's malloc, process-wide and once, to keep freed memory for
    the next call (`memory.retain_freed_memory`: fewer page faults; CVTLAB_RETAIN_MEMORY=0 opts out).
    """
    if linear_kernel not in ('auto', 'onednn', 'torch'):
        raise ValueError(f"linear_kernel must be 'auto', 'onednn' or 'torch', not {linear_kernel!r}")
    from timm.utils.model import reparameterize_model
    model = (model if inplace else copy.deepcopy(model)).eval()
    reparameterize_model(model, inplace=True)  # other timm families' own `fuse()` / `reparameterize()`
    fold_batchnorm(model)
    _swap_blocks(model)
    if not isinstance(model, (cvt.CvT, lg.LGTransformer)):
        return model
    if dtype not in (torch.float32, torch.bfloat16):
        raise ValueError(f'dtype must be torch.float32 or torch.bfloat16, not {dtype}')
    if dtype == torch.bfloat16 and not bf16_supported():
        _logger.warning('this CPU has no bf16 instructions (avx512_bf16 / AMX): keeping fp32, which is faster here')
        dtype = torch.float32
    if dtype == torch.bfloat16:
        use_gemm_attention(model)
    use_window_first_paths(model)
    if linear_kernel == 'auto':
        # timed on the threads that will run the Linears: a batch split across the threads runs them on
        # one-thread workers (`parallel.py`)
        threads = torch.get_num_threads()
        linear_kernel = fastest_linear_kernel(1 if threads >= 2 else threads, dtype)
    if linear_kernel == 'onednn':
        if not onednn_supports(dtype):
            raise ValueError(f"linear_kernel='onednn': this torch has no oneDNN {dtype} GEMM")
        pack_linears(model)
    if onednn_supports(dtype):  # the convs' kernel is oneDNN's either way: kept packed, not reordered per call
        pack_convs(model)
    if dtype == torch.bfloat16:
        to_bf16(model)
    model.requires_grad_(False)  # inference only: calls without torch.no_grad() take the fast paths too
    if _stem(model).weight.device.type == 'cpu':
        retain_freed_memory()  # process-wide, once; CVTLAB_RETAIN_MEMORY=0 leaves malloc as it is
    return SampleGroups(model, _stem(model), dtype).eval()


def bf16_supported() -> bool:
    """Whether this CPU has native bf16 instructions (read from /proc/cpuinfo where it exists)."""
    from ..benchmark.limits import cpu_info
    return cpu_info()['bf16']
