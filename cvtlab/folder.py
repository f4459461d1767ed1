"""The model folder: `config.json` in timm's format beside `model.safetensors`, the one format cvtlab writes.

Training runs (`best/`, `last/`), `cvtlab convert`, `cvtlab push` and `cvtlab.save_pretrained` all write it,
and every tool that knows timm reads it (after `import cvtlab`, which registers the architectures):
`cvtlab.load_model(DIR)`, `timm.create_model('local-dir:DIR', pretrained=True)` (or `'hf-hub:ID'` once
pushed), HF transformers' `AutoModelForImageClassification.from_pretrained(DIR)` and
`pipeline('image-classification', model=DIR)`, which wrap timm models as `TimmWrapper`.

`config.json` holds `architecture`, `num_classes`, `num_features`, `global_pool`, `model_args` (what
`timm.create_model(architecture, ...)` needs besides the class count), `pretrained_cfg` (the preprocessing
the weights expect, and their metadata) and `label_names`. It is written here rather than by
`timm.models.save_for_hf` because that function (i) writes `num_classes` into `model_args` too, which
HF's TimmWrapper passes to timm a second time (TypeError, then `KeyError: 'num_classes'` in `pipeline()`),
(ii) drops the label names of a model whose class count differs from its source weights', and (iii) does
not write atomically. The root `num_classes` alone is what both timm and transformers read.
"""
import json
from pathlib import Path
from typing import Optional, Sequence

import timm.models
import torch.nn as nn
from safetensors.torch import save_file

from .checkpoint import atomic_write_folder
from .errors import ConfigError

CONFIG_NAME = 'config.json'
WEIGHTS_NAME = 'model.safetensors'
# The preprocessing keys of a data config (timm's `resolve_data_config`) kept in `pretrained_cfg`.
PREPROCESSING = ('input_size', 'interpolation', 'mean', 'std', 'crop_pct', 'crop_mode')
# Keys of a model's pretrained cfg that describe its source weights (where they were, their published
# accuracy), not the folder's; its labels go to the root of config.json.
_NOT_SAVED = ('architecture', 'tag', 'notes', 'label_names', 'label_descriptions', 'label_offset', 'state_dict')


def _model_args(model: nn.Module, given: Optional[dict]) -> dict:
    if given is not None:
        return dict(given)
    get_model_args = getattr(timm.models, 'get_model_args', None)  # timm >= 1.0.2x records create_model's kwargs
    if get_model_args is None:
        raise ConfigError('this timm does not record how a model was built: pass model_args=... '
                          '(the keyword arguments of timm.create_model)')
    return get_model_args(model)


def folder_config(model: nn.Module, architecture: Optional[str] = None, model_args: Optional[dict] = None,
                  label_names: Optional[Sequence[str]] = None, data_config: Optional[dict] = None) -> dict:
    """The `config.json` of `model` (see the module docstring); `data_config` overrides the preprocessing."""
    source_cfg = dict(getattr(model, 'pretrained_cfg', None) or {})
    architecture = architecture or source_cfg.get('architecture')
    if not architecture:
        raise ConfigError('the model has no pretrained_cfg architecture: pass architecture=... (a timm model name)')
    cfg = timm.models.filter_pretrained_cfg(source_cfg, remove_source=True)
    for key in _NOT_SAVED:
        cfg.pop(key, None)
    cfg.update({k: data_config[k] for k in PREPROCESSING if (data_config or {}).get(k) is not None})
    cfg.update(num_classes=model.num_classes, custom_load=False)  # native cvtlab weights: timm loads them as is
    same_classes = source_cfg.get('num_classes', model.num_classes) == model.num_classes
    if label_names is None and same_classes:
        label_names = source_cfg.get('label_names')
    if label_names is not None and len(label_names) != model.num_classes:
        raise ConfigError(f'{len(label_names)} label names for a model of {model.num_classes} classes')
    config = dict(architecture=architecture.split('.')[0], num_classes=model.num_classes,
                  num_features=model.num_features)
    if isinstance(getattr(model, 'global_pool', None), str) and model.global_pool:
        config['global_pool'] = model.global_pool
    args = {k: v for k, v in _model_args(model, model_args).items() if k != 'num_classes'}  # the root's (docstring)
    if args:
        config['model_args'] = args
    config['pretrained_cfg'] = cfg
    if label_names is not None:
        config['label_names'] = list(label_names)
        if same_classes and isinstance(source_cfg.get('label_descriptions'), dict):
            config['label_descriptions'] = dict(source_cfg['label_descriptions'])
    return config


def save_pretrained(model: nn.Module, directory, *, architecture: Optional[str] = None,
                    model_args: Optional[dict] = None, label_names: Optional[Sequence[str]] = None,
                    data_config: Optional[dict] = None) -> Path:
    """Write `directory` as a model folder (`config.json` + `model.safetensors`), atomically; returns it.

    Args:
        model: a timm model (cvtlab's or any), not its `fuse_for_inference` copy.
        architecture: the timm model name (default: the model's `pretrained_cfg['architecture']`).
        model_args: the keyword arguments that rebuild it besides `num_classes` (default: those timm recorded
            when `timm.create_model` built it).
        label_names: one name per class (default: the model's own, if it has them).
        data_config: the preprocessing the weights expect (`input_size`, `interpolation`, `mean`, `std`,
            `crop_pct`, `crop_mode`; default: the model's pretrained cfg).
    """
    from .deploy.wrapper import Wrapper
    if isinstance(model, Wrapper):
        raise ConfigError('save the model itself, not its inference copy (fuse_for_inference or a backend)')
    config = folder_config(model, architecture, model_args, label_names, data_config)
    try:
        text = json.dumps(config, indent=2) + '\n'
    except TypeError as e:  # a model argument such as a class or a dtype
        raise ConfigError(f'config.json: {e}; pass model_args=... with plain values') from None
    tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    return atomic_write_folder(directory, {
        WEIGHTS_NAME: lambda tmp: save_file(tensors, tmp, metadata={'format': 'pt'}),  # as transformers writes
        CONFIG_NAME: lambda tmp: Path(tmp).write_text(text),
    })
