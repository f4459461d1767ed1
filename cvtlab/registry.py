"""cvtlab's model registry: a thin layer over timm's, with clear errors and checkpoint-aware building.

Importing `cvtlab` registers every family with timm, so `timm.create_model('cvt_13')` works too.
"""
import difflib
from pathlib import Path
from typing import List, NamedTuple, Optional, Tuple

import timm
import torch.nn as nn

from .checkpoint import apply_state_dict, read_checkpoint, read_json_config
from .convert.architecture import FAMILY_KEYS, args_from_state_dict
from .convert.hf_cvt import is_hf_cvt_config
from .errors import CheckpointError, ConfigError
from .folder import save_pretrained
from .models import FAMILIES
from .sources import is_source_path, locate


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
    """Build a cvtlab (or any timm) model; `checkpoint` loads weights of any layout from any source of
    `load_model` (a file, a model folder, a training run, `hf-hub:ID`).

    With `checkpoint`, `num_classes` defaults to the checkpoint's; a different one drops its head
    with a notice (fine-tuning).
    """
    _check_name(name)
    if pretrained and not timm.list_models(name if '.' in name else f'{name}.*', pretrained=True):
        raise ConfigError(f'{name} has no pretrained weights (train it, or give a checkpoint)')
    if checkpoint is None:
        return timm.create_model(name, pretrained=pretrained, **kwargs)
    state_dict, _ = read_checkpoint(checkpoint)
    if 'head.weight' in state_dict:
        kwargs.setdefault('num_classes', state_dict['head.weight'].shape[0])
    return apply_state_dict(timm.create_model(name, pretrained=False, **kwargs), state_dict)


def _tuples(value):
    """JSON lists back to the tuples of the model configs, nested ones too (LG's per-stage rates)."""
    return tuple(_tuples(v) for v in value) if isinstance(value, list) else value


def _read_architecture(state_dict: dict, config: Optional[dict], model_name: Optional[str]) -> Tuple[str, dict]:
    """(architecture, arguments) read off the tensors, of the family they hold; a CvT's heads from an HF config."""
    family, name, args = args_from_state_dict(state_dict, (config or {}).get('num_heads'), model_name)
    if config is not None and family != 'cvt':
        raise CheckpointError(f'its HF config describes a CvT, the weights are {FAMILY_KEYS[family][0]}')
    return name, args


def _label_list(labels) -> Optional[list]:
    """timm's `label_names`: a list, or a dict {index: name} (JSON keys are strings)."""
    if isinstance(labels, dict):
        return [labels[k] for k in sorted(labels, key=int)]
    return list(labels) if labels else None


def _architecture(path, state_dict: dict, config: Optional[dict], model_name: Optional[str] = None):
    """(architecture, its arguments, class names or None) of a checkpoint: from its timm / cvtlab config, else
    read off the tensors (an HF `config.json` only adds a CvT's heads and labels)."""
    if model_name is not None:
        _check_name(model_name)
    if config is not None and 'architecture' in config:  # a model folder's (timm format) or an older NAME.json
        name = model_name or config['architecture']
        if model_name is None:
            _check_name(name)
        args = {k: _tuples(v) for k, v in (config.get('model_args') or {}).items()}
        if config.get('num_classes') is not None:  # the folder format keeps the class count at the root only
            args.setdefault('num_classes', config['num_classes'])
        labels = config.get('label_names') or (config.get('pretrained_cfg') or {}).get('label_names')
        return name, args, _label_list(labels)
    if config is not None and not is_hf_cvt_config(config):
        raise CheckpointError(
            f'{path}: its config is neither timm\'s nor an HF CvT one (model_type={config.get("model_type")!r}, '
            f'architectures={config.get("architectures")}); cvtlab reads HF configs of CvtForImageClassification only')
    try:
        name, args = _read_architecture(state_dict, config, model_name)
    except CheckpointError as e:
        raise CheckpointError(f'{path}: {e}') from None
    id2label = (config or {}).get('id2label')
    labels = [id2label[str(i)] for i in range(len(id2label))] if id2label else None
    return name, args, labels


def _build(name: str, args: dict, state_dict: dict, labels, config: Optional[dict]) -> nn.Module:
    model = apply_state_dict(timm.create_model(name, **args), state_dict)
    cfg = {**model.pretrained_cfg, **((config or {}).get('pretrained_cfg') or {}), 'num_classes': model.num_classes}
    if labels:
        cfg['label_names'] = tuple(labels)
        if isinstance((config or {}).get('label_descriptions'), dict):
            cfg['label_descriptions'] = config['label_descriptions']
    model.pretrained_cfg = cfg
    return model


def registered_weights(repo_id: Optional[str]) -> Optional[str]:
    """The cvtlab `arch.tag` whose pretrained cfg points at Hub repository `repo_id` (`microsoft/cvt-13` ->
    `cvt_13.ms_in1k`): its preprocessing is the one those weights were made with."""
    from timm.models import get_pretrained_cfg
    if repo_id is None:
        return None
    return next((name for name in list_models(pretrained=True) if get_pretrained_cfg(name).hf_hub_id == repo_id), None)


class Loaded(NamedTuple):
    """A model rebuilt from its files, and what rebuilt it (what a model folder of it records)."""
    model: nn.Module
    architecture: str
    model_args: dict
    label_names: Optional[list]
    layout: str  # of the weights read: 'cvtlab', 'official' or 'hf'
    keys: int


def load_with_architecture(source, model_name: Optional[str] = None) -> Loaded:
    """`load_model(source)`, with the architecture and arguments it was built from (`model_name` overrides)."""
    path, repo_id = locate(source)
    config = read_json_config(path)
    if _is_other_timm_model(config):  # e.g. a resnet18 trained by `cvtlab train`: its keys are timm's own
        from .checkpoint import read_state_dict
        state_dict = read_state_dict(path)
        name, args, labels = _architecture(path, {}, config, model_name)
        return Loaded(_build(name, args, state_dict, labels, config), name, args, labels, 'timm', len(state_dict))
    state_dict, layout = read_checkpoint(path)
    name, args, labels = _architecture(path, state_dict, config, model_name or registered_weights(repo_id))
    return Loaded(_build(name, args, state_dict, labels, config), name, args, labels, layout, len(state_dict))


def load_model(source) -> nn.Module:
    """Rebuild a model from a model folder, a training run, a weights file or `hf-hub:ID` (`cvtlab.sources`):
    its `config.json` (or an older `NAME.json`) says what to build; without one, the architecture is read
    off the tensors. Official `microsoft/cvt-*` ids get the preprocessing of their registered weights."""
    return load_with_architecture(source).model


def model_from_source(source, pretrained: bool = True) -> nn.Module:
    """`load_model(source)` for files and ids (`hf-hub:`, `local-dir:`), else the timm model `source` names: with
    its pretrained weights (`cvt_13.ms_in1k`, or the default tag of `cvt_13`) when `pretrained`, else random."""
    if is_source_path(source):
        return load_model(source)
    return create_model(str(source), pretrained=pretrained)


def _is_other_timm_model(config: Optional[dict]) -> bool:
    """cvtlab's JSON config naming a timm architecture of no cvtlab family (no layout to convert from)."""
    arch = (config or {}).get('architecture')
    return arch is not None and timm.is_model(arch.split('.')[0]) and _family_module(arch.split('.')[0]) is None


def convert_checkpoint(src, dst, model_name: Optional[str] = None) -> dict:
    """Convert any supported checkpoint (any source of `load_model`) to a model folder `dst` (`config.json` +
    `model.safetensors`, see `cvtlab.folder`); returns a summary."""
    if Path(dst).suffix in ('.safetensors', '.pth', '.bin', '.json'):
        raise ConfigError(f'{dst}: convert writes a model folder (config.json + model.safetensors): '
                          f'name a folder, e.g. {Path(dst).with_suffix("")}')
    loaded = load_with_architecture(src, model_name)
    folder = save_pretrained(loaded.model, dst, architecture=loaded.architecture, model_args=loaded.model_args,
                             label_names=loaded.label_names)
    return dict(layout=loaded.layout, architecture=loaded.architecture, keys=loaded.keys, folder=str(folder),
                params=sum(p.numel() for p in loaded.model.parameters()))


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
            paper_top1=paper.get('top1'),
            paper_source=paper.get('source', 'paper') if paper else None,
            input_size=tuple(cfg['input_size']),
            weights=[n.split('.', 1)[1] for n in timm.list_pretrained(arch + '.*')],
        ))
    return rows
