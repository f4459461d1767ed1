"""CvT: Introducing Convolutions to Vision Transformers (Wu et al., ICCV 2021, arXiv 2103.15808).

Contents, in the order of the paper: ConvStem (not in the paper: cvtlab's small-image variants only) ->
ConvEmbed (Sec. 3.1, convolutional token embedding) ->
ConvProjection / ConvAttention (Sec. 3.2, convolutional projection with stride-2 keys and values)
-> Mlp -> Block -> Stage -> CvT, then the variant table (Table 2), pretrained cfgs and timm registration.

Exact to the official microsoft/CvT model and its released weights; every behaviour kept only for that
is tagged `parity:` (grep for it). No position embedding anywhere (Sec. 3.4).

Differences from the official implementation:
- the cls-token squeeze keeps the batch dimension, so batch size 1 works;
- attention runs through `F.scaled_dot_product_attention` (explicit full-dim scale) instead of einsum;
- the MLP computes QuickGELU as one SiLU on rescaled fc weights (`QuickGeluMlp`): the same function;
- stages live in a `stages` ModuleList (`stages.{i}.` keys instead of `stage{i}.`); the converters in
  `cvtlab.convert` map official and HF transformers checkpoints onto it;
- `forward_features` returns all tokens after the final LayerNorm (the official model normalises the
  cls token only; LayerNorm is per token, so the cls logits are identical).

Differences from HF transformers' `CvtForImageClassification`: HF uses exact GELU in the MLP where the
official model (and so the released weights) use QuickGELU; its logits drift by ~0.03 from the official
ones. HF also indexes drop-path rates by stage and drops the whole residual stream; we do neither.

Fast CPU inference (folded BatchNorm, cache-sized blocks of tokens and samples, frozen compile) is not
here: `cvtlab.fuse_for_inference(model)` applies it to a copy (`cvtlab/deploy/`).
"""
from dataclasses import asdict, dataclass
from typing import List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import DropPath, trunc_normal_
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models._features import feature_take_indices

from ..layers import LayerNormFp32
from ._contract import StagedClassifierMixin

__all__ = ['CvT', 'CvTConfig', 'CVT_VARIANTS', 'conv_attention']


def map_to_tokens(x: torch.Tensor) -> torch.Tensor:
    return x.flatten(2).transpose(1, 2)  # B C H W -> B (H W) C


def tokens_to_map(x: torch.Tensor, H: int, W: int) -> torch.Tensor:
    # sizes read off the tensor (not unflatten), so that an ONNX trace keeps B, H, W symbolic
    return x.reshape(x.shape[0], H, W, x.shape[2]).permute(0, 3, 1, 2)  # B (H W) C -> B C H W


class ConvStem(nn.Module):
    """Not in the paper (cvtlab's small-image variants): a 3x3 conv + BN + GELU at full resolution in front of
    the first token embedding. On 28-32 px images the 7x7 stride-4 embedding then reads local features, not raw
    pixels: +1.4 to +5.3 points after 3 epochs on three small real data sets (BENCHMARKS.md, issue 19)."""

    def __init__(self, in_chans: int, dim: int):
        super().__init__()
        self.conv = nn.Conv2d(in_chans, dim, 3, 1, 1, bias=False)
        self.bn = nn.BatchNorm2d(dim)
        self.act = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # channels_last, as ConvEmbed's input: oneDNN's convs and their backward run faster in it (1.27x a step)
        x = self.conv(x.contiguous(memory_format=torch.channels_last))
        return self.act(self.bn(x))  # B C H W -> B dim H W


class ConvEmbed(nn.Module):
    """Convolutional token embedding (Sec. 3.1): overlapping strided conv, then LayerNorm over channels."""

    def __init__(self, in_chans: int, dim: int, patch_size: int, stride: int, padding: int):
        super().__init__()
        # parity: conv with bias, paddings (2, 1, 1) for kernels (7, 3, 3)
        self.proj = nn.Conv2d(in_chans, dim, patch_size, stride, padding)
        self.norm = LayerNormFp32(dim)

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, int, int]:
        # channels_last: the conv's output is then laid out as tokens, and map_to_tokens is a free view
        x = self.proj(x.contiguous(memory_format=torch.channels_last))  # B C H W, any (non-square) size
        H, W = x.shape[2], x.shape[3]
        return self.norm(map_to_tokens(x)), H, W  # B (H W) C


class ConvProjection(nn.Module):
    """Depth-wise conv + BN on the token map (Sec. 3.2); stride 2 'squeezes' keys and values 4x."""

    def __init__(self, dim: int, stride: int, kernel_size: int = 3, padding: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(dim, dim, kernel_size, stride, padding, groups=dim, bias=False)
        self.bn = nn.BatchNorm2d(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return map_to_tokens(self.bn(self.conv(x)))  # B C H W -> B (H' W') C


def split_heads(x: torch.Tensor, num_heads: int) -> torch.Tensor:
    return x.unflatten(-1, (num_heads, -1)).transpose(1, 2)  # B N (h D) -> B h N D


def conv_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, num_heads: int, scale: float,
                   dropout_p: float = 0.0) -> torch.Tensor:
    """Multi-head attention of N queries over N' keys and values (N' ~ N / 4 with stride-2 keys): B N C."""
    q, k, v = split_heads(q, num_heads), split_heads(k, num_heads), split_heads(v, num_heads)
    x = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, scale=scale)
    return x.transpose(1, 2).flatten(2)  # B h N D -> B N (h D)


class ConvAttention(nn.Module):
    """Self-attention with convolutional projection of q, k, v (Sec. 3.2, Fig. 3b).

    Each of q, k, v gets its own depth-wise conv + BN (the map only) followed by its own Linear (all
    tokens): together the paper's depth-wise separable projection.
    """

    def __init__(self, dim: int, num_heads: int, num_prefix_tokens: int = 0, qkv_bias: bool = True,
                 attn_drop: float = 0.0, proj_drop: float = 0.0, kv_stride: int = 2):
        super().__init__()
        self.num_heads = num_heads
        self.num_prefix_tokens = num_prefix_tokens
        # parity: the official scale uses the full embedding dim, not the head dim
        self.scale = dim ** -0.5
        self.attn_drop = attn_drop
        self.conv_proj_q = ConvProjection(dim, stride=1)
        self.conv_proj_k = ConvProjection(dim, stride=kv_stride)
        self.conv_proj_v = ConvProjection(dim, stride=kv_stride)
        self.proj_q = nn.Linear(dim, dim, bias=qkv_bias)
        self.proj_k = nn.Linear(dim, dim, bias=qkv_bias)
        self.proj_v = nn.Linear(dim, dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: torch.Tensor, H: int, W: int) -> torch.Tensor:
        q, k, v = self.project(x, H, W)
        x = conv_attention(q, k, v, self.num_heads, self.scale, self.attn_drop if self.training else 0.0)
        return self.proj_drop(self.proj(x))

    def project(self, x: torch.Tensor, H: int, W: int) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The convolutional projection of B n+HW C tokens into q, k and v."""
        n = self.num_prefix_tokens
        # parity: the cls token bypasses the depth-wise conv and BN, but not the Linear projections
        cls_tokens, fmap = x[:, :n], tokens_to_map(x[:, n:], H, W)  # B n C, B C H W
        q = self.proj_q(self.with_cls(cls_tokens, self.conv_proj_q(fmap)))  # B n+HW C
        k = self.proj_k(self.with_cls(cls_tokens, self.conv_proj_k(fmap)))  # B n+H'W' C, H' = ceil(H / 2)
        v = self.proj_v(self.with_cls(cls_tokens, self.conv_proj_v(fmap)))  # B n+H'W' C
        return q, k, v

    def with_cls(self, cls_tokens: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        # stages without a cls token skip the concatenation and its copy
        return torch.cat([cls_tokens, tokens], dim=1) if self.num_prefix_tokens > 0 else tokens


QUICK_GELU_SCALE = 1.702  # QuickGELU(z) = z sigmoid(1.702 z)


class QuickGeluMlp(nn.Module):
    """fc1 -> QuickGELU -> fc2 (parity: QuickGELU z sigmoid(1.702 z), as the released weights; HF uses GELU).

    QuickGELU(z) = SiLU(1.702 z) / 1.702, so fc2(QuickGELU(fc1 x)) = (W2 / 1.702) SiLU(1.702 (W1 x + b1)) + b2:
    the constants scale the weights (C x 4C), not the activations (B x N x 4C), and the activation is one
    SiLU pass forward and backward. Why: training time (BENCHMARKS.md). Keys as timm's `Mlp`.
    """

    def __init__(self, dim: int, hidden_dim: int, drop: float = 0.0):
        super().__init__()
        self.act_scale = QUICK_GELU_SCALE  # an attribute: TorchScript reads no global floats
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.drop1 = nn.Dropout(drop)
        self.fc2 = nn.Linear(hidden_dim, dim)
        self.drop2 = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.act_scale
        x = F.silu(F.linear(x, self.fc1.weight * a, self.fc1.bias * a))  # B N 4C, = 1.702 QuickGELU(fc1 x)
        return self.drop2(F.linear(self.drop1(x), self.fc2.weight / a, self.fc2.bias))  # B N C


class Block(nn.Module):
    """Pre-norm transformer block with convolutional attention (Fig. 2b)."""

    def __init__(self, dim: int, num_heads: int, num_prefix_tokens: int, mlp_ratio: float, qkv_bias: bool,
                 drop: float, attn_drop: float, drop_path: float, kv_stride: int):
        super().__init__()
        self.norm1 = LayerNormFp32(dim)
        self.attn = ConvAttention(dim, num_heads, num_prefix_tokens, qkv_bias, attn_drop, drop, kv_stride)
        # parity: stochastic depth on the residual branch (HF applies it to the whole stream)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = LayerNormFp32(dim)
        self.mlp = QuickGeluMlp(dim, int(dim * mlp_ratio), drop)

    def forward(self, x: torch.Tensor, H: int, W: int) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x), H, W))
        x = x + self.drop_path(self.mlp(self.norm2(x)))
        return x


class Stage(nn.Module):
    """One of CvT's three stages: conv token embedding, optional cls token, then `depth` blocks."""

    def __init__(self, in_chans: int, dim: int, num_heads: int, patch_size: int, patch_stride: int,
                 patch_padding: int, cls_token: bool, mlp_ratio: float, qkv_bias: bool, drop: float,
                 attn_drop: float, drop_path_rates: Sequence[float], kv_stride: int):
        super().__init__()
        self.num_prefix_tokens = int(cls_token)
        self.grad_checkpointing = False
        self.patch_embed = ConvEmbed(in_chans, dim, patch_size, patch_stride, patch_padding)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim)) if cls_token else None
        self.pos_drop = nn.Dropout(drop)  # parity: dropout where ViT adds its position embedding
        self.blocks = nn.ModuleList([
            Block(dim, num_heads, self.num_prefix_tokens, mlp_ratio, qkv_bias, drop, attn_drop, dpr, kv_stride)
            for dpr in drop_path_rates
        ])

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """B C_in H_in W_in map -> (B C H W map, B n C cls tokens; n = 0 in stages without one)."""
        x, H, W = self.patch_embed(x)  # B (H W) C
        if self.cls_token is not None:
            x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)  # B 1+HW C
        x = self.pos_drop(x)
        for block in self.blocks:
            if self.grad_checkpointing and not torch.jit.is_scripting():
                x = checkpoint(block, x, H, W, use_reentrant=False)
            else:
                x = block(x, H, W)
        n = self.num_prefix_tokens
        cls_tokens = x[:, :n]
        return tokens_to_map(x[:, n:], H, W), cls_tokens  # the map last: FX feature extraction takes it


class CvT(StagedClassifierMixin, nn.Module):
    """Convolutional vision Transformer (Fig. 2a): three stages of conv embedding + conv-attention blocks.

    Args:
        embed_dims: channels per stage.
        depths: blocks per stage.
        num_heads: attention heads per stage.
        num_classes: classifier outputs; 0 for no classifier.
        in_chans: input image channels.
        global_pool: 'token' (the cls token, official), 'avg' (mean of the map tokens) or '' (no pooling).
            Defaults to 'token' when the last stage has a cls token, else 'avg'.
        mlp_ratio: MLP hidden width / embedding width.
        qkv_bias: bias in the q, k, v Linears.
        drop_rate: dropout after the MLP, the attention projection and the (absent) position embedding,
            as in the official code.
        attn_drop_rate: dropout on attention weights.
        drop_path_rate: stochastic depth, per stage, each rising linearly from 0 over its blocks
            (official schedule). A float p means the official layout (0, ..., 0, p): only the last
            stage drops paths.
        patch_sizes, patch_strides, patch_paddings: conv token embedding per stage.
        cls_token: which stages carry a cls token (official: only the last).
        kv_stride: stride of the key/value depth-wise convs.
        stem_chans: with > 0, a `ConvStem` of that width before the first stage (not in the paper).
    """
    zero_head_bias = False  # parity: the official init leaves the head bias at PyTorch's default

    def __init__(
            self,
            embed_dims: Sequence[int] = (64, 192, 384),
            depths: Sequence[int] = (1, 2, 10),
            num_heads: Sequence[int] = (1, 3, 6),
            num_classes: int = 1000,
            in_chans: int = 3,
            global_pool: Optional[str] = None,
            mlp_ratio: float = 4.0,
            qkv_bias: bool = True,
            drop_rate: float = 0.0,
            attn_drop_rate: float = 0.0,
            drop_path_rate: Union[float, Sequence[float]] = 0.0,
            patch_sizes: Sequence[int] = (7, 3, 3),
            patch_strides: Sequence[int] = (4, 2, 2),
            patch_paddings: Sequence[int] = (2, 1, 1),
            cls_token: Sequence[bool] = (False, False, True),
            kv_stride: int = 2,
            stem_chans: int = 0,
    ):
        super().__init__()
        num_stages = len(embed_dims)
        per_stage = (depths, num_heads, patch_sizes, patch_strides, patch_paddings, cls_token)
        if any(len(v) != num_stages for v in per_stage):
            raise ValueError(f'CvT: per-stage settings must all have {num_stages} entries (one per stage)')
        if isinstance(drop_path_rate, (int, float)):
            drop_path_rate = (0.0,) * (num_stages - 1) + (float(drop_path_rate),)
        if len(drop_path_rate) != num_stages:
            raise ValueError(f'CvT: drop_path_rate must be a float or {num_stages} per-stage values')
        self.num_classes = num_classes
        self.num_prefix_tokens = int(cls_token[-1])
        self.global_pool = self._check_pool(global_pool)
        self.num_features = self.head_hidden_size = embed_dims[-1]
        self.drop_rate = drop_rate
        self.grad_checkpointing = False

        self.stem = ConvStem(in_chans, stem_chans) if stem_chans > 0 else nn.Identity()
        in_chans = stem_chans or in_chans
        stages, self.feature_info, reduction = [], [], 1
        for i in range(num_stages):
            # parity: drop-path rates rise from 0 within each stage (one linspace per stage)
            dpr = torch.linspace(0, drop_path_rate[i], depths[i], device='cpu').tolist()
            stages.append(Stage(
                in_chans if i == 0 else embed_dims[i - 1], embed_dims[i], num_heads[i],
                patch_sizes[i], patch_strides[i], patch_paddings[i], cls_token[i], mlp_ratio, qkv_bias,
                drop_rate, attn_drop_rate, dpr, kv_stride))
            reduction *= patch_strides[i]
            self.feature_info.append(dict(num_chs=embed_dims[i], reduction=reduction, module=f'stages.{i}'))
        self.stages = nn.ModuleList(stages)
        self.norm = LayerNormFp32(self.num_features)
        self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
        self._init_weights()

    def _check_pool(self, global_pool: Optional[str]) -> str:
        if global_pool is None:
            return 'token' if self.num_prefix_tokens else 'avg'
        if global_pool not in ('token', 'avg', ''):
            raise ValueError(f"CvT: global_pool must be 'token', 'avg' or '', not {global_pool!r}")
        if global_pool == 'token' and not self.num_prefix_tokens:
            raise ValueError("CvT: global_pool='token' needs a cls token in the last stage")
        return global_pool

    def _init_weights(self):
        # parity: official init touches Linear (trunc normal 0.02, zero bias) and norms (1, 0) per stage;
        # Conv2d layers keep PyTorch's default init, the head bias its default uniform init.
        for m in self.stages.modules():
            if isinstance(m, nn.Linear):
                trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        for stage in self.stages:
            if stage.cls_token is not None:
                trunc_normal_(stage.cls_token, std=0.02)
        if isinstance(self.head, nn.Linear):
            trunc_normal_(self.head.weight, std=0.02)

    # --- forward -------------------------------------------------------------------------------
    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """B C H W image -> B n+N C tokens of the last stage after the final LayerNorm (cls first)."""
        x = self.stem(x)
        for stage in self.stages:
            x, cls_tokens = stage(x)  # B C_i H_i W_i, B n C: the cls token never crosses stages
        return self.final_tokens(x, cls_tokens)

    def final_tokens(self, x: torch.Tensor, cls_tokens: torch.Tensor) -> torch.Tensor:
        return self.norm(torch.cat([cls_tokens, map_to_tokens(x)], dim=1))  # B C H W, B n C -> B n+HW C

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        if self.global_pool == 'token':
            x = x[:, 0]
        elif self.global_pool == 'avg':
            x = x[:, self.num_prefix_tokens:].mean(dim=1)
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    # --- timm model contract (classifier, checkpointing, pruning: StagedClassifierMixin) ---------
    @torch.jit.ignore
    def no_weight_decay(self) -> set:
        # timm's optimizer factory already exempts every 1-d parameter (biases, LN and BN affine)
        return {f'stages.{i}.cls_token' for i, s in enumerate(self.stages) if s.cls_token is not None}

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict:
        return dict(
            stem=r'^(?:stem|stages\.0\.patch_embed)',  # the ConvStem of the small-image variants too
            blocks=r'^stages\.(\d+)' if coarse else [
                (r'^stages\.(\d+)\.(?:patch_embed|cls_token)', (0,)),
                (r'^stages\.(\d+)\.blocks\.(\d+)', None),
                (r'^norm', (99999,)),
            ],
        )

    @torch.jit.ignore
    def load_pretrained(self, checkpoint_path: str):
        """Load any supported layout (official .pth, HF transformers, cvtlab safetensors) strictly."""
        from ..checkpoint import load_checkpoint
        load_checkpoint(self, checkpoint_path)

    def forward_intermediates(
            self,
            x: torch.Tensor,
            indices: Optional[Union[int, List[int]]] = None,
            norm: bool = False,
            stop_early: bool = False,
            output_fmt: str = 'NCHW',
            intermediates_only: bool = False,
    ):
        """Per-stage feature maps (B C_i H/r_i W/r_i, r = 4, 8, 16) and, unless intermediates_only, the
        final tokens exactly as forward_features returns them. `norm` applies the final LayerNorm to the
        last stage's map."""
        if output_fmt not in ('NCHW', 'NHWC'):
            raise ValueError("output_fmt must be 'NCHW' or 'NHWC'")
        take_indices, max_index = feature_take_indices(len(self.stages), indices)
        last = len(self.stages) - 1
        stages = self.stages[:max_index + 1] if stop_early else self.stages
        intermediates = []
        x = self.stem(x)
        for i, stage in enumerate(stages):
            x, cls_tokens = stage(x)  # B C H W, B n C
            if i in take_indices:
                feat = x
                if norm and i == last:  # LayerNorm acts per token: on the map's channels
                    feat = self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
                intermediates.append(feat.permute(0, 2, 3, 1) if output_fmt == 'NHWC' else feat)
        if intermediates_only:
            return intermediates
        return self.final_tokens(x, cls_tokens), intermediates


# --- variants (Table 2 and the official experiments/imagenet/cvt/*.yaml) ---------------------------------
@dataclass(frozen=True)
class CvTConfig:
    embed_dims: Tuple[int, ...]
    depths: Tuple[int, ...]
    num_heads: Tuple[int, ...]
    drop_path_rate: Tuple[float, ...]
    kv_stride: int = 2  # the paper's squeezed keys and values (Sec. 3.2)
    stem_chans: int = 0  # the paper's stem is the first stage's conv embedding alone


CVT_VARIANTS = {
    'cvt_13': CvTConfig(embed_dims=(64, 192, 384), depths=(1, 2, 10), num_heads=(1, 3, 6),
                        drop_path_rate=(0.0, 0.0, 0.1)),
    'cvt_21': CvTConfig(embed_dims=(64, 192, 384), depths=(1, 4, 16), num_heads=(1, 3, 6),
                        drop_path_rate=(0.0, 0.0, 0.1)),
    'cvt_w24': CvTConfig(embed_dims=(192, 768, 1024), depths=(2, 2, 20), num_heads=(3, 12, 16),
                         drop_path_rate=(0.0, 0.0, 0.3)),
    # cvtlab's own small variant for small images (digits, CIFAR): 32 px -> 8x8, 4x4, 2x2 token maps
    'cvt_tiny': CvTConfig(embed_dims=(32, 64, 128), depths=(1, 2, 2), num_heads=(1, 2, 4),
                          drop_path_rate=(0.0, 0.0, 0.05)),
    # cvt_tiny with keys and values at stride 1 (issue 19's first step for small images). At 32 px its
    # maps are 8x8, 4x4 and 2x2, and stride-2 keys / values kept 4x4, 2x2 and 1x1 of them (plus the cls
    # token): the squeeze that saves compute at 224 px threw away most of what a small image holds. Its
    # tensors are cvt_tiny's, so bare weights cannot tell the two apart: a model folder's config.json names
    # it, and `cvtlab convert --model cvt_tiny_kv1` builds on it
    'cvt_tiny_kv1': CvTConfig(embed_dims=(32, 64, 128), depths=(1, 2, 2), num_heads=(1, 2, 4),
                              drop_path_rate=(0.0, 0.0, 0.05), kv_stride=1),
    # the default for small images since issue 19: cvt_tiny_kv1 behind a 16-channel ConvStem. After 3 epochs it
    # beat the baselines' plain CNN on mnist5k and animals10k over two seeds, where cvt_tiny_kv1 trailed it
    'cvt_tiny_stem': CvTConfig(embed_dims=(32, 64, 128), depths=(1, 2, 2), num_heads=(1, 2, 4),
                               drop_path_rate=(0.0, 0.0, 0.05), kv_stride=1, stem_chans=16),
}

# What the paper reports (Table 2/3; "FLOPs" there are MACs), shown beside our own counts by `cvtlab models`.
PAPER_NUMBERS = {
    'cvt_13': dict(params_m=19.98, gmacs={224: 4.53, 384: 16.3}),
    'cvt_21': dict(params_m=31.54, gmacs={224: 7.13, 384: 24.9}),
    'cvt_w24': dict(params_m=276.7, gmacs={224: 60.86, 384: 193.2}),
}


def _cfg(hf_hub_id: str, res: int = 224, top1: Optional[float] = None, **kwargs) -> dict:
    # 224 weights: resize 256, centre crop 224; 384 weights: squash to 384x384 (cvt.md Sec. 2.4)
    crop = dict(crop_pct=0.875, crop_mode='center') if res == 224 else dict(crop_pct=1.0, crop_mode='squash')
    return dict(
        hf_hub_id=hf_hub_id,
        # the Hub files are in HF transformers layout; `load_pretrained` / the filter convert them
        custom_load=True,
        num_classes=1000, input_size=(3, res, res), pool_size=None, interpolation='bicubic',
        mean=IMAGENET_DEFAULT_MEAN, std=IMAGENET_DEFAULT_STD,
        first_conv='stages.0.patch_embed.proj', classifier='head',
        license='mit', origin_url='https://github.com/microsoft/CvT',
        paper_name='CvT: Introducing Convolutions to Vision Transformers', paper_ids='arXiv:2103.15808',
        notes=(f'published ImageNet-1k top-1 {top1}',) if top1 else (), **crop, **kwargs)


default_cfgs = generate_default_cfgs({
    'cvt_13.ms_in1k': _cfg('microsoft/cvt-13', top1=81.6),
    'cvt_13.ms_in1k_384': _cfg('microsoft/cvt-13-384', res=384, top1=83.0),
    'cvt_13.ms_in22k_ft_in1k_384': _cfg('microsoft/cvt-13-384-22k', res=384, top1=83.3),
    'cvt_21.ms_in1k': _cfg('microsoft/cvt-21', top1=82.5),
    'cvt_21.ms_in1k_384': _cfg('microsoft/cvt-21-384', res=384, top1=83.3),
    'cvt_21.ms_in22k_ft_in1k_384': _cfg('microsoft/cvt-21-384-22k', res=384, top1=84.9),
    'cvt_w24.ms_in22k_ft_in1k_384': _cfg('microsoft/cvt-w24-384-22k', res=384, top1=87.7),
    # no released weights: a from-scratch model for small images
    'cvt_tiny': {**_cfg('', res=32), 'hf_hub_id': None, 'crop_pct': 1.0, 'crop_mode': 'center',
                 'paper_name': None, 'notes': ('cvtlab variant, not in the paper',)},
    'cvt_tiny_kv1': {**_cfg('', res=32), 'hf_hub_id': None, 'crop_pct': 1.0, 'crop_mode': 'center',
                     'paper_name': None, 'notes': ('cvtlab variant, not in the paper',)},
    'cvt_tiny_stem': {**_cfg('', res=32), 'hf_hub_id': None, 'crop_pct': 1.0, 'crop_mode': 'center',
                      'first_conv': 'stem.conv', 'paper_name': None, 'notes': ('cvtlab variant, not in the paper',)},
})


def checkpoint_filter_fn(state_dict: dict, model: CvT) -> dict:
    """timm hook for Hub / url weights: convert any supported layout to ours and check it strictly."""
    from ..checkpoint import fit_state_dict
    from ..convert import to_cvtlab
    return fit_state_dict(to_cvtlab(state_dict), model)


def _create_cvt(variant: str, pretrained: bool = False, **kwargs) -> CvT:
    model_args = {**asdict(CVT_VARIANTS[variant.split('.')[0]]), **kwargs}
    return build_model_with_cfg(
        CvT, variant, pretrained,
        pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=dict(out_indices=(0, 1, 2), feature_cls='getter'),
        **model_args,
    )


@register_model
def cvt_13(pretrained: bool = False, **kwargs) -> CvT:
    """CvT-13: 20.0M params, 4.57 GMACs at 224."""
    return _create_cvt('cvt_13', pretrained, **kwargs)


@register_model
def cvt_21(pretrained: bool = False, **kwargs) -> CvT:
    """CvT-21: 31.6M params, 7.18 GMACs at 224."""
    return _create_cvt('cvt_21', pretrained, **kwargs)


@register_model
def cvt_tiny(pretrained: bool = False, **kwargs) -> CvT:
    """cvtlab's small CvT for 32 px images (not in the paper): 0.75M params with 1000 classes, 5 MMACs at 32 px."""
    return _create_cvt('cvt_tiny', pretrained, **kwargs)


@register_model
def cvt_tiny_kv1(pretrained: bool = False, **kwargs) -> CvT:
    """cvtlab's small CvT with keys and values at stride 1 (not in the paper): cvt_tiny unsqueezed.

    0.75M params with 1000 classes (the same tensors as cvt_tiny), 5.8 MMACs at 32 px; 1.05 GMACs at 224 (full
    attention over 56x56 tokens: for small images only).
    """
    return _create_cvt('cvt_tiny_kv1', pretrained, **kwargs)


@register_model
def cvt_tiny_stem(pretrained: bool = False, **kwargs) -> CvT:
    """cvtlab's default for small images (not in the paper): cvt_tiny_kv1 behind a 3x3 conv stem (`ConvStem`).

    0.77M params with 1000 classes, 7.6 MMACs at 32 px; 1.14 GMACs at 224 (for small images only).
    """
    return _create_cvt('cvt_tiny_stem', pretrained, **kwargs)


@register_model
def cvt_w24(pretrained: bool = False, **kwargs) -> CvT:
    """CvT-W24 (wide): 277.2M params, 60.9 GMACs at 224."""
    return _create_cvt('cvt_w24', pretrained, **kwargs)
