"""The training schema: one `TrainConfig` dataclass, named YAML recipes, and CLI flags built from it.

Precedence: dataclass defaults < recipe (`--recipe NAME` or a YAML path) < command-line flags.
Every field is a flag (`--drop-path-rate` for `drop_path_rate`); unknown recipe keys are errors.
"""
import dataclasses
import typing
from dataclasses import dataclass, field, fields
from importlib import resources
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

import yaml

from .errors import ConfigError

DEFAULT_RECIPE = 'small-data'


@dataclass
class TrainConfig:
    # --- model and data
    model: str = field(default='cvt_tiny_stem', metadata=dict(help='timm model name, or arch.tag weights'))
    pretrained: bool = field(default=False, metadata=dict(help='start from the weights of the model cfg'))
    init_checkpoint: Optional[str] = field(default=None, metadata=dict(help='start from this checkpoint (any layout)'))
    data: str = field(default='digits', metadata=dict(
        help="'digits', 'cifar10', 'cifar100', an image folder, wds:SHARDS (WebDataset tar shards, brace patterns) "
             "or hfds:NAME_OR_PATH[:SPLIT] (HF datasets: a save_to_disk folder, or a Hub name from the cache)"))
    val_data: Optional[str] = field(default=None, metadata=dict(
        help='validation data, in any form --data takes (default: its val/ folder or split, else --val-split of it)'))
    data_root: str = field(default='~/.cache/cvtlab/data', metadata=dict(help='where cifar is stored / downloaded'))
    download: bool = field(default=True, metadata=dict(help='download cifar when absent'))
    hub_download: bool = field(default=False, metadata=dict(
        help='hfds:NAME may download the data set from the HF Hub (default: read it from the HF cache only)'))
    val_split: float = field(default=0.2, metadata=dict(help='val fraction when the folder has no val/ subfolder'))
    strict_data: bool = field(default=False, metadata=dict(help='unreadable images are errors, not skipped'))
    img_size: Optional[int] = field(default=None, metadata=dict(
        help="input size (default: pretrained, the model's cfg; from scratch, the data's own size rounded up to a "
             "multiple of 16, at least 32, at most the model's cfg)"))
    num_workers: int = field(default=2, metadata=dict(help='data loader worker processes'))
    # --- optimisation
    epochs: int = field(default=40, metadata=dict(help='training epochs'))
    batch_size: int = field(default=64, metadata=dict(help='images per step and process'))
    grad_accum: int = field(default=1, metadata=dict(help='steps accumulated per optimizer update'))
    opt: str = field(default='adamw', metadata=dict(help="timm optimizer name ('adamw', 'sgd', ...)"))
    base_lr: float = field(default=1e-3, metadata=dict(help='lr per 256 images: lr = base_lr x global batch / 256'))
    lr: Optional[float] = field(default=None, metadata=dict(help='absolute lr; overrides base_lr scaling'))
    momentum: float = field(default=0.9, metadata=dict(help='SGD momentum'))
    weight_decay: float = field(default=0.05, metadata=dict(help='decoupled weight decay (not on norms, biases, cls)'))
    layer_decay: Optional[float] = field(default=None, metadata=dict(help='layer-wise lr decay (fine-tuning)'))
    sched: str = field(default='cosine', metadata=dict(help='timm scheduler, stepped every update'))
    warmup_epochs: float = field(default=3, metadata=dict(help='linear warm-up length'))
    max_warmup_frac: float = field(default=0.1, metadata=dict(
        help='warm-up takes at most this fraction of the run (a short run is not all warm-up)'))
    warmup_lr: float = field(default=1e-6, metadata=dict(help='lr at the start of warm-up'))
    min_lr: float = field(default=1e-5, metadata=dict(help='lr at the end of the cosine'))
    clip_grad: Optional[float] = field(default=None, metadata=dict(help='clip the gradient norm to this value'))
    drop_path_rate: Optional[float] = field(default=None, metadata=dict(help="stochastic depth (default: model's)"))
    # --- augmentation and loss
    scale: Tuple[float, float] = field(default=(0.08, 1.0), metadata=dict(help='RandomResizedCrop area range'))
    hflip: float = field(default=0.5, metadata=dict(help='horizontal flip probability'))
    auto_augment: Optional[str] = field(default=None, metadata=dict(help="e.g. 'rand-m9-mstd0.5-inc1'"))
    color_jitter: Optional[float] = field(default=None, metadata=dict(help='colour jitter strength'))
    reprob: float = field(default=0.0, metadata=dict(help='random erasing probability'))
    mixup: float = field(default=0.0, metadata=dict(help='mixup alpha (0: off)'))
    cutmix: float = field(default=0.0, metadata=dict(help='cutmix alpha (0: off)'))
    smoothing: float = field(default=0.1, metadata=dict(help='label smoothing'))
    # --- speed and precision
    device: str = field(default='auto', metadata=dict(help="'auto', 'cpu' or 'cuda'"))
    amp: str = field(default='none', metadata=dict(help="'none', 'bf16' (CPU/GPU) or 'fp16' (GPU, GradScaler)"))
    channels_last: bool = field(default=False, metadata=dict(help='channels_last memory format'))
    compile: bool = field(default=False, metadata=dict(help='torch.compile the model (dynamic=False)'))
    grad_checkpointing: bool = field(default=False, metadata=dict(help='activation checkpointing per block'))
    ema: bool = field(default=False, metadata=dict(help='keep an EMA of the weights (evaluated and saved)'))
    ema_decay: float = field(default=0.999, metadata=dict(help='EMA decay per update'))
    sync_bn: bool = field(default=False, metadata=dict(
        help='SyncBatchNorm across processes (DDP on CUDA; CvT projections hold BatchNorm)'))
    # --- run control
    seed: int = field(default=0, metadata=dict(help='seed for everything (per rank)'))
    deterministic: bool = field(default=False, metadata=dict(help='torch.use_deterministic_algorithms'))
    output: Optional[str] = field(default=None, metadata=dict(help='run directory (default: runs/MODEL-DATA)'))
    resume: bool = field(default=False, metadata=dict(help='continue from the state in the run directory'))
    quiet: bool = field(default=False, metadata=dict(help='log lines instead of progress bars'))
    log_interval: int = field(default=50, metadata=dict(help='steps between log lines (quiet / no terminal)'))

    def __post_init__(self):
        checks = [
            (self.epochs >= 1, 'epochs must be >= 1'),
            (self.batch_size >= 1, 'batch-size must be >= 1'),
            (self.grad_accum >= 1, 'grad-accum must be >= 1'),
            (0.0 < self.val_split < 1.0, 'val-split must be between 0 and 1'),
            (self.amp in ('none', 'bf16', 'fp16'), "amp must be 'none', 'bf16' or 'fp16'"),
            (self.device in ('auto', 'cpu', 'cuda'), "device must be 'auto', 'cpu' or 'cuda'"),
            (self.num_workers >= 0, 'num-workers must be >= 0'),
            (self.base_lr > 0 and (self.lr is None or self.lr > 0), 'learning rates must be > 0'),
            (0 <= self.scale[0] <= self.scale[1] <= 1, 'scale must be two fractions, low <= high'),
            (self.img_size is None or self.img_size >= 16, 'img-size must be >= 16'),
            (self.log_interval >= 1, 'log-interval must be >= 1'),
            (self.warmup_epochs >= 0, 'warmup-epochs must be >= 0'),
            (0.0 <= self.max_warmup_frac <= 1.0, 'max-warmup-frac must be between 0 and 1'),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)
        _check_choice('opt', self.opt, _optimizers())
        _check_choice('sched', self.sched, ('cosine', 'tanh', 'step', 'multistep', 'plateau', 'poly'))

    def to_dict(self) -> Dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}


def _optimizers():
    from timm.optim import list_optimizers
    return list_optimizers()


def _check_choice(name: str, value: str, choices):
    if value not in choices:
        import difflib
        close = difflib.get_close_matches(str(value), list(choices), n=3)
        raise ConfigError(f'{name} {value!r} is not one of timm\'s' + (f'; did you mean {", ".join(close)}?' if close
                                                                       else f' ({", ".join(list(choices)[:8])}, ...)'))


# --- recipes --------------------------------------------------------------------------------------
def recipe_names():
    return sorted(p.name[:-5] for p in resources.files('cvtlab.recipes').iterdir() if p.name.endswith('.yaml'))


def recipe_text(name: str) -> str:
    path = Path(name)
    if path.suffix in ('.yaml', '.yml') and path.is_file():
        return path.read_text()
    if name not in recipe_names():
        raise ConfigError(f'unknown recipe {name!r}; recipes: {", ".join(recipe_names())} (or a .yaml path)')
    return resources.files('cvtlab.recipes').joinpath(f'{name}.yaml').read_text()


def load_recipe(name: str) -> Dict[str, Any]:
    try:
        values = yaml.safe_load(recipe_text(name)) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f'recipe {name}: invalid YAML ({str(e).splitlines()[0]})') from None
    known = {f.name for f in fields(TrainConfig)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(f'recipe {name}: unknown keys {", ".join(unknown)}')
    return values


def _coerce(name: str, value):
    """YAML gives lists where the schema has tuples."""
    return tuple(value) if isinstance(value, list) else value


def make_config(recipe: Optional[str] = None, **overrides) -> TrainConfig:
    values = load_recipe(recipe or DEFAULT_RECIPE)
    values.update(overrides)
    try:
        return TrainConfig(**{k: _coerce(k, v) for k, v in values.items()})
    except TypeError as e:
        raise ConfigError(str(e)) from None


# --- command-line flags ------------------------------------------------------------------------------
def _flag_type(tp):
    """(argparse type, nargs, is_bool) for a field annotation."""
    if typing.get_origin(tp) is typing.Union:  # Optional[X]
        tp = next(a for a in typing.get_args(tp) if a is not type(None))
    if tp is bool:
        return None, None, True
    if typing.get_origin(tp) is tuple:
        return typing.get_args(tp)[0], len(typing.get_args(tp)), False
    return tp, None, False


def add_config_flags(parser):
    """One flag per TrainConfig field; unset flags stay absent so recipes keep their values."""
    import argparse
    group = parser.add_argument_group('training config (each overrides the recipe)')
    hints = typing.get_type_hints(TrainConfig)
    for f in fields(TrainConfig):
        flag = '--' + f.name.replace('_', '-')
        tp, nargs, is_bool = _flag_type(hints[f.name])
        kwargs = dict(dest=f.name, default=argparse.SUPPRESS, help=f.metadata.get('help'))
        if is_bool:
            group.add_argument(flag, action=argparse.BooleanOptionalAction, **kwargs)
        else:
            group.add_argument(flag, type=tp, nargs=nargs, metavar=f.name.upper(), **kwargs)


def config_from_args(args) -> TrainConfig:
    """Flags over the recipe; with --resume, flags over the run's own saved config.yaml."""
    names = {f.name for f in fields(TrainConfig)}
    overrides = {k: v for k, v in vars(args).items() if k in names}
    recipe = getattr(args, 'recipe', None)
    if overrides.get('resume') and overrides.get('output'):
        saved = Path(overrides['output']) / 'config.yaml'
        if saved.is_file():
            recipe = str(saved)
    return make_config(recipe, **overrides)


# Fields that do not change what a run learns (where it writes, how it logs, how many loader processes).
_NOT_IN_COMMAND = ('output', 'resume', 'quiet', 'log_interval', 'num_workers', 'data_root', 'download',
                   'hub_download')


def command_line(config: Dict[str, Any]) -> str:
    """The `cvtlab train` command of a resolved config (a run's config.yaml): a flag for every field that
    differs from the default recipe's, so that defaults < default recipe < flags gives this config again."""
    import shlex
    base = make_config().to_dict()
    words = ['cvtlab', 'train']
    for name, default in base.items():
        value = config.get(name, default)
        if name in _NOT_IN_COMMAND or value == default or value is None:  # None: no flag sets it (defaults only)
            continue
        flag = '--' + name.replace('_', '-')
        if isinstance(value, bool):
            words.append(flag if value else f'--no-{flag[2:]}')
        else:
            words += [flag, *(shlex.quote(str(v)) for v in (value if isinstance(value, (list, tuple)) else [value]))]
    return ' '.join(words)
