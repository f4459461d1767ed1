"""`cvtlab.train(config)`: a whole training run — data, model, optimisation, checkpoints, resume, DDP.

Run directory:
    config.yaml, train.log, metrics.csv, events.out.tfevents.* (TensorBoard), classes.json,
    last/ and best/ (model folders, `cvtlab.folder`: config.json + model.safetensors), train_state.pt
    (everything needed to resume; plain tensors and containers, loadable with weights_only=True; with the
    layout it was written with: world size, per-process batch, loader workers, checked by `check_resume_layout`),
    summary.json, plots.png, samples/ (a few validation images for `cvtlab predict`).
"""
import contextlib
import csv
import json
import logging
import random
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional

import numpy as np
import torch
import yaml

from . import distributed
from .checkpoint import atomic_write
from .config import TrainConfig
from .data import build_transforms, choose_img_size, resolve_data_config
from .engine import NonFiniteLoss, StepContext, evaluate_loader, train_one_epoch
from .errors import ConfigError, CvtlabError
from .folder import save_pretrained
from .progress import EpochProgress
from .registry import create_model
from .schedule import derive_schedule
from .datasources import build_datasets, eval_loader, train_loader
from .streaming import StreamLoader

_logger = logging.getLogger('cvtlab')
STATE_FILE = 'train_state.pt'


@dataclass
class RunState:
    """What survives an interruption, besides model / optimizer / scheduler / scaler / EMA tensors."""
    epoch: int = 0  # epoch in progress (0-based)
    batch_in_epoch: int = 0  # batches of that epoch already trained
    step: int = 0  # batches trained overall
    best_top1: float = -1.0
    best_epoch: int = -1
    history: List[dict] = field(default_factory=list)
    train_time: float = 0.0  # seconds spent in training loops (for images/s)
    train_images: int = 0
    epoch_loss_sum: float = 0.0  # the epoch in progress so far, so an interrupted epoch reports its full mean
    epoch_batches: int = 0
    epoch_images: int = 0
    epoch_seconds: float = 0.0
    epoch_data_seconds: float = 0.0  # of epoch_seconds, waiting for the data loader


def _describe(layout: dict) -> str:
    accum = f' x --grad-accum {layout["grad_accum"]}' if layout['grad_accum'] > 1 else ''
    return f'{layout["world_size"]} process(es) x --batch-size {layout["batch_size"]}{accum}'


def check_resume_layout(saved: Optional[dict], now: dict, mid_epoch: bool) -> Optional[str]:
    """Can a run whose state was written with layout `saved` continue as `now` (world size, per-process batch,
    grad accumulation, loader workers)? Raises ConfigError where it would go wrong; else returns a line for the
    log when the layout changed (None when it did not, or for a state from before layouts were recorded).

    The step counter, the lr schedule (in updates) and the place in an epoch all count steps of
    world size x batch images, so that product and --grad-accum must stay. Then map-style data (folders, digits,
    cifar, hfds:) continues exactly even inside an epoch with another world size: the sampler's order is the
    same, and the first k steps of W ranks x B images are its first k x W x B indices for any W. Streamed
    shards (wds:) cut each epoch into one range per rank and loader worker, so inside an epoch both must stay;
    from the next epoch on the plan is made for the new layout."""
    if saved is None:
        return None
    steps_before, steps_now = (x['world_size'] * x['batch_size'] for x in (saved, now))
    if steps_before != steps_now or saved['grad_accum'] != now['grad_accum']:
        fix = []
        if saved['grad_accum'] != now['grad_accum']:
            fix.append(f'--grad-accum {saved["grad_accum"]}')
        if steps_before == steps_now:
            pass
        elif steps_before % now['world_size'] == 0:
            fix.append(f'--batch-size {steps_before // now["world_size"]}')
        else:
            fix.append(f'{saved["world_size"]} process(es) and --batch-size {saved["batch_size"]}')
        raise ConfigError(f'--resume: the run took steps of {steps_before} images ({_describe(saved)}), this job '
                          f'{steps_now} ({_describe(now)}); its step count, lr schedule and place in the epoch count '
                          f'those steps: resume with {" and ".join(fix)}')
    readers = lambda x: (x['world_size'], x['loader_workers'])  # noqa: E731
    if mid_epoch and saved['streamed'] and readers(saved) != readers(now):
        raise ConfigError(f'--resume: the run stopped inside an epoch of streamed shards read by '
                          f'{saved["world_size"]} process(es) x {saved["loader_workers"]} loader worker(s); what each '
                          f'reader has left depends on both, so {now["world_size"]} x {now["loader_workers"]} cannot '
                          f'continue it: resume with {saved["world_size"]} process(es) and --num-workers '
                          f'{saved["num_workers"]}')
    if (saved['world_size'], saved['batch_size']) != (now['world_size'], now['batch_size']):
        where = 'the rest of this epoch exactly' if mid_epoch else 'from the next epoch'
        return f'written by {_describe(saved)}, continued by {_describe(now)}: the same {steps_now} images a step, ' \
               f'{where}'
    return None


def default_output(config: TrainConfig) -> str:
    data = Path(config.data).name or 'data'
    return f"runs/{config.model.replace('.', '-')}-{data}"


class StopFlag:
    """SIGINT / SIGTERM ask the loop to finish the current update, save and exit; a second SIGINT aborts."""

    def __init__(self):
        self.requested = None

    def __call__(self) -> bool:
        return self.requested is not None

    def _handle(self, signum, frame):
        if self.requested is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = signal.Signals(signum).name

    @contextlib.contextmanager
    def installed(self):
        previous = {s: signal.signal(s, self._handle) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield self
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)


def _seed_everything(seed: int, deterministic: bool):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=False)
        torch.backends.cudnn.benchmark = False


def _setup_logging(run_dir: Optional[Path]):
    _logger.setLevel(logging.INFO)
    _logger.propagate = False
    for h in list(_logger.handlers):
        if getattr(h, '_cvtlab', False):
            _logger.removeHandler(h)
            h.close()
    handlers = [logging.StreamHandler()]
    if run_dir is not None:
        handlers.append(logging.FileHandler(run_dir / 'train.log'))
    for h in handlers:
        h._cvtlab = True
        h.setFormatter(logging.Formatter('%(asctime)s %(message)s', '%H:%M:%S'))
        _logger.addHandler(h)


def _autocast_factory(amp: str, device: torch.device):
    if amp == 'fp16' and device.type != 'cuda':
        raise ConfigError('--amp fp16 needs a CUDA device (GradScaler); on CPU use --amp bf16')
    dtype = {'bf16': torch.bfloat16, 'fp16': torch.float16}.get(amp)
    return lambda: torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)


class Trainer:
    """Holds the pieces of a run; `run()` is the epoch loop. Use `cvtlab.train(config)`."""

    def __init__(self, config: TrainConfig):
        self.config = config
        self.env = distributed.setup(config.device)
        self.output = Path(config.output or default_output(config))
        self.is_main = self.env.is_main
        if self.is_main:
            self.output.mkdir(parents=True, exist_ok=True)
            if not config.resume and (self.output / STATE_FILE).exists():
                raise ConfigError(f'{self.output} already holds a run; pass --resume to continue it, '
                                  f'or choose another --output')
        _setup_logging(self.output if self.is_main else None)
        if not self.is_main:
            _logger.setLevel(logging.WARNING)
        _seed_everything(config.seed + self.env.rank, config.deterministic)
        self._build()

    # --- construction --------------------------------------------------------------------------
    def _build(self):
        c, env = self.config, self.env
        from .registry import _check_name
        _check_name(c.model)  # before any data work
        if c.sync_bn:
            distributed.check_sync_bn(env)
        self.data = build_datasets(c.data, None, None, data_root=c.data_root, download=c.download,
                                   val_split=c.val_split, strict=c.strict_data, seed=c.seed, val_data=c.val_data,
                                   hub_download=c.hub_download)
        self.num_classes = len(self.data.classes)
        self.model = self._create_model()
        self.data_config = resolve_data_config(self.model, self.img_size)
        self.data.train.transform, self.data.val.transform = build_transforms(
            self.data_config, scale=c.scale, hflip=c.hflip, auto_augment=c.auto_augment,
            color_jitter=c.color_jitter, reprob=c.reprob)
        if c.grad_checkpointing:
            self.model.set_grad_checkpointing(True)
        if c.sync_bn:
            self.model = distributed.convert_sync_batchnorm(self.model, env)
        self.model.to(env.device)
        if c.channels_last:
            self.model.to(memory_format=torch.channels_last)
        pin = env.device.type == 'cuda'
        self.train_loader = train_loader(self.data.train, c.batch_size, env.world_size, env.rank, c.seed,
                                         c.num_workers, pin)
        self.val_loader = eval_loader(self.data.val, c.batch_size * 2, env.world_size, env.rank, c.num_workers, pin)
        self.global_batch = c.batch_size * env.world_size * c.grad_accum
        self._build_optimization()

    def _create_model(self):
        """Any timm model (cvtlab's or not) with this data's classes, at the input size `choose_img_size` picks.
        Models with a fixed input size (ViT's position embedding) are built at that size."""
        from timm.models import get_pretrained_cfg
        c = self.config
        cfg = get_pretrained_cfg(c.model)
        cfg_size = cfg.input_size[-1] if cfg is not None else 224
        pretrained = c.pretrained or c.init_checkpoint is not None
        self.img_size = c.img_size or choose_img_size(cfg_size, self.data.image_size, pretrained)
        # the arguments that rebuild the model (saved beside its weights), besides num_classes
        self.model_args = {}
        if c.drop_path_rate is not None:
            self.model_args['drop_path_rate'] = c.drop_path_rate
        if cfg is not None and cfg.fixed_input_size and self.img_size != cfg_size:
            self.model_args['img_size'] = self.img_size
        model = create_model(c.model, pretrained=c.pretrained, checkpoint=c.init_checkpoint,
                             num_classes=self.num_classes, **self.model_args)
        if model.num_classes != self.num_classes:  # a checkpoint with another head: replace it
            model.reset_classifier(self.num_classes)
        return model

    def _build_optimization(self):
        from timm.data import Mixup
        from timm.loss import SoftTargetCrossEntropy
        from timm.optim import create_optimizer_v2
        from timm.scheduler import create_scheduler_v2
        from timm.utils import ModelEmaV3
        c, env = self.config, self.env
        self.updates_per_epoch = len(self.train_loader) // c.grad_accum
        if self.updates_per_epoch < 1:
            raise ConfigError('fewer batches per epoch than --grad-accum')
        self.schedule = derive_schedule(c, self.global_batch, self.updates_per_epoch)
        self.lr = self.schedule.lr
        opt_args = dict(momentum=c.momentum) if c.opt in ('sgd', 'momentum', 'nesterov') else {}
        self.optimizer = create_optimizer_v2(self.model, c.opt, lr=self.lr, weight_decay=c.weight_decay,
                                             layer_decay=c.layer_decay, **opt_args)
        self.scheduler, _ = create_scheduler_v2(
            self.optimizer, sched=c.sched, num_epochs=c.epochs, warmup_epochs=self.schedule.warmup_epochs,
            warmup_lr=c.warmup_lr, min_lr=c.min_lr, step_on_epochs=False, updates_per_epoch=self.updates_per_epoch)
        mixup = None
        if c.mixup > 0 or c.cutmix > 0:
            mixup = Mixup(mixup_alpha=c.mixup, cutmix_alpha=c.cutmix, label_smoothing=c.smoothing,
                          num_classes=self.num_classes)
        loss_fn = SoftTargetCrossEntropy() if mixup else torch.nn.CrossEntropyLoss(label_smoothing=c.smoothing)
        self.ema = ModelEmaV3(self.model, decay=c.ema_decay) if c.ema else None
        self.train_model = self.model
        if c.compile:
            self.train_model = torch.compile(self.train_model, dynamic=False)
        if env.distributed:
            ids = [env.local_rank] if env.device.type == 'cuda' else None
            self.train_model = torch.nn.parallel.DistributedDataParallel(self.train_model, device_ids=ids)
        self.autocast = _autocast_factory(c.amp, env.device)
        self.scaler = torch.amp.GradScaler(env.device.type, enabled=c.amp == 'fp16')
        self.ctx = StepContext(self.optimizer, self.scheduler, loss_fn, env.device, self.autocast, self.scaler, mixup,
                               self.ema, c.grad_accum, c.clip_grad, c.channels_last, c.seed, env.rank)

    # --- state -------------------------------------------------------------------------------------
    def _state_dict(self, state: RunState) -> dict:
        return dict(
            run=vars(state).copy(), model=self.model.state_dict(), optimizer=self.optimizer.state_dict(),
            scheduler=self.scheduler.state_dict(), scaler=self.scaler.state_dict(),
            ema=self.ema.module.state_dict() if self.ema else None, config=self.config.to_dict(),
            classes=self.data.classes, layout=self._layout(),
            rng=dict(torch=torch.get_rng_state(), numpy=_numpy_state(), python=random.getstate()))

    def _layout(self) -> dict:
        """What the step size and, for streamed data, each reader's share of an epoch depend on."""
        streamed = isinstance(self.train_loader, StreamLoader)
        return dict(world_size=self.env.world_size, batch_size=self.config.batch_size,
                    grad_accum=self.config.grad_accum, num_workers=self.config.num_workers, streamed=streamed,
                    loader_workers=self.train_loader.workers if streamed else None)

    def save_state(self, state: RunState):
        """Training state (atomic) and user-facing `last` weights; rank 0 only."""
        if not self.is_main:
            return
        payload = self._state_dict(state)
        atomic_write(self.output / STATE_FILE, lambda tmp: torch.save(payload, tmp))
        self._save_weights('last')

    def _save_weights(self, name: str):
        """The model folder `name`/ (`cvtlab.folder`; EMA weights if kept), with the class names and the eval
        preprocessing of this run: what `load_model`, eval, predict, timm and HF transformers read."""
        model = self.ema.module if self.ema else self.model
        # the registered architecture, this run's model arguments (e.g. a timm model's img_size) and class count
        save_pretrained(model, self.output / name, architecture=self.config.model.split('.')[0],
                        model_args=dict(self.model_args), label_names=self.data.classes, data_config=self.data_config)

    def load_state(self) -> RunState:
        path = self.output / STATE_FILE
        if not path.exists():
            raise ConfigError(f'--resume: no {STATE_FILE} in {self.output}')
        try:
            payload = torch.load(path, map_location='cpu', weights_only=True)
        except Exception as e:
            raise CvtlabError(f'{path}: unreadable training state ({type(e).__name__})') from None
        if payload['classes'] != self.data.classes:
            raise ConfigError(f'--resume: the data classes differ from the run\'s ({len(payload["classes"])} '
                              f'saved, {len(self.data.classes)} now)')
        # every rank reads the same file, so every rank refuses alike (before any collective)
        self.resume_note = check_resume_layout(payload.get('layout'), self._layout(),
                                               mid_epoch=payload['run']['batch_in_epoch'] > 0)
        self.model.load_state_dict(payload['model'])
        self.optimizer.load_state_dict(payload['optimizer'])
        self.scheduler.load_state_dict(payload['scheduler'])
        self.scaler.load_state_dict(payload['scaler'])
        if self.ema is not None and payload['ema'] is not None:
            self.ema.module.load_state_dict(payload['ema'])
        torch.set_rng_state(payload['rng']['torch'])
        np.random.set_state(_numpy_state_from(payload['rng']['numpy']))
        random.setstate(_to_tuple(payload['rng']['python']))
        return RunState(**payload['run'])

    # --- the loop ----------------------------------------------------------------------------------------
    def run(self) -> dict:
        c = self.config
        state = self.load_state() if c.resume else RunState()
        if self.is_main:
            self._write_run_files()
            _logger.info(f'{c.model}: {sum(p.numel() for p in self.model.parameters()):,} params, '
                         f'{self.num_classes} classes, {len(self.data.train)} train / {len(self.data.val)} val '
                         f'images, input {self.data_config["input_size"][1]} px, lr {self.lr:.3g} '
                         f'(global batch {self.global_batch}), {self.env.world_size} process(es) on '
                         f'{self.env.device.type}')
            if c.resume:
                note = f' ({self.resume_note})' if self.resume_note else ''
                _logger.info(f'resumed at epoch {state.epoch + 1}, batch {state.batch_in_epoch}{note}')
        writer = self._tensorboard()
        progress = EpochProgress(self.is_main, c.quiet, c.log_interval)
        stop = StopFlag()
        try:
            with stop.installed():
                while state.epoch < c.epochs:
                    if not self._train_epoch(state, progress, stop, writer) and state.epoch < c.epochs:
                        return self._interrupted(state, stop)
        except NonFiniteLoss as e:
            raise CvtlabError(f'{e}; run stopped, the last good checkpoint stays in {self.output}') from None
        finally:
            if writer is not None:
                writer.close()
        return self._finish(state)

    def _train_epoch(self, state: RunState, progress: EpochProgress, stop: StopFlag, writer) -> bool:
        c = self.config
        loader = self.train_loader
        loader.set_epoch(state.epoch, skip_batches=state.batch_in_epoch)
        progress.start_epoch(state.epoch, c.epochs, len(loader) + state.batch_in_epoch, state.batch_in_epoch)
        t0 = time.time()
        seen = [0]

        def on_step(step, loss, lr):
            seen[0] += c.batch_size * self.env.world_size
            progress.step(loss, lr, seen[0])

        try:
            result = train_one_epoch(self.train_model, loader, self.ctx, epoch=state.epoch, step=state.step,
                                     should_stop=stop, on_step=on_step)
        finally:
            progress.end_epoch()
        train_seconds = time.time() - t0
        state.train_time += train_seconds
        state.train_images += result['images']
        state.epoch_loss_sum += result['loss_sum']
        state.epoch_batches += result['batches']
        state.epoch_images += result['images']
        state.epoch_seconds += train_seconds
        state.epoch_data_seconds += result['data_seconds']
        state.batch_in_epoch += result['step'] - state.step
        state.step = result['step']
        if result['interrupted'] and state.batch_in_epoch < loader.batches_per_epoch:
            self.save_state(state)
            return False
        metrics = self._evaluate()
        row = dict(epoch=state.epoch + 1, step=state.step,
                   train_loss=state.epoch_loss_sum / max(state.epoch_batches, 1),
                   val_loss=metrics['loss'], val_top1=metrics['top1'], val_top5=metrics['top5'],
                   lr=self.optimizer.param_groups[0]['lr'], epoch_time=state.epoch_seconds,
                   images_per_sec=state.epoch_images / max(state.epoch_seconds, 1e-9),
                   data_wait_frac=state.epoch_data_seconds / max(state.epoch_seconds, 1e-9))
        state.history.append(row)
        state.epoch, state.batch_in_epoch = state.epoch + 1, 0
        state.epoch_loss_sum, state.epoch_batches, state.epoch_images = 0.0, 0, 0
        state.epoch_seconds = state.epoch_data_seconds = 0.0
        self._log_epoch(state, writer)
        if metrics['top1'] > state.best_top1:
            state.best_top1, state.best_epoch = metrics['top1'], row['epoch']
            if self.is_main:
                self._save_weights('best')
        self.save_state(state)
        return not distributed.any_rank(stop())  # a signal during evaluation: every rank stops here

    def _evaluate(self) -> dict:
        if self.env.distributed:  # BN statistics drift apart per rank: evaluate (and save) rank 0's everywhere
            from timm.utils import distribute_bn
            for module in (self.model, self.ema.module if self.ema else None):
                if module is not None:
                    distribute_bn(module, self.env.world_size, reduce=False)
        model = self.ema.module if self.ema else self.model
        return evaluate_loader(model, self.val_loader, self.env.device, self.num_classes, self.autocast,
                               self.config.channels_last)

    # --- outputs ------------------------------------------------------------------------------------------
    def _write_run_files(self):
        # the derived values as comments: the file stays a recipe that --resume reads back
        text = yaml.safe_dump(self.config.to_dict(), sort_keys=False) + self.schedule.describe(
            self.config, self.global_batch) + f'\n# derived: input {self.img_size} px\n'

        atomic_write(self.output / 'config.yaml', lambda tmp: Path(tmp).write_text(text))
        classes = json.dumps(dict(classes=self.data.classes,
                                  class_to_idx={n: i for i, n in enumerate(self.data.classes)}), indent=1)
        atomic_write(self.output / 'classes.json', lambda tmp: Path(tmp).write_text(classes))
        _logger.info('resolved config:\n' + text.rstrip())
        self._write_samples()

    def _write_samples(self, count: int = 8):
        folder = self.output / 'samples'
        folder.mkdir(exist_ok=True)
        for i, (img, label) in enumerate(self.data.val.preview(count)):
            img.save(folder / f'{i:02d}_{self.data.classes[label]}.png')

    def _tensorboard(self):
        if not self.is_main:
            return None
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            _logger.warning('tensorboard is not installed: no TensorBoard events')
            return None
        return SummaryWriter(str(self.output))

    def _log_epoch(self, state: RunState, writer):
        if not self.is_main:
            return
        row = state.history[-1]
        _logger.info(f"epoch {row['epoch']}/{self.config.epochs}: train loss {row['train_loss']:.4f}, "
                     f"val loss {row['val_loss']:.4f}, top-1 {row['val_top1']:.2f}%, top-5 {row['val_top5']:.2f}%, "
                     f"{row['images_per_sec']:.0f} img/s, data wait {row['data_wait_frac']:.0%} of the epoch")

        def write_csv(tmp):  # rewritten whole from the state, so a crash never duplicates or loses rows
            with open(tmp, 'w', newline='') as f:
                w = csv.DictWriter(f, fieldnames=list(row))
                w.writeheader()
                w.writerows(state.history)

        atomic_write(self.output / 'metrics.csv', write_csv)
        if writer is not None:
            for key in ('train_loss', 'val_loss', 'val_top1', 'val_top5', 'lr', 'images_per_sec', 'data_wait_frac'):
                writer.add_scalar(key, row[key], row['epoch'])

    def _interrupted(self, state: RunState, stop: StopFlag) -> dict:
        why = stop.requested or 'a stop request on another process'
        _logger.info(f'{why}: stopped at epoch {state.epoch + 1}, batch {state.batch_in_epoch}; '
                     f'state saved in {self.output}; continue with: cvtlab train --output {self.output} --resume')
        return dict(interrupted=True, epoch=state.epoch, step=state.step, output=str(self.output))

    def _finish(self, state: RunState) -> dict:
        last = state.history[-1] if state.history else {}
        best = next((h for h in state.history if h['epoch'] == state.best_epoch), last)
        summary = dict(
            model=self.config.model, data=self.data.source, classes=len(self.data.classes),
            best_top1=best.get('val_top1'), best_top5=best.get('val_top5'), best_epoch=state.best_epoch,
            final_top1=last.get('val_top1'), final_top5=last.get('val_top5'), epochs=len(state.history),
            images_per_sec=state.train_images / max(state.train_time, 1e-9), wall_time_s=state.train_time,
            world_size=self.env.world_size, device=self.env.device.type, skipped_images=self.data.skipped,
            output=str(self.output))
        if self.is_main:
            atomic_write(self.output / 'summary.json', lambda tmp: Path(tmp).write_text(json.dumps(summary, indent=2)))
            from .plots import plot_history
            if state.history:
                plot_history(state.history, self.output / 'plots.png')
            _print_summary(summary)
        return summary


def _numpy_state():
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return dict(name=name, keys=torch.from_numpy(keys.astype(np.int64)), pos=int(pos), has_gauss=int(has_gauss),
                cached=float(cached))


def _numpy_state_from(d: dict):
    return d['name'], d['keys'].numpy().astype(np.uint32), d['pos'], d['has_gauss'], d['cached']


def _to_tuple(x):
    return tuple(_to_tuple(v) for v in x) if isinstance(x, (list, tuple)) else x


def _print_summary(summary: dict):
    from rich.console import Console
    from rich.table import Table
    table = Table(title='training summary')
    table.add_column('metric')
    table.add_column('value', justify='right')
    for key in ('model', 'data', 'epochs', 'best_top1', 'best_top5', 'best_epoch', 'final_top1', 'images_per_sec',
                'wall_time_s', 'world_size', 'device', 'output'):
        v = summary[key]
        table.add_row(key, f'{v:.2f}' if isinstance(v, float) else str(v))
    Console().print(table)


def train(config: TrainConfig) -> dict:
    """Train (or fine-tune) per `config`; returns the summary (best/final top-1/5, images/s, wall time)."""
    try:
        return Trainer(config).run()
    finally:
        distributed.teardown()
