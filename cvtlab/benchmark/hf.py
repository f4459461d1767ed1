"""HF transformers' CvT with cvtlab's weights, for `--compare hf` (`peers.compare_peers` times the two side by side)."""
from typing import Tuple

import torch
import torch.nn as nn

from ..errors import ConfigError


def hf_twin(model: nn.Module) -> nn.Module:
    """HF transformers' CvtForImageClassification with `model`'s config, weights copied from HF into `model`.

    The HF model is built randomly and its weights loaded into ours through `cvtlab.convert.to_cvtlab`
    (same weights either way). HF keeps its exact GELU, so its logits differ from ours by ~0.03 (the
    official model uses QuickGELU); `hf_max_abs_diff` checks equality with QuickGELU swapped in.
    """
    try:
        import transformers
    except ImportError:
        raise ConfigError('--compare hf needs HF transformers: pip install transformers') from None
    from ..convert import to_cvtlab
    from ..models.cvt import CvT
    if not isinstance(model, CvT):
        raise ConfigError('--compare hf works for the CvT family (cvt_*) only')
    stages = model.stages
    if any(len(s.blocks) <= i for i, s in enumerate(stages)):
        raise ConfigError('HF transformers cannot build this CvT: its stage i needs more than i blocks '
                          '(it indexes drop-path rates by stage)')
    config = transformers.CvtConfig(
        embed_dim=[s.patch_embed.proj.out_channels for s in stages], depth=[len(s.blocks) for s in stages],
        num_heads=[s.blocks[0].attn.num_heads for s in stages], num_labels=max(model.num_classes, 1),
        cls_token=[s.cls_token is not None for s in stages],
        drop_path_rate=[0.0] * len(stages))  # HF indexes its rates by stage (breaks when depth <= stage index)
    hf = transformers.CvtForImageClassification(config).eval()
    model.load_state_dict(to_cvtlab(hf.state_dict()))
    return hf


def hf_logits(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """An HF image classifier's logits for images `x` (HF models take keyword inputs, return an output object)."""
    return model(pixel_values=x).logits


def hf_max_abs_diff(model: nn.Module, hf: nn.Module, img_size: Tuple[int, int]) -> float:
    """Largest logit difference on a random batch of 2, HF's GELU temporarily swapped for QuickGELU."""
    from timm.layers import QuickGELU
    swapped = [(m, m.activation) for m in hf.modules() if isinstance(getattr(m, 'activation', None), nn.GELU)]
    x = torch.randn(2, 3, *img_size)
    try:
        for m, _ in swapped:
            m.activation = QuickGELU()
        with torch.no_grad():
            return (model.eval()(x) - hf_logits(hf.eval(), x)).abs().max().item()
    finally:
        for m, act in swapped:
            m.activation = act
