"""The learning-rate schedule's derived numbers: the lr scaled by the global batch, and a warm-up capped at a
fraction of the run, so that a 3-epoch run is not all warm-up. The trainer prints them with the config."""
from dataclasses import dataclass

from .config import TrainConfig


@dataclass(frozen=True)
class Schedule:
    lr: float  # peak lr after warm-up
    warmup_epochs: float  # what timm's scheduler gets: min(config.warmup_epochs, max_warmup_frac x epochs)
    warmup_updates: int
    total_updates: int

    def describe(self, config: TrainConfig, global_batch: int) -> str:
        """One comment line per derived value, for the printed and saved config."""
        lr_rule = 'lr' if config.lr is not None else f'base_lr {config.base_lr:g} x global batch {global_batch} / 256'
        capped = self.warmup_epochs < config.warmup_epochs
        why = (f'warmup_epochs {config.warmup_epochs:g} capped at max_warmup_frac {config.max_warmup_frac:g} x '
               f'{config.epochs} epochs' if capped else f'warmup_epochs {config.warmup_epochs:g}')
        return (f'# derived: lr {self.lr:.4g} ({lr_rule})\n'
                f'# derived: warm-up {self.warmup_epochs:.3g} epochs = {self.warmup_updates} of '
                f'{self.total_updates} updates ({why}), then {config.sched} to min_lr {config.min_lr:g}')


def derive_schedule(config: TrainConfig, global_batch: int, updates_per_epoch: int) -> Schedule:
    lr = config.lr if config.lr is not None else config.base_lr * global_batch / 256
    warmup = min(config.warmup_epochs, config.max_warmup_frac * config.epochs)
    return Schedule(lr, warmup, int(warmup * updates_per_epoch), config.epochs * updates_per_epoch)
