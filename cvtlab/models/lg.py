"""LG-Transformer: Local-to-Global Self-Attention in Vision Transformers (Li et al., 2021, arXiv 2107.04735).

**This is a clean-room reconstruction; no official code exists** (the authors' repository is empty)
and the paper's full text was not available to us. The block follows the design note
`docs/lg_transformer.md`: a Swin skeleton whose window attention is replaced by several paths of
window attention at progressively coarser granularity, upsampled back and summed. Until someone
checks it against the PDF, do not describe it as "the paper's model".

Contents, top-down: PatchEmbed -> local-to-global attention (`AttentionPath`, one granularity, whose
window attention is Swin's, as pure functions in `windows.py`; `LocalToGlobalAttention`, the fusion) ->
Block -> PatchMerging -> Stage -> LGTransformer, then the variant table, pretrained cfgs and timm
registration.

Provenance of the design ([D] derived by arithmetic in the design note, [C] our choice where nothing
readable from the paper decides it; the Swin skeleton itself is [R] recalled):
- [D] per-path qkv / proj, summed: the only layout among those tried whose budget reproduces the
  published LG-T size (32.6M params, 4.8 GFLOPs at 224);
- [C] downsampling by average pooling (kernel = stride = rate, `ceil_mode`: edge cells average only
  real tokens); upsampling bilinear, align_corners=False, to `rate` x the coarse map, then cropped;
- [C] every path has its own relative position bias table, qkv bias and proj bias (< 0.1M params);
- [C] shifts: a path shifts its windows by M // 2 in odd blocks unless its map fits in one window at
  the design resolution `img_size` (Swin's rule, applied per path). At 224 this gives the design note's
  layout: local and intermediate paths alternate, the coarsest path and stage 4 never shift;
- [C] windows that run past the map are padded and the padding is masked out of attention (Swin
  attends to its zero padding; at sizes that need no padding the two are identical);
- [C] stochastic depth rises linearly over all blocks (Swin); one dropout after the fused output;
- [C] `global_path='adaptive_pool'`: the coarsest pooled path pools by
  ceil(side / M) instead of its fixed rate, so its map always fits one window (global at any input
  size, same weights, identical to the fixed rate at 224). We pool by a computed rate rather than
  `AdaptiveAvgPool2d(M)` so that maps smaller than M are not duplicated into M x M;
- [C] `lg_nano` (32 px images) is ours, not the paper's.

Attention runs through `F.scaled_dot_product_attention` with windows and heads folded into one
dimension (4-D inputs, exportable). No branch depends on a shape: every map is padded to whole windows
(by 0 when it fits) and cropped back, so one traced or exported graph serves every input size.
Fast CPU inference (token blocks, sample groups, compile) is `cvtlab.fuse_for_inference` (`cvtlab/deploy/`).
"""
from dataclasses import asdict, dataclass
from typing import List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import DropPath, Mlp, to_2tuple, trunc_normal_
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models._features import feature_take_indices

from ._contract import StagedClassifierMixin
from .windows import attend_in_windows, from_window_frame, relative_position_index, to_window_frame

__all__ = ['LGTransformer', 'LGConfig', 'LG_VARIANTS']


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


class PatchEmbed(nn.Module):
    """Non-overlapping p x p patches (conv, stride p) + LayerNorm, as Swin; the image is padded to a multiple of p."""

    def __init__(self, in_chans: int, dim: int, patch_size: int):
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_chans, dim, patch_size, patch_size)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.patch_size
        x = F.pad(x, (0, (-x.shape[-1]) % p, 0, (-x.shape[-2]) % p))  # B C H W, H and W now multiples of p
        return self.norm(self.proj(x).permute(0, 2, 3, 1))  # B C H/p W/p -> B H/p W/p C


# --- local-to-global attention (docs/lg_transformer.md) --------------------------------------------------------
class AttentionPath(nn.Module):
    """One granularity: average-pool by `rate`, window MSA with this path's own
    qkv, proj and relative position bias, bilinear upsampling back to the input map.

    rate 1 is the local path (plain Swin window attention). `adaptive=True` replaces the fixed rate by
    ceil(side / M) per side, so the pooled map always fits one window (global at any input size).
    """

    def __init__(self, dim: int, num_heads: int, window_size: int, rate: int, shift: int, adaptive: bool,
                 qkv_bias: bool, attn_drop: float):
        super().__init__()
        self.num_heads = num_heads
        self.window_size = window_size
        self.rate = rate
        self.shift = shift
        self.adaptive = adaptive
        self.pooled = rate > 1 or adaptive  # static: the local path skips pooling and upsampling
        self.attn_drop = attn_drop
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window_size - 1) ** 2, num_heads))
        self.register_buffer('relative_position_index', relative_position_index(window_size), persistent=False)

    def init_non_persistent_buffers(self):
        # The index is not in the weights (it follows from window_size). HF transformers' TimmWrapper builds
        # timm models without initialising buffers and calls this hook to fill those (as timm's Swin has it).
        index = relative_position_index(self.window_size)
        self.relative_position_index.copy_(index.to(self.relative_position_index.device))

    def extra_repr(self) -> str:
        rate = 'ceil(side/M)' if self.adaptive else self.rate
        return f'rate={rate}, window_size={self.window_size}, shift={self.shift}, num_heads={self.num_heads}'

    def rel_pos_bias(self) -> torch.Tensor:
        N = self.window_size * self.window_size
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)]  # (N N) h
        return bias.view(N, N, -1).permute(2, 0, 1)  # h N N

    def pool_rates(self, H: int, W: int) -> Tuple[int, int]:
        if self.adaptive:
            return _ceil_div(H, self.window_size), _ceil_div(W, self.window_size)
        return self.rate, self.rate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """B H W C (normalised) -> B H W C: this path's contribution at full resolution."""
        H, W = x.shape[1:3]
        rh, rw = self.pool_rates(H, W)
        if self.pooled:
            # B H W C -> B ceil(H/rh) ceil(W/rw) C; ceil_mode: edge cells average only the real tokens
            x = F.avg_pool2d(x.permute(0, 3, 1, 2), (rh, rw), ceil_mode=True).permute(0, 2, 3, 1)
        h, w = x.shape[1:3]
        x = self.attend(x)  # proj commutes with (linear) upsampling: on the small map
        if self.pooled:
            # each coarse cell is centred on its rh x rw block: upsample by exactly (rh, rw), then crop
            x = F.interpolate(x.permute(0, 3, 1, 2), size=(h * rh, w * rw), mode='bilinear', align_corners=False)
            x = x.permute(0, 2, 3, 1)[:, :H, :W]
        return x

    def attend(self, x: torch.Tensor) -> torch.Tensor:
        """Window MSA over a B h w C map with this path's qkv, relative position bias and proj: B h w C."""
        h, w = x.shape[1:3]
        # pad and shift before qkv (C wide, not 3C: both commute with a per-token Linear); padded tokens are
        # masked out of every real token's attention, so what qkv makes of them never matters
        qkv = self.qkv(to_window_frame(x, self.window_size, self.shift))
        x = self.window_msa(qkv, h, w)
        return self.proj(from_window_frame(x, h, w, self.shift))

    def window_msa(self, qkv: torch.Tensor, h: int, w: int) -> torch.Tensor:
        """Multi-head attention inside each window of a B Hp Wp 3C map in the window frame: B Hp Wp C."""
        return attend_in_windows(qkv, h, w, self.num_heads, self.window_size, self.shift, self.rel_pos_bias(),
                                 self.attn_drop if self.training else 0.0)


class LocalToGlobalAttention(nn.Module):
    """Multi-path local-to-global self-attention: out = sum over rates r of path_r(x).

    Path 0 (r = 1) is local (windows at full resolution); paths with r > 1 attend among pooled tokens
    and see a (M r) x (M r) region each, the coarsest one the whole map at the training resolution.
    `use_global_paths = False` (see `LGTransformer.set_global_paths`) keeps only the local path.
    """

    def __init__(self, dim: int, num_heads: int, window_size: int, rates: Sequence[int], shifts: Sequence[int],
                 adaptive_last: bool, qkv_bias: bool, attn_drop: float, proj_drop: float):
        super().__init__()
        last = len(rates) - 1
        self.paths = nn.ModuleList([
            AttentionPath(dim, num_heads, window_size, r, s, adaptive_last and i == last and r > 1, qkv_bias, attn_drop)
            for i, (r, s) in enumerate(zip(rates, shifts))
        ])
        self.proj_drop = nn.Dropout(proj_drop)
        self.use_global_paths = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """B H W C -> B H W C."""
        out = x  # (typed for TorchScript) replaced by path 0, the local windows at full resolution
        for i, path in enumerate(self.paths):
            if i == 0:
                out = path(x)
            elif self.use_global_paths:
                out = out + path(x)  # fused by sum: concat + Linear would cost ~0.4 GMACs more at 224
        return self.proj_drop(out)


class Block(nn.Module):
    """Pre-norm transformer block with local-to-global attention (Swin block, attention replaced)."""

    def __init__(self, dim: int, num_heads: int, window_size: int, rates: Sequence[int], shifts: Sequence[int],
                 adaptive_last: bool, mlp_ratio: float, qkv_bias: bool, drop: float, attn_drop: float,
                 drop_path: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = LocalToGlobalAttention(dim, num_heads, window_size, rates, shifts, adaptive_last, qkv_bias,
                                           attn_drop, drop)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=nn.GELU, drop=drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # B H W C
        x = x + self.drop_path(self.attn(self.norm1(x)))
        x = x + self.drop_path(self.mlp(self.norm2(x)))
        return x


class PatchMerging(nn.Module):
    """Swin's downsampling between stages: concat each 2x2 neighbourhood (4C), LayerNorm, Linear to C_out."""

    def __init__(self, dim: int, out_dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(4 * dim)
        self.reduction = nn.Linear(4 * dim, out_dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.pad(x, (0, 0, 0, x.shape[2] % 2, 0, x.shape[1] % 2))  # B H W C -> even H, W (by 0 if even)
        B, H2, W2, C = x.shape[0], x.shape[1] // 2, x.shape[2] // 2, x.shape[3]
        # B (H2 2) (W2 2) C -> B H2 W2 (2 2 C), concat order (row, col) offsets (0,0), (1,0), (0,1), (1,1)
        # as Swin's x0..x3, so Swin weights would map one to one
        x = x.reshape(B, H2, 2, W2, 2, C).permute(0, 1, 3, 4, 2, 5).reshape(B, H2, W2, 4 * C)
        return self.reduction(self.norm(x))


class Stage(nn.Module):
    """Patch merging (stages 2-4), then `depth` local-to-global blocks on a B H W C map."""

    def __init__(self, in_dim: int, dim: int, depth: int, num_heads: int, rates: Sequence[int], window_size: int,
                 input_size: Tuple[int, int], downsample: bool, adaptive_last: bool, mlp_ratio: float,
                 qkv_bias: bool, drop: float, attn_drop: float, drop_path_rates: Sequence[float]):
        super().__init__()
        self.grad_checkpointing = False
        self.downsample = PatchMerging(in_dim, dim) if downsample else nn.Identity()
        self.blocks = nn.ModuleList([
            Block(dim, num_heads, window_size, rates, self.path_shifts(j, rates, window_size, input_size, adaptive_last),
                  adaptive_last, mlp_ratio, qkv_bias, drop, attn_drop, dpr)
            for j, dpr in enumerate(drop_path_rates)
        ])

    @staticmethod
    def path_shifts(block: int, rates: Sequence[int], window_size: int, input_size: Tuple[int, int],
                    adaptive_last: bool) -> List[int]:
        """Odd blocks shift by M // 2 every path whose map at the design size is wider than one window (Swin's
        rule per path; the adaptive coarsest path always fits one window)."""
        shifts = []
        for i, r in enumerate(rates):
            fits = min(_ceil_div(s, r) for s in input_size) <= window_size
            fits = fits or (adaptive_last and i == len(rates) - 1 and r > 1)
            shifts.append(window_size // 2 if block % 2 == 1 and not fits else 0)
        return shifts

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """B H W C_in -> B H' W' C (H' = ceil(H / 2) after merging)."""
        x = self.downsample(x)
        for block in self.blocks:
            if self.grad_checkpointing and not torch.jit.is_scripting():
                x = checkpoint(block, x, use_reentrant=False)
            else:
                x = block(x)
        return x


class LGTransformer(StagedClassifierMixin, nn.Module):
    """Local-to-global vision transformer: Swin's hierarchy with multi-path attention in every block.

    Args:
        embed_dims: channels per stage.
        depths: blocks per stage.
        num_heads: attention heads per stage.
        rates: per stage, the pooling rates of its paths; each starts with 1 (the local path).
        num_classes: classifier outputs; 0 for no classifier.
        in_chans: input image channels.
        global_pool: 'avg' (mean over the final map) or '' (no pooling: the NHWC map).
        window_size: M, the window side of every path.
        patch_size: stride of the patch embedding; stages run at reductions p, 2p, 4p, 8p.
        img_size: design resolution (int or (H, W)). Decides only which paths shift (see `Stage.path_shifts`);
            the weights do not depend on it and any input size >= 32 px works.
        global_path: None (fixed rates) or 'adaptive_pool': the coarsest pooled path of each stage pools by
            ceil(side / M), so it stays global at every input size with the same weights.
        mlp_ratio: MLP hidden width / embedding width.
        qkv_bias: bias in the q, k, v Linears.
        drop_rate: dropout after attention, in the MLP and before the classifier.
        attn_drop_rate: dropout on attention weights.
        drop_path_rate: stochastic depth, rising linearly from 0 over all blocks (Swin's schedule).

    `forward_features` returns the final map in NHWC (B H/32 W/32 C for p = 4), after the final LayerNorm.
    """

    def __init__(
            self,
            embed_dims: Sequence[int] = (96, 192, 384, 768),
            depths: Sequence[int] = (2, 2, 6, 2),
            num_heads: Sequence[int] = (3, 6, 12, 24),
            rates: Sequence[Sequence[int]] = ((1, 2, 4, 8), (1, 2, 4), (1, 2), (1,)),
            num_classes: int = 1000,
            in_chans: int = 3,
            global_pool: str = 'avg',
            window_size: int = 7,
            patch_size: int = 4,
            img_size: Union[int, Tuple[int, int]] = 224,
            global_path: Optional[str] = None,
            mlp_ratio: float = 4.0,
            qkv_bias: bool = True,
            drop_rate: float = 0.0,
            attn_drop_rate: float = 0.0,
            drop_path_rate: float = 0.0,
    ):
        super().__init__()
        num_stages = len(embed_dims)
        if any(len(v) != num_stages for v in (depths, num_heads, rates)):
            raise ValueError(f'LGTransformer: per-stage settings must all have {num_stages} entries (one per stage)')
        if any(r[0] != 1 or list(r) != sorted(set(r)) for r in rates):
            raise ValueError(f'LGTransformer: each stage\'s rates must start with 1 and increase, not {rates}')
        if global_path not in (None, 'adaptive_pool'):
            raise ValueError(f"LGTransformer: global_path must be None or 'adaptive_pool', not {global_path!r}")
        self.num_classes = num_classes
        self.global_pool = self._check_pool(global_pool)
        self.num_features = self.head_hidden_size = embed_dims[-1]
        self.output_fmt = 'NHWC'
        self.drop_rate = drop_rate
        self.grad_checkpointing = False

        self.patch_embed = PatchEmbed(in_chans, embed_dims[0], patch_size)
        dpr = torch.linspace(0, drop_path_rate, sum(depths), device='cpu').split(list(depths))
        size = tuple(_ceil_div(s, patch_size) for s in to_2tuple(img_size))  # stage map at the design size
        stages, self.feature_info, reduction = [], [], patch_size
        for i in range(num_stages):
            if i > 0:
                size, reduction = tuple(_ceil_div(s, 2) for s in size), reduction * 2
            stages.append(Stage(
                embed_dims[max(i - 1, 0)], embed_dims[i], depths[i], num_heads[i], rates[i], window_size, size,
                i > 0, global_path == 'adaptive_pool', mlp_ratio, qkv_bias, drop_rate, attn_drop_rate,
                dpr[i].tolist()))
            self.feature_info.append(dict(num_chs=embed_dims[i], reduction=reduction, module=f'stages.{i}'))
        self.stages = nn.ModuleList(stages)
        self.norm = nn.LayerNorm(self.num_features)
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
        self._init_weights()

    @staticmethod
    def _check_pool(global_pool: str) -> str:
        if global_pool not in ('avg', ''):
            raise ValueError(f"LGTransformer: global_pool must be 'avg' or '', not {global_pool!r}")
        return global_pool

    def _init_weights(self):
        # as Swin: Linear trunc normal 0.02 with zero bias, bias tables trunc normal 0.02, LayerNorm (1, 0)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, AttentionPath):
                trunc_normal_(m.relative_position_bias_table, std=0.02)

    # --- forward -------------------------------------------------------------------------------
    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """B C H W image -> B H/32 W/32 C map (NHWC, for patch 4) after the final LayerNorm."""
        x = self.patch_embed(x)
        for stage in self.stages:
            x = stage(x)
        return self.norm(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        if self.global_pool == 'avg':
            x = x.mean(dim=(1, 2))  # B H W C -> B C
        x = self.head_drop(x)
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    # --- ablation switch -------------------------------------------------------------------------
    @torch.jit.ignore
    def set_global_paths(self, enable: bool = True):
        """Run only the local (rate 1) path of every block when False: Swin with unused extra weights."""
        for m in self.modules():
            if isinstance(m, LocalToGlobalAttention):
                m.use_global_paths = enable

    # --- timm model contract (classifier, checkpointing, pruning: StagedClassifierMixin) ---------
    @torch.jit.ignore
    def no_weight_decay(self) -> set:
        # timm's optimizer factory already exempts every 1-d parameter (biases, LayerNorm affine)
        return {n for n, _ in self.named_parameters() if n.endswith('relative_position_bias_table')}

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict:
        return dict(
            stem=r'^patch_embed',
            blocks=r'^stages\.(\d+)' if coarse else [
                (r'^stages\.(\d+)\.downsample', (0,)),
                (r'^stages\.(\d+)\.blocks\.(\d+)', None),
                (r'^norm', (99999,)),
            ],
        )

    def forward_intermediates(
            self,
            x: torch.Tensor,
            indices: Optional[Union[int, List[int]]] = None,
            norm: bool = False,
            stop_early: bool = False,
            output_fmt: str = 'NCHW',
            intermediates_only: bool = False,
    ):
        """Per-stage feature maps (B C_i H/r_i W/r_i, r = 4, 8, 16, 32 for patch 4) and, unless
        intermediates_only, the final map exactly as forward_features returns it. `norm` applies the final
        LayerNorm to the last stage's map."""
        if output_fmt not in ('NCHW', 'NHWC'):
            raise ValueError("output_fmt must be 'NCHW' or 'NHWC'")
        take_indices, max_index = feature_take_indices(len(self.stages), indices)
        last = len(self.stages) - 1
        stages = self.stages[:max_index + 1] if stop_early else self.stages
        intermediates = []
        x = self.patch_embed(x)
        for i, stage in enumerate(stages):
            x = stage(x)  # B H W C
            if i in take_indices:
                feat = self.norm(x) if (norm and i == last) else x
                intermediates.append(feat if output_fmt == 'NHWC' else feat.permute(0, 3, 1, 2))
        if intermediates_only:
            return intermediates
        return self.norm(x), intermediates


# --- variants (docs/lg_transformer.md) --------------------------------------------------------------------
@dataclass(frozen=True)
class LGConfig:
    embed_dims: Tuple[int, ...]
    depths: Tuple[int, ...]
    num_heads: Tuple[int, ...]
    rates: Tuple[Tuple[int, ...], ...]
    window_size: int
    patch_size: int
    img_size: int
    drop_path_rate: float


# [R] the paper's layout as recalled (Swin-T / Swin-S skeleton, paths added until the coarsest map is one
# window at 224); drop-path [C] = Swin's.
_LG_RATES = ((1, 2, 4, 8), (1, 2, 4), (1, 2), (1,))
LG_VARIANTS = {
    'lg_tiny': LGConfig(embed_dims=(96, 192, 384, 768), depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24),
                        rates=_LG_RATES, window_size=7, patch_size=4, img_size=224, drop_path_rate=0.2),
    'lg_small': LGConfig(embed_dims=(96, 192, 384, 768), depths=(2, 2, 18, 2), num_heads=(3, 6, 12, 24),
                         rates=_LG_RATES, window_size=7, patch_size=4, img_size=224, drop_path_rate=0.3),
    # [C] cvtlab's own variant for 32 px images (digits, CIFAR): patch 2 -> 16, 8, 4, 2 maps; window 4, so the
    # coarsest path of stages 1-2 (16 / 4, 8 / 2) and all of stages 3-4 are one window: global everywhere
    'lg_nano': LGConfig(embed_dims=(32, 64, 96, 128), depths=(2, 2, 2, 1), num_heads=(1, 2, 3, 4),
                        rates=((1, 2, 4), (1, 2), (1,), (1,)), window_size=4, patch_size=2, img_size=32,
                        drop_path_rate=0.05),
}

# LG-T as published in a later paper's comparison (DHVT, arXiv 2210.05958, Table 15: 32.6M params, 4.8 GFLOPs,
# i.e. multiply-adds, 82.1% ImageNet-1k top-1). LG-S is [D]: derived in docs/lg_transformer.md from timm's exact
# Swin-S counts plus the extra paths (4C^2 params and n_r (4C^2 + 2 M^2 C) MACs per path), not read from a paper.
PAPER_NUMBERS = {
    'lg_tiny': dict(params_m=32.6, gmacs={224: 4.8}, top1=82.1, source='DHVT (arXiv 2210.05958) Table 15'),
    'lg_small': dict(params_m=61.0, gmacs={224: 9.47}, source='derived'),
}


def _cfg(res: int = 224, reduction: int = 32, **kwargs) -> dict:
    return dict(
        hf_hub_id=None,  # no weights exist anywhere
        # forward_features returns a B H W C map (model.output_fmt = 'NHWC', as timm's Swin) of pool_size
        num_classes=1000, input_size=(3, res, res), pool_size=(res // reduction, res // reduction),
        interpolation='bicubic',
        crop_pct=0.875, crop_mode='center', mean=IMAGENET_DEFAULT_MEAN, std=IMAGENET_DEFAULT_STD,
        first_conv='patch_embed.proj', classifier='head',
        paper_name='Local-to-Global Self-Attention in Vision Transformers', paper_ids='arXiv:2107.04735',
        notes=('clean-room reconstruction (docs/lg_transformer.md), no official code; no weights',), **kwargs)


default_cfgs = generate_default_cfgs({
    'lg_tiny': _cfg(),
    'lg_small': _cfg(),
    'lg_nano': {**_cfg(res=32, reduction=16), 'crop_pct': 1.0, 'paper_name': None, 'notes': ('cvtlab variant, not in the paper',)},
})


def _create_lg(variant: str, pretrained: bool = False, **kwargs) -> LGTransformer:
    model_args = {**asdict(LG_VARIANTS[variant.split('.')[0]]), **kwargs}
    return build_model_with_cfg(
        LGTransformer, variant, pretrained,
        feature_cfg=dict(out_indices=(0, 1, 2, 3), feature_cls='getter'),
        **model_args,
    )


@register_model
def lg_tiny(pretrained: bool = False, **kwargs) -> LGTransformer:
    """LG-T (reconstruction): 32.67M params, 4.85 GMACs at 224."""
    return _create_lg('lg_tiny', pretrained, **kwargs)


@register_model
def lg_small(pretrained: bool = False, **kwargs) -> LGTransformer:
    """LG-S (reconstruction): 61.11M params, 9.47 GMACs at 224."""
    return _create_lg('lg_small', pretrained, **kwargs)


@register_model
def lg_nano(pretrained: bool = False, **kwargs) -> LGTransformer:
    """cvtlab's small LG-Transformer for 32 px images (not in the paper)."""
    return _create_lg('lg_nano', pretrained, **kwargs)
