"""Reading, checking and writing weights.

Untrusted files are never executed: safetensors, or `torch.load(weights_only=True)` for pickles.
Writes are atomic (temporary file in the same folder, fsync, rename), so a crash at any moment leaves
the previous file intact. Loading is strict: every key used, every key filled, every shape equal; the
one tolerated difference is the classifier, dropped with a notice when its size differs (fine-tuning).
"""
import json
import logging
import os
import pickle
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Dict, Optional, Tuple

import torch
import torch.nn as nn
from safetensors.torch import load_file, save_file

from .convert import detect_layout, to_cvtlab
from .errors import CheckpointError
from .sources import locate

_logger = logging.getLogger('cvtlab')

# Names tried, in order, inside a model folder (cvtlab's, timm's or HF transformers' `save_pretrained`)
_DIR_WEIGHT_FILES = ('model.safetensors', 'pytorch_model.bin')
_WRAPPER_KEYS = ('state_dict_ema', 'model_ema', 'state_dict', 'model')


def _one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f'{type(e).__name__}: {text[0] if text else ""}'.rstrip(': ')


def resolve_weights_file(path) -> Path:
    """A weights file, or the first of `_DIR_WEIGHT_FILES` inside a model folder."""
    path = Path(path)
    if path.is_dir():
        for name in _DIR_WEIGHT_FILES:
            if (path / name).is_file():
                return path / name
        raise CheckpointError(f'{path}: directory holds no {" or ".join(_DIR_WEIGHT_FILES)}')
    if not path.exists():
        raise CheckpointError(f'{path}: no such checkpoint file')
    return path


def read_state_dict(path) -> dict:
    """Tensors of a checkpoint file or directory, unwrapped from training dicts, `module.` stripped."""
    file = resolve_weights_file(path)
    if file.stat().st_size == 0:
        raise CheckpointError(f'{file}: checkpoint is empty (0 bytes)')
    try:
        if file.suffix == '.safetensors':
            obj = load_file(str(file), device='cpu')
        else:
            obj = torch.load(file, map_location='cpu', weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(
            f'{file}: refused to load: the pickle holds objects other than tensors and plain containers '
            f'(loaded with weights_only=True, nothing was executed): {_one_line(e)[:200]}') from None
    except Exception as e:  # safetensors / zip / pickle errors: truncated or not a checkpoint
        raise CheckpointError(f'{file}: cannot read checkpoint (truncated or not a checkpoint): '
                              f'{_one_line(e)[:200]}') from None
    if isinstance(obj, dict):
        for key in _WRAPPER_KEYS:
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f'{file}: not a state_dict of tensors')
    return {k.removeprefix('module.'): v for k, v in obj.items()}


def read_json_config(path) -> Optional[dict]:
    """The config stored beside weights: `config.json` in a directory, or `NAME.json` beside `NAME.safetensors`."""
    path = Path(path)
    candidate = path / 'config.json' if path.is_dir() else path.with_suffix('.json')
    if not candidate.is_file():
        return None
    try:
        return json.loads(candidate.read_text())
    except (OSError, ValueError) as e:
        raise CheckpointError(f'{candidate}: unreadable JSON config: {_one_line(e)}') from None


def _names(keys, limit: int = 4) -> str:
    keys = sorted(keys)
    more = f' (+{len(keys) - limit} more)' if len(keys) > limit else ''
    return ', '.join(keys[:limit]) + more


def fit_state_dict(state_dict: dict, model: nn.Module) -> dict:
    """Check a cvtlab-layout state_dict against `model` strictly; drop a classifier of another size.

    Raises CheckpointError naming missing keys, unexpected keys and shape mismatches.
    """
    target = model.state_dict()
    state_dict = dict(state_dict)
    for key, value in target.items():  # checkpoints from before BN counted its batches
        if key.endswith('num_batches_tracked') and key not in state_dict:
            state_dict[key] = torch.zeros_like(value)
    head = [k for k in state_dict if k.startswith('head.')]
    classes = state_dict['head.weight'].shape[0] if 'head.weight' in state_dict else None
    target_classes = target['head.weight'].shape[0] if 'head.weight' in target else None
    if head and classes != target_classes:
        what = f'{target_classes} classes' if target_classes else 'no classifier'
        _logger.warning(f'checkpoint classifier has {classes} classes, the model {what}: '
                        f'classifier not loaded (new head, as for fine-tuning)')
        for k in head:
            del state_dict[k]
        state_dict.update({k: v for k, v in target.items() if k.startswith('head.')})
    missing = set(target) - set(state_dict)
    unexpected = set(state_dict) - set(target)
    common = set(target) & set(state_dict)
    wrong = [f'{k} {tuple(state_dict[k].shape)} vs {tuple(target[k].shape)}'
             for k in common if state_dict[k].shape != target[k].shape]
    # float <-> float (fp16 / bf16 weights into fp32) is a cast; float <-> integer is a broken file
    bad_dtype = [f'{k} {state_dict[k].dtype} vs {target[k].dtype}' for k in common
                 if state_dict[k].is_floating_point() != target[k].is_floating_point()]
    problems = []
    if missing:
        problems.append(f'{len(missing)} missing keys: {_names(missing)}')
    if unexpected:
        problems.append(f'{len(unexpected)} unexpected keys: {_names(unexpected)}')
    if wrong:
        problems.append(f'{len(wrong)} shape mismatches: {_names(wrong, 2)}')
    if bad_dtype:
        problems.append(f'{len(bad_dtype)} dtype mismatches: {_names(bad_dtype, 2)}')
    if problems:
        raise CheckpointError(f'checkpoint does not fit {type(model).__name__}: ' + '; '.join(problems))
    return state_dict


def read_checkpoint(source) -> Tuple[dict, str]:
    """(cvtlab-layout state_dict, the layout it was stored in) of a checkpoint file, model folder, training
    run or `hf-hub:` id (`cvtlab.sources`).

    The one read of the file: callers pass the state_dict on rather than reading the path again.
    """
    path = locate(source)[0]
    state_dict = read_state_dict(path)
    try:
        layout = detect_layout(state_dict)
    except CheckpointError as e:
        raise CheckpointError(f'{path}: {e}') from None
    return to_cvtlab(state_dict, layout), layout


def apply_state_dict(model: nn.Module, state_dict: dict) -> nn.Module:
    """Load a cvtlab-layout state_dict (already read and converted) into `model`, strictly (`fit_state_dict`)."""
    model.load_state_dict(fit_state_dict(state_dict, model), strict=True)
    return model


def load_checkpoint(model: nn.Module, source) -> nn.Module:
    """Load official, HF transformers or cvtlab weights (any source of `read_checkpoint`) into `model`, strictly."""
    return apply_state_dict(model, read_checkpoint(source)[0])


def _fsync(path):
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path, write: Callable[[str], None]):
    """Call `write(tmp_path)`, fsync, then rename over `path`: readers see the old or the new file, whole."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f'.{path.name}.', suffix='.tmp', dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        _fsync(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    _fsync(path.parent)


def atomic_write_folder(directory, writers: Dict[str, Callable[[str], None]]) -> Path:
    """Write the files of `directory` (name -> `write(tmp_path)`) so that no reader sees a half-written model:
    they are written and fsynced in a temporary folder beside it; a new folder then appears whole (one
    rename), and in an existing one each file is replaced whole, in the order given."""
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise CheckpointError(f'{directory} exists and is not a folder')
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f'.{directory.name}.', suffix='.tmp', dir=directory.parent))
    try:
        for name, write in writers.items():
            write(str(staging / name))
            _fsync(staging / name)
        if directory.exists():
            for name in writers:
                os.replace(staging / name, directory / name)
            staging.rmdir()
            _fsync(directory)
        else:
            os.rename(staging, directory)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    _fsync(directory.parent)
    return directory


def save_weights(path, state_dict: dict, metadata: Optional[dict] = None):
    """Atomically write a safetensors file; `metadata` values are stored as JSON strings."""
    tensors = {k: v.detach().contiguous().cpu() for k, v in state_dict.items()}
    meta = {k: json.dumps(v) for k, v in (metadata or {}).items()}
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=meta))


def save_model(model: nn.Module, path, model_name: str, model_args: dict, label_names=None) -> Tuple[Path, Path]:
    """Deprecated: write `path` (.safetensors) and a JSON config beside it, cvtlab's layout before the model
    folder. `cvtlab.save_pretrained(model, DIR)` writes the folder that timm and HF transformers read too."""
    import warnings
    warnings.warn('cvtlab.save_model writes the older NAME.safetensors + NAME.json layout; use '
                  'cvtlab.save_pretrained(model, DIR) for a model folder', DeprecationWarning, stacklevel=2)
    path = Path(path).with_suffix('.safetensors')
    cfg = getattr(model, 'pretrained_cfg', None) or {}
    config = dict(
        architecture=model_name,
        model_args=model_args,
        num_classes=model.num_classes,
        label_names=list(label_names) if label_names is not None else None,
        pretrained_cfg={k: cfg[k] for k in ('input_size', 'interpolation', 'mean', 'std', 'crop_pct', 'crop_mode')
                        if k in cfg},
    )
    save_weights(path, model.state_dict(), metadata=dict(cvtlab_config=config))
    json_path = path.with_suffix('.json')
    atomic_write(json_path, lambda tmp: Path(tmp).write_text(json.dumps(config, indent=2, default=list) + '\n'))
    return path, json_path
