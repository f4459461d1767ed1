"""Attention for bf16 inference on CPU: two GEMMs and a softmax, over groups of samples that fit in cache.

Why: PyTorch's CPU SDPA (a flash kernel) is no faster in bf16 than in fp32 at these models' shapes; its
tiles are too small for oneDNN's bf16 GEMMs. Written out, softmax(q k^T + mask) v runs its two products
as whole bf16 GEMMs, and over groups of samples whose score matrices stay in cache (CvT-13 stage 1: one
image's 3136 x 784 scores are 4.9 MB) it ran 1.2-1.6x faster than SDPA per call, one thread, at CvT-13's
and LG-Tiny's shapes (BENCHMARKS.md, issue 16). The softmax itself computes in fp32 (torch's CPU kernel
widens bf16) and is rounded to bf16 for the second product, as any bf16 attention does. In fp32 SDPA
measured as fast or faster at every shape, so fp32 models keep it.

`use_gemm_attention(model)` swaps CvT's `ConvAttention` and LG's `AttentionPath` for subclasses that differ
only in the kernel (CvT's scale folded into `proj_q`). Parameter names are unchanged.
"""
import torch
import torch.nn as nn

from ..models import cvt, lg
from ..models.windows import (from_window_frame, merge_windows, split_windows, to_window_frame,
                              window_bias_and_mask)

__all__ = ['gemm_attention', 'use_gemm_attention']

# a group of samples' score matrix (and its softmax) stays within this: L2-sized
SCORES_BYTES = 1 << 20


def gemm_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, attn_mask: torch.Tensor = None,
                   scale: float = None) -> torch.Tensor:
    """`F.scaled_dot_product_attention(q, k, v, attn_mask, scale=scale)` for inference (no dropout), as
    two matmuls and a softmax over groups of samples (dim 0): q B h N D, k and v B h M D, an additive
    `attn_mask` broadcasting to 1 h N M -> B h N D."""
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    batch, per_sample = q.shape[0], q[0].numel() // q.shape[-1] * k.shape[-2] * q.element_size()
    step = max(1, SCORES_BYTES // per_sample)
    out = q.new_empty(*q.shape[:-1], v.shape[-1])
    for s in range(0, batch, step):
        qs = q[s:s + step] if scale == 1.0 else q[s:s + step] * scale  # on q: smaller than the scores
        scores = torch.matmul(qs, k[s:s + step].transpose(-1, -2))  # b h N M
        if attn_mask is not None:
            scores += attn_mask
        torch.matmul(scores.softmax(-1), v[s:s + step], out=out[s:s + step])
    return out


class GemmConvAttention(cvt.ConvAttention):
    """CvT's convolutional-projection attention with `gemm_attention`; q comes pre-scaled from `proj_q`."""

    def forward(self, x: torch.Tensor, H: int, W: int) -> torch.Tensor:
        q, k, v = (cvt.split_heads(t, self.num_heads) for t in self.project(x, H, W))  # B h N D
        x = gemm_attention(q, k, v, scale=1.0)
        return self.proj(x.transpose(1, 2).flatten(2))  # B h N D -> B N (h D)

    @classmethod
    @torch.no_grad()
    def from_attention(cls, attn: cvt.ConvAttention) -> 'GemmConvAttention':
        fast = cls.__new__(cls)
        fast.__dict__.update(attn.__dict__)  # the same submodules and parameters, under the same names
        fast.proj_q.weight.mul_(attn.scale)  # (s W) x + s b = s (W x + b): the scale costs nothing
        if fast.proj_q.bias is not None:
            fast.proj_q.bias.mul_(attn.scale)
        fast.scale = 1.0
        return fast


class GemmAttentionPath(lg.AttentionPath):
    """One LG path whose window attention runs as `gemm_attention` (the same windows, bias and mask)."""

    def attend(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[1:3]
        qkv = self.qkv(to_window_frame(x, self.window_size, self.shift))  # B Hp Wp 3C
        q, k, v = split_windows(qkv, self.num_heads, self.window_size)  # B (nW h) N D
        mask = window_bias_and_mask(self.rel_pos_bias(), h, w, qkv.shape[1], qkv.shape[2], self.window_size,
                                    self.shift, q.dtype)
        x = merge_windows(gemm_attention(q, k, v, mask), qkv.shape[1], qkv.shape[2], self.window_size)
        return self.proj(from_window_frame(x, h, w, self.shift))

    @classmethod
    def from_path(cls, path: lg.AttentionPath) -> 'GemmAttentionPath':
        fast = cls.__new__(cls)
        fast.__dict__.update(path.__dict__)
        return fast


def use_gemm_attention(model: nn.Module) -> nn.Module:
    """Every CvT `ConvAttention` and LG `AttentionPath` of an eval `model` with `gemm_attention`, in place."""
    for parent in list(model.modules()):
        for name, child in parent.named_children():
            if type(child) is cvt.ConvAttention:
                setattr(parent, name, GemmConvAttention.from_attention(child))
            elif type(child) is lg.AttentionPath:
                setattr(parent, name, GemmAttentionPath.from_path(child))
    return model
