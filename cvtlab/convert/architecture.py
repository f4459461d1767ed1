"""Which cvtlab model a cvtlab-layout state_dict holds: its family, then the arguments that rebuild it.

Used for weights that come without cvtlab's JSON config (a bare official, HF or cvtlab file). Each family
is recognised by keys that only its models have; what the tensors cannot tell (CvT's heads, LG's pooling
rates and design size) comes from the caller or a registered variant. Anything else is an error, never a
guess.
"""
import math
import re
from typing import List, Optional, Sequence, Tuple

import torch

from ..errors import CheckpointError
from ..models.cvt import CVT_VARIANTS
from ..models.lg import LG_VARIANTS

__all__ = ['FAMILY_KEYS', 'detect_family', 'args_from_state_dict', 'cvt_args_from_state_dict', 'lg_args_from_state_dict']

# family: (model name, keys it must have: (pattern matched from the start of a key, the pattern for users))
FAMILY_KEYS = {
    'cvt': ('CvT', (
        (r'stages\.\d+\.patch_embed\.proj\.weight$', 'stages.N.patch_embed.proj.weight'),
        (r'stages\.\d+\.blocks\.\d+\.attn\.conv_proj_q\.', 'stages.N.blocks.M.attn.conv_proj_q.*'),
    )),
    'lg': ('LG-Transformer', (
        (r'patch_embed\.proj\.weight$', 'patch_embed.proj.weight'),
        (r'stages\.\d+\.blocks\.\d+\.attn\.paths\.\d+\.qkv\.weight$', 'stages.N.blocks.M.attn.paths.K.qkv.weight'),
    )),
}


def detect_family(state_dict: dict) -> str:
    """'cvt' or 'lg' for a cvtlab-layout state_dict; a CheckpointError naming the keys found otherwise."""
    found = [family for family, (_, keys) in FAMILY_KEYS.items()
             if all(any(re.match(pattern, k) for k in state_dict) for pattern, _ in keys)]
    if len(found) == 1:
        return found[0]
    if found:
        raise CheckpointError('state_dict holds the keys of both CvT and LG-Transformer: cannot tell which to build')
    first = ', '.join(list(state_dict)[:3]) or 'no keys at all'
    wanted = ' nor '.join(f'{name} ({" + ".join(shown for _, shown in keys)})' for name, keys in FAMILY_KEYS.values())
    raise CheckpointError(f'not a cvtlab model: {len(state_dict)} keys (first: {first}) match neither {wanted}')


def _indices(state_dict: dict, pattern: str) -> List[int]:
    """The distinct integers that `pattern` (one group, matched from the start) captures over the keys."""
    return sorted({int(m.group(1)) for k in state_dict if (m := re.match(pattern, k))})


def _tensor(state_dict: dict, key: str) -> torch.Tensor:
    if key not in state_dict:
        raise CheckpointError(f'incomplete state_dict: no {key}')
    return state_dict[key]


def _num_classes(state_dict: dict) -> int:
    return state_dict['head.weight'].shape[0] if 'head.weight' in state_dict else 0


def cvt_args_from_state_dict(state_dict: dict, num_heads: Optional[Sequence[int]] = None) -> Tuple[str, dict]:
    """Architecture of a cvtlab-layout CvT state_dict: (registered variant to build on, its overrides).

    Widths, depths, cls tokens and classes are read from the tensors. Heads cannot be: they come from
    `num_heads`, else the matching official variant, else the official head width of 64.
    """
    stage_ids = _indices(state_dict, r'stages\.(\d+)\.patch_embed\.')
    embed_dims = tuple(_tensor(state_dict, f'stages.{i}.patch_embed.proj.weight').shape[0] for i in stage_ids)
    depths = tuple(len(_indices(state_dict, rf'stages\.{i}\.blocks\.(\d+)\.')) for i in stage_ids)
    args = dict(embed_dims=embed_dims, depths=depths,
                cls_token=tuple(f'stages.{i}.cls_token' in state_dict for i in stage_ids),
                num_classes=_num_classes(state_dict))
    base = next((name for name, v in CVT_VARIANTS.items() if (v.embed_dims, v.depths) == (embed_dims, depths)), None)
    if num_heads is not None:
        args['num_heads'] = tuple(num_heads)
    elif base is not None:
        args['num_heads'] = CVT_VARIANTS[base].num_heads
    else:
        args['num_heads'] = tuple(max(1, d // 64) for d in embed_dims)
    return base or 'cvt_13', args


def lg_args_from_state_dict(state_dict: dict, base: Optional[str] = None) -> Tuple[str, dict]:
    """Architecture of a cvtlab-layout LG-Transformer state_dict: (registered variant to build on, its overrides).

    Widths, depths, heads (the columns of each relative position bias table), the window side M (from the
    table's (2M - 1)^2 rows), patch size, input channels, classes and the number of paths per stage are
    read from the tensors. The pooling rates and the design size are not in them: they come from the
    variant `base`, else from the registered variant whose readable shape is the same. With neither, a
    CheckpointError asks for the config saved beside the weights.
    """
    stage_ids = _indices(state_dict, r'stages\.(\d+)\.blocks\.')
    embed_dims = tuple(_tensor(state_dict, f'stages.{i}.blocks.0.norm1.weight').shape[0] for i in stage_ids)
    depths = tuple(len(_indices(state_dict, rf'stages\.{i}\.blocks\.(\d+)\.')) for i in stage_ids)
    paths = tuple(len(_indices(state_dict, rf'stages\.{i}\.blocks\.0\.attn\.paths\.(\d+)\.')) for i in stage_ids)
    tables = [_tensor(state_dict, f'stages.{i}.blocks.0.attn.paths.0.relative_position_bias_table')
              for i in stage_ids]  # (2M - 1)^2 h
    windows = {(math.isqrt(t.shape[0]) + 1) // 2 for t in tables}
    window_size = windows.pop() if len(windows) == 1 else None
    if window_size is None or any(t.shape[0] != (2 * window_size - 1) ** 2 for t in tables):
        rows = [t.shape[0] for t in tables]
        raise CheckpointError(f'LG-Transformer relative position bias tables of {rows} rows: not one (2M - 1)^2 window')
    proj = _tensor(state_dict, 'patch_embed.proj.weight')  # C in_chans p p
    args = dict(embed_dims=embed_dims, depths=depths, num_heads=tuple(t.shape[1] for t in tables),
                window_size=window_size, patch_size=proj.shape[-1], num_classes=_num_classes(state_dict))
    if proj.shape[1] != 3:
        args['in_chans'] = proj.shape[1]

    def readable(v):  # what a variant fixes that the tensors show
        return v.embed_dims, v.depths, v.num_heads, v.window_size, v.patch_size, tuple(len(r) for r in v.rates)

    shape = embed_dims, depths, args['num_heads'], window_size, args['patch_size'], paths
    if base is None:
        base = next((name for name, v in LG_VARIANTS.items() if readable(v) == shape), None)
    if base is None:
        found = ', '.join(f'{k}={v}' for k, v in args.items() if k != 'num_classes')
        raise CheckpointError(
            f'LG-Transformer weights without a config ({found}, paths per stage {paths}) match no registered '
            f'variant ({", ".join(LG_VARIANTS)}), and their pooling rates and design size are not in the tensors: '
            f'keep the JSON config saved beside the weights, or name the variant to build on (`cvtlab convert '
            f'--model`)')
    arch = base.split('.')[0]  # a weight tag (`arch.tag`) names its architecture
    if arch not in LG_VARIANTS:
        raise CheckpointError(f'{base!r} is not an LG-Transformer variant ({", ".join(LG_VARIANTS)})')
    rates = LG_VARIANTS[arch].rates
    if tuple(len(r) for r in rates) != paths:
        raise CheckpointError(f'{base} has {tuple(len(r) for r in rates)} paths per stage, the weights {paths}')
    args['rates'] = rates
    return base, args


def args_from_state_dict(state_dict: dict, num_heads: Optional[Sequence[int]] = None,
                         base: Optional[str] = None) -> Tuple[str, str, dict]:
    """(family, registered variant to build on, its overrides) of a cvtlab-layout state_dict of either family.

    `num_heads` serves a CvT (its heads are not in the tensors); `base` names the variant to build on.
    """
    family = detect_family(state_dict)
    variants = {'cvt': CVT_VARIANTS, 'lg': LG_VARIANTS}[family]
    if base is not None and base.split('.')[0] not in variants:  # `arch` or `arch.tag`
        raise CheckpointError(f'the weights are {FAMILY_KEYS[family][0]}, which {base} is not '
                              f'({", ".join(variants)} are)')
    if family == 'cvt':
        name, args = cvt_args_from_state_dict(state_dict, num_heads)
        return family, base or name, args
    return (family, *lg_args_from_state_dict(state_dict, base))
