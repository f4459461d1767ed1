"""HF transformers' CvT as the reference implementation: random weights, QuickGELU swapped in."""
import re

import torch
import torch.nn as nn
from timm.layers import QuickGELU

transformers = __import__('pytest').importorskip('transformers')

CVT_13 = dict(embed_dims=(64, 192, 384), depths=(1, 2, 10), num_heads=(1, 3, 6))
SMALL = dict(embed_dims=(16, 32, 48), depths=(1, 2, 3), num_heads=(1, 2, 3))


def hf_model(embed_dims, depths, num_heads, num_classes=1000, quick_gelu=True):
    """A random HF CvtForImageClassification whose every tensor (BN statistics too) is non-trivial."""
    config = transformers.CvtConfig(embed_dim=list(embed_dims), depth=list(depths), num_heads=list(num_heads),
                                    num_labels=num_classes)
    model = transformers.CvtForImageClassification(config).eval()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if name.endswith('running_var'):
                t.copy_(torch.rand(t.shape, generator=g) + 0.5)
            elif t.is_floating_point():
                scale = 0.5 if 'embeddings.projection' in name else 0.1
                base = 1.0 if (name.endswith('weight') and t.ndim == 1) else 0.0
                t.copy_(base + scale * torch.randn(t.shape, generator=g))
    if quick_gelu:  # the official model (and the released weights) use QuickGELU; HF uses exact GELU
        for module in model.modules():
            if hasattr(module, 'activation') and isinstance(module.activation, nn.GELU):
                module.activation = QuickGELU()
    return model


# An official-layout state_dict, built from HF keys with the spec's table (cvt.md Sec. 3.2) written
# independently of cvtlab's converter.
_HF_TO_OFFICIAL_WORDS = [
    ('embedding.convolution_embeddings.projection', 'patch_embed.proj'),
    ('embedding.convolution_embeddings.normalization', 'patch_embed.norm'),
    ('layernorm_before', 'norm1'), ('layernorm_after', 'norm2'),
    ('attention.attention.convolution_projection_query.convolution_projection.convolution', 'attn.conv_proj_q.conv'),
    ('attention.attention.convolution_projection_key.convolution_projection.convolution', 'attn.conv_proj_k.conv'),
    ('attention.attention.convolution_projection_value.convolution_projection.convolution', 'attn.conv_proj_v.conv'),
    ('attention.attention.convolution_projection_query.convolution_projection.normalization', 'attn.conv_proj_q.bn'),
    ('attention.attention.convolution_projection_key.convolution_projection.normalization', 'attn.conv_proj_k.bn'),
    ('attention.attention.convolution_projection_value.convolution_projection.normalization', 'attn.conv_proj_v.bn'),
    ('attention.attention.projection_query', 'attn.proj_q'),
    ('attention.attention.projection_key', 'attn.proj_k'),
    ('attention.attention.projection_value', 'attn.proj_v'),
    ('attention.output.dense', 'attn.proj'),
    ('intermediate.dense', 'mlp.fc1'),
    ('output.dense', 'mlp.fc2'),
]


def hf_to_official_independent(state_dict):
    out = {}
    for key, value in state_dict.items():
        if key.startswith('classifier.'):
            new = 'head.' + key.split('.', 1)[1]
        elif key.startswith('layernorm.'):
            new = 'norm.' + key.rsplit('.', 1)[1]
        else:
            m = re.match(r'cvt\.encoder\.stages\.(\d+)\.(.*)', key)
            stage, rest = m.groups()
            rest = rest.replace('layers.', 'blocks.')
            for hf, official in _HF_TO_OFFICIAL_WORDS:
                if hf in rest:
                    rest = rest.replace(hf, official)
                    break
            new = f'stage{stage}.{rest}'
        out[new] = value
    return out
