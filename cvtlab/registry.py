"""cvtlab's model registry: a thin layer over timm's, with clear errors and checkpoint-aware building.

Importing `cvtlab` registers every family with timm, so `timm.create_model('cvt_13')` works too.
"""
import difflib
from pathlib import Path
from typing import List, Optional

import timm
import torch.nn as nn

from .checkpoint import load_checkpoint, read_json_config, read_state_dict
from .convert import to_cvtlab
from .errors import ConfigError

# Families whose models cvtlab owns: the timm module name their models register under.
FAMILIES = ('cvt', 'lg')


def _family_module(arch: str):
    import importlib
    for family in FAMILIES:
        module = importlib.import_module(f'cvtlab.models.{family}')
        if arch in getattr(module, 'PAPER_NUMBERS', {}) or timm.is_model(arch) and arch in timm.list_models(
                module=family):
            return module
    return None


def list_models(pattern: str = '', pretrained: bool = False) -> List[str]:
    """cvtlab's architectures (or `arch.tag` weights with pretrained=True)."""
    names = []
    for family in FAMILIES:
        names += timm.list_models(pattern or '*', module=family, pretrained=pretrained)
    return sorted(names)


def _check_name(name: str):
    arch = name.split('.')[0]
    if not timm.is_model(arch):
        close = difflib.get_close_matches(arch, timm.list_models(), n=3)
        hint = f'; did you mean {", ".join(close)}?' if close else ''
        raise ConfigError(f'unknown model {name!r}{hint}')
    if '.' in name and name not in timm.list_pretrained(arch + '.*'):
        tags = ', '.join(timm.list_pretrained(arch + '.*')) or 'none'
        raise ConfigError(f'unknown weights {name!r}; {arch} has: {tags}')


def create_model(name: str, pretrained: bool = False, checkpoint: Optional[str] = None, **kwargs) -> nn.Module:
    """Build a cvtlab (or any timm) model; `checkpoint` loads a local file or directory of any layout.

    With `checkpoint`, `num_classes` defaults to the checkpoint's; a different one drops its head
    with a notice (fine-tuning).
    """
    _check_name(name)
    if checkpoint is None:
        return timm.create_model(name, pretrained=pretrained, **kwargs)
    state_dict = to_cvtlab(read_state_dict(checkpoint))
    if 'head.weight' in state_dict:
        kwargs.setdefault('num_classes', state_dict['head.weight'].shape[0])
    model = timm.create_model(name, pretrained=False, **kwargs)
    return load_checkpoint(model, checkpoint)


def load_model(path) -> nn.Module:
    """Rebuild a model saved by `cvtlab convert` / training from its weights and JSON config alone."""
    from .models.cvt import cvt_args_from_state_dict
    config = read_json_config(path)
    state_dict = to_cvtlab(read_state_dict(path))
    if config and 'architecture' in config:  # cvtlab's own config
        name, args = config['architecture'], dict(config.get('model_args') or {})
        args = {k: tuple(v) if isinstance(v, list) else v for k, v in args.items()}
        label_names = config.get('label_names')
    else:  # HF `config.json` or a bare file: read the architecture off the tensors
        heads = (config or {}).get('num_heads')
        name, args = cvt_args_from_state_dict(state_dict, heads)
        id2label = (config or {}).get('id2label')
        label_names = [id2label[str(i)] for i in range(len(id2label))] if id2label else None
    model = timm.create_model(name, **args)
    load_checkpoint(model, path)
    if label_names:
        model.pretrained_cfg = {**model.pretrained_cfg, 'label_names': tuple(label_names)}
    if config and config.get('pretrained_cfg'):
        model.pretrained_cfg = {**model.pretrained_cfg, **config['pretrained_cfg']}
    return model


def convert_checkpoint(src, dst, model_name: Optional[str] = None) -> dict:
    """Convert any supported checkpoint to cvtlab safetensors + JSON config; returns a summary."""
    from .checkpoint import checkpoint_layout, save_model
    from .models.cvt import cvt_args_from_state_dict
    layout = checkpoint_layout(src)
    state_dict = to_cvtlab(read_state_dict(src))
    config = read_json_config(src) or {}
    base, args = cvt_args_from_state_dict(state_dict, config.get('num_heads'))
    if model_name is not None:
        _check_name(model_name)
        base = model_name
    model = timm.create_model(base, **args)
    load_checkpoint(model, src)
    id2label = config.get('id2label')
    labels = [id2label[str(i)] for i in range(len(id2label))] if id2label else config.get('label_names')
    weights, json_path = save_model(model, dst, base, args, labels)
    return dict(layout=layout, architecture=base, keys=len(state_dict), weights=str(weights),
                config=str(json_path), params=sum(p.numel() for p in model.parameters()))


def describe_models(names: Optional[List[str]] = None, resolutions=(224, 384)) -> List[dict]:
    """One row per architecture: our params and GMACs (counted on the meta device) beside the paper's."""
    import torch
    from .flops import count_macs, count_params
    rows = []
    for arch in names or list_models():
        with torch.device('meta'):
            model = timm.create_model(arch)
        paper = getattr(_family_module(arch), 'PAPER_NUMBERS', {}).get(arch, {})
        cfg = model.pretrained_cfg
        rows.append(dict(
            model=arch,
            params=count_params(model),
            paper_params_m=paper.get('params_m'),
            gmacs={r: count_macs(model, (cfg['input_size'][0], r, r)) / 1e9 for r in resolutions},
            paper_gmacs=paper.get('gmacs', {}),
            paper_source=paper.get('source', 'paper') if paper else None,
            input_size=tuple(cfg['input_size']),
            weights=[n.split('.', 1)[1] for n in timm.list_pretrained(arch + '.*')],
        ))
    return rows
