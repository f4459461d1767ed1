"""Attention for bf16 inference on CPU: two GEMMs and a softmax, over groups of samples that fit in cache.

Why: PyTorch's CPU SDPA (a flash kernel) is no faster in bf16 than in fp32 at these models' shapes; its
tiles are too small for oneDNN's bf16 GEMMs. Written out, softmax(q k^T + mask) v runs its two products
as whole bf16 GEMMs, and over groups of samples whose score matrices stay in cache (CvT-13 stage 1: one
image's 3136 x 784 scores are 4.9 MB) it ran 1.2-1.6x faster than SDPA per call, one thread, at CvT-13's
and LG-Tiny's shapes (BENCHMARKS.md, issue 16). The scores come out of the first GEMM in bf16; the softmax
computes in fp32 from them (torch's CPU kernel widens bf16) and is rounded to bf16 for the second GEMM.
SDPA keeps the scores in fp32, so this path rounds once more: top-1 agreement with fp32 on a trained model is
tested (tests/test_train.py). In fp32, SDPA measured as fast or faster at every shape, so fp32 models keep it.

`use_gemm_attention(model)` swaps CvT's `ConvAttention` for a subclass that differs only in the kernel.
Parameter names are unchanged. LG's windows (49 tokens) keep SDPA in bf16 too: there this path measured
0.96x SDPA (`lg_windows.py`).
"""
import torch
import torch.nn as nn

from ..models import cvt

__all__ = ['gemm_attention', 'use_gemm_attention']

# a group of samples' score matrix (and its softmax) stays within this: L2-sized
SCORES_BYTES = 1 << 20


def gemm_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, attn_mask: torch.Tensor = None,
                   scale: float = None) -> torch.Tensor:
    """`F.scaled_dot_product_attention(q, k, v, attn_mask, scale=scale)` for inference (no dropout), as
    two matmuls and a softmax over groups of samples (dim 0): q B h N D, k and v B h M D, an additive
    `attn_mask` broadcasting to 1 h N M -> B h N D."""
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    out = q.new_empty(*q.shape[:-1], v.shape[-1])
    per_sample = q[0].numel() // q.shape[-1] * k.shape[-2] * q.element_size() if len(q) else 1  # h N M scores
    step = max(1, SCORES_BYTES // per_sample)
    for s in range(0, q.shape[0], step):
        scores = torch.matmul(q[s:s + step] * scale, k[s:s + step].transpose(-1, -2))  # b h N M; q is the smaller
        if attn_mask is not None:
            scores += attn_mask
        torch.matmul(scores.softmax(-1), v[s:s + step], out=out[s:s + step])
    return out


class GemmConvAttention(cvt.ConvAttention):
    """CvT's convolutional-projection attention with `gemm_attention`."""

    def forward(self, x: torch.Tensor, H: int, W: int) -> torch.Tensor:
        q, k, v = (cvt.split_heads(t, self.num_heads) for t in self.project(x, H, W))  # B h N D
        x = gemm_attention(q, k, v, scale=self.scale)
        return self.proj(x.transpose(1, 2).flatten(2))  # B h N D -> B N (h D)


def _swapped(module: nn.Module, cls: type) -> nn.Module:
    """`module` as an instance of its subclass `cls`, holding the same submodules and parameters."""
    fast = cls.__new__(cls)
    fast.__dict__.update(module.__dict__)
    return fast


def use_gemm_attention(model: nn.Module) -> nn.Module:
    """Every CvT `ConvAttention` of an eval `model` with `gemm_attention`, in place."""
    for parent in list(model.modules()):
        for name, child in parent.named_children():
            if type(child) is cvt.ConvAttention:
                setattr(parent, name, _swapped(child, GemmConvAttention))
    return model
