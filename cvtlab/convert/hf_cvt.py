"""HF transformers' `CvtForImageClassification` layout (the `microsoft/cvt-*` Hub repositories).

The mapping to the official layout is a 1:1 bijection (spec cvt.md Sec. 3.2): applied to random
official weights it loads strictly into HF and, with HF's MLP activation switched to QuickGELU,
gives identical logits. HF's own model differs numerically only in using exact GELU.
"""
import re

# (HF pattern, official replacement), applied in order to every key; the first match wins.
_BLOCK = r'^(?:cvt\.)?encoder\.stages\.(\d+)\.layers\.(\d+)\.'
_ATTN = _BLOCK + r'attention\.attention\.'
_CONV_PROJ = r'convolution_projection_{}\.convolution_projection\.'
RENAMES = [
    (r'^(?:cvt\.)?encoder\.stages\.(\d+)\.embedding\.convolution_embeddings\.projection\.',
     r'stage\1.patch_embed.proj.'),
    (r'^(?:cvt\.)?encoder\.stages\.(\d+)\.embedding\.convolution_embeddings\.normalization\.',
     r'stage\1.patch_embed.norm.'),
    (r'^(?:cvt\.)?encoder\.stages\.(\d+)\.cls_token$', r'stage\1.cls_token'),
    (_BLOCK + r'layernorm_before\.', r'stage\1.blocks.\2.norm1.'),
    (_BLOCK + r'layernorm_after\.', r'stage\1.blocks.\2.norm2.'),
    *[(_ATTN + _CONV_PROJ.format(hf) + 'convolution.', rf'stage\1.blocks.\2.attn.conv_proj_{o}.conv.')
      for hf, o in (('query', 'q'), ('key', 'k'), ('value', 'v'))],
    *[(_ATTN + _CONV_PROJ.format(hf) + 'normalization.', rf'stage\1.blocks.\2.attn.conv_proj_{o}.bn.')
      for hf, o in (('query', 'q'), ('key', 'k'), ('value', 'v'))],
    *[(_ATTN + f'projection_{hf}\\.', rf'stage\1.blocks.\2.attn.proj_{o}.')
      for hf, o in (('query', 'q'), ('key', 'k'), ('value', 'v'))],
    (_BLOCK + r'attention\.output\.dense\.', r'stage\1.blocks.\2.attn.proj.'),
    (_BLOCK + r'intermediate\.dense\.', r'stage\1.blocks.\2.mlp.fc1.'),
    (_BLOCK + r'output\.dense\.', r'stage\1.blocks.\2.mlp.fc2.'),
    (r'^(?:cvt\.)?layernorm\.', 'norm.'),
    (r'^classifier\.', 'head.'),
]


def is_hf(state_dict: dict) -> bool:
    return any(re.match(r'^(?:cvt\.)?encoder\.stages\.', k) for k in state_dict)


def is_hf_cvt_config(config: dict) -> bool:
    """An HF transformers `config.json` that says it is a CvT (other HF models are not read)."""
    return config.get('model_type') == 'cvt' or 'CvtForImageClassification' in (config.get('architectures') or ())


def hf_to_official(state_dict: dict) -> dict:
    """Rename every key; a key that no rule matches is kept as is, so the strict check names it."""
    out = {}
    for key, value in state_dict.items():
        for pattern, repl in RENAMES:
            new, n = re.subn(pattern, repl, key)
            if n:
                key = new
                break
        out[key] = value
    return out
