"""The loops: one training epoch (`train_one_epoch`) and evaluation over a loader (`evaluate_loader`). One
code path each (AMP off is autocast disabled).

`cvtlab.evaluate` (`inference.py`) runs `evaluate_loader` on a `cvtlab.Classifier`'s model; prediction is the
Classifier's own.
"""
import contextlib
import math
import random
import time
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from .distributed import all_reduce_sum


class NonFiniteLoss(RuntimeError):
    """The loss became NaN or infinite."""


@dataclass
class StepContext:
    """What a training step needs besides the model and the batch."""
    optimizer: torch.optim.Optimizer
    scheduler: object  # timm scheduler, stepped per update
    loss_fn: nn.Module
    device: torch.device
    autocast: Callable[[], contextlib.AbstractContextManager]
    scaler: torch.amp.GradScaler
    mixup: Optional[Callable] = None
    ema: Optional[nn.Module] = None
    grad_accum: int = 1
    clip_grad: Optional[float] = None
    channels_last: bool = False
    seed: int = 0
    rank: int = 0


def seed_step(seed: int, rank: int, step: int):
    """Mixup, drop path and dropout draw from RNGs seeded by the step: resuming anywhere is exact."""
    s = (seed * 7_919 + rank * 104_729 + step) % (2 ** 31)
    torch.manual_seed(s)
    np.random.seed(s)
    random.seed(s)


def _to_device(images, targets, ctx: StepContext):
    images = images.to(ctx.device, non_blocking=True)
    if ctx.channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    return images, targets.to(ctx.device, non_blocking=True)


def train_one_epoch(model: nn.Module, loader, ctx: StepContext, *, epoch: int, step: int,
                    should_stop: Callable[[], bool], on_step: Callable[[int, float, float], None]) -> dict:
    """Train until the loader ends or `should_stop()` at an update boundary on any rank (all ranks then stop after
    the same update). `step` counts batches overall.

    Returns the loss sum and batch count, images seen, the batch counter, whether it was interrupted and
    `data_seconds`: time spent waiting for the loader (a slow input pipeline shows here, not in the model).
    """
    model.train()
    loss_sum, images_seen, batches, data_seconds = 0.0, 0, 0, 0.0
    ready = time.perf_counter()
    for images, targets in loader:
        data_seconds += time.perf_counter() - ready  # the step before ended with a sync (.item() of the loss)
        seed_step(ctx.seed, ctx.rank, step)
        images, targets = _to_device(images, targets, ctx)
        if ctx.mixup is not None:
            images, targets = ctx.mixup(images, targets)
        update = (step + 1) % ctx.grad_accum == 0
        sync = contextlib.nullcontext() if update or not hasattr(model, 'no_sync') else model.no_sync()
        with sync:
            with ctx.autocast():
                loss = ctx.loss_fn(model(images), targets)
            ctx.scaler.scale(loss / ctx.grad_accum).backward()
        # one collective per step: the mean loss, and how many ranks were asked to stop (a signal reaches one
        # rank, or all of them at different steps; every rank must stop after the same update)
        stop_vote = float(update and should_stop())
        loss_total, stop_votes = all_reduce_sum(torch.stack([loss.detach().double(),
                                                             loss.new_tensor(stop_vote, dtype=torch.float64)])).tolist()
        loss_value = loss_total / _world()
        if not math.isfinite(loss_value):
            raise NonFiniteLoss(f'loss is {loss_value} at epoch {epoch + 1}, step {step + 1}')
        step += 1
        if update:
            _optimizer_step(model, ctx, num_updates=step // ctx.grad_accum)
        loss_sum += loss_value
        images_seen += images.shape[0] * _world()
        batches += 1
        on_step(step, loss_value, ctx.optimizer.param_groups[0]['lr'])
        if stop_votes > 0:
            return dict(loss_sum=loss_sum, batches=batches, images=images_seen, step=step, interrupted=True,
                        data_seconds=data_seconds)
        ready = time.perf_counter()
    return dict(loss_sum=loss_sum, batches=batches, images=images_seen, step=step, interrupted=False,
                data_seconds=data_seconds)


def _optimizer_step(model: nn.Module, ctx: StepContext, num_updates: int):
    if ctx.clip_grad:
        ctx.scaler.unscale_(ctx.optimizer)
        torch.nn.utils.clip_grad_norm_(model.parameters(), ctx.clip_grad)
    ctx.scaler.step(ctx.optimizer)
    ctx.scaler.update()
    ctx.optimizer.zero_grad(set_to_none=True)
    ctx.scheduler.step_update(num_updates=num_updates)
    if ctx.ema is not None:
        ctx.ema.update(model.module if hasattr(model, 'module') else model, step=num_updates)


def _world() -> int:
    import torch.distributed as dist
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


@torch.no_grad()
def evaluate_loader(model: nn.Module, loader, device: torch.device, num_classes: int,
                    autocast: Callable = contextlib.nullcontext, channels_last: bool = False) -> dict:
    """Top-1/top-5 (%), mean cross-entropy and the confusion matrix (rows: true class), reduced over ranks."""
    model.eval()
    confusion = torch.zeros(num_classes, num_classes, dtype=torch.float64)
    sums = torch.zeros(3, dtype=torch.float64)  # loss sum, top-5 hits, count
    for images, targets in loader:
        images = images.to(device, non_blocking=True)
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with autocast():
            logits = model(images).float().cpu()
        k = min(5, num_classes)
        top5 = logits.topk(k, dim=1).indices
        sums += torch.tensor([F.cross_entropy(logits, targets, reduction='sum').item(),
                              (top5 == targets[:, None]).any(dim=1).sum().item(), len(targets)], dtype=torch.float64)
        confusion.index_put_((targets, top5[:, 0]), torch.ones(len(targets), dtype=torch.float64), accumulate=True)
    sums, confusion = all_reduce_sum(sums), all_reduce_sum(confusion)
    count = max(sums[2].item(), 1.0)
    per_class = confusion.diag() / confusion.sum(dim=1).clamp(min=1)
    return dict(loss=sums[0].item() / count, top1=100.0 * confusion.diag().sum().item() / count,
                top5=100.0 * sums[1].item() / count, count=int(sums[2].item()),
                per_class=(100.0 * per_class).tolist(), confusion=confusion.long().numpy())
