"""Upstream checkpoint layouts, one module each, and detection of which one a state_dict is in.

`architecture` reads which cvtlab model (family, variant, arguments) a converted state_dict holds.
"""
from typing import Optional

from ..errors import CheckpointError
from .hf_cvt import hf_to_official, is_hf
from .microsoft_cvt import cvtlab_to_official, is_official, official_to_cvtlab

__all__ = ['detect_layout', 'to_cvtlab', 'cvtlab_to_official', 'hf_to_official']


def detect_layout(state_dict: dict) -> str:
    """'cvtlab', 'official' (microsoft/CvT .pth) or 'hf' (transformers); anything else is an error."""
    if is_hf(state_dict):
        return 'hf'
    if is_official(state_dict):
        return 'official'
    if any(k.startswith(('stages.', 'norm.', 'head.', 'layers.', 'patch_embed.')) for k in state_dict):
        return 'cvtlab'
    some = ', '.join(list(state_dict)[:3]) or 'no keys at all'
    raise CheckpointError(f'unknown checkpoint layout (first keys: {some})')


def to_cvtlab(state_dict: dict, layout: Optional[str] = None) -> dict:
    """Rename keys of any supported layout to cvtlab's; values are not copied.

    `layout` is `detect_layout(state_dict)` when the caller has it already (it is detected otherwise).
    """
    layout = layout or detect_layout(state_dict)
    if layout == 'hf':
        state_dict = hf_to_official(state_dict)
        layout = 'official'
    if layout == 'official':
        state_dict = official_to_cvtlab(state_dict)
    return state_dict
