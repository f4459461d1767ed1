"""The official microsoft/CvT layout (`lib/models/cls_cvt.py`, the OneDrive `.pth` zoo files).

Those files are plain state_dicts whose keys match ours except that stages are attributes
`stage{i}.` where we use a ModuleList `stages.{i}.`. Quirks of the upstream model that we keep for
parity (QuickGELU, full-dim attention scale, fp32 LayerNorm, cls token skipping the depth-wise conv)
need no key changes.
"""
import re

# (official pattern, cvtlab replacement)
RENAMES = [
    (r'^stage(\d+)\.', r'stages.\1.'),
]


def is_official(state_dict: dict) -> bool:
    return any(k.startswith('stage0.') for k in state_dict)


def official_to_cvtlab(state_dict: dict) -> dict:
    out = {}
    for key, value in state_dict.items():
        for pattern, repl in RENAMES:
            key = re.sub(pattern, repl, key)
        out[key] = value
    return out


def cvtlab_to_official(state_dict: dict) -> dict:
    return {re.sub(r'^stages\.(\d+)\.', r'stage\1.', k): v for k, v in state_dict.items()}
