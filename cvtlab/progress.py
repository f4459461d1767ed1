"""Progress for long work: rich bars (rate, ETA, loss, lr) in a terminal, plain log lines otherwise."""
import logging
import sys
import time
from typing import Optional

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskProgressColumn, TextColumn, \
    TimeElapsedColumn, TimeRemainingColumn

_logger = logging.getLogger('cvtlab')


class EpochProgress:
    """One bar per epoch when interactive; otherwise a log line every `log_interval` steps."""

    def __init__(self, enabled: bool = True, quiet: bool = False, log_interval: int = 50,
                 console: Optional[Console] = None):
        self.enabled = enabled
        self.console = console or Console(file=sys.stderr)
        self.bars = enabled and not quiet and self.console.is_terminal
        self.log_interval = log_interval
        self.progress = None

    def start_epoch(self, epoch: int, epochs: int, total: int, done: int = 0):
        self.epoch, self.epochs, self.total, self.count, self.t0 = epoch, epochs, total, done, time.time()
        if self.bars:
            self.progress = Progress(
                TextColumn(f'epoch {epoch + 1}/{epochs}'), BarColumn(), MofNCompleteColumn(), TaskProgressColumn(),
                TextColumn('{task.fields[rate]:.0f} img/s'), TimeElapsedColumn(), TimeRemainingColumn(),
                TextColumn('loss {task.fields[loss]:.4f} lr {task.fields[lr]:.2e}'),
                console=self.console, transient=False)
            self.progress.start()
            self.task = self.progress.add_task('train', total=total, completed=done, rate=0.0, loss=0.0, lr=0.0)

    def step(self, loss: float, lr: float, images: int):
        if not self.enabled:
            return
        self.count += 1
        rate = images / max(time.time() - self.t0, 1e-9)
        if self.progress is not None:
            self.progress.update(self.task, advance=1, rate=rate, loss=loss, lr=lr)
        elif self.count % self.log_interval == 0 or self.count == self.total:
            _logger.info(f'epoch {self.epoch + 1}/{self.epochs} [{self.count}/{self.total}] loss {loss:.4f} '
                         f'lr {lr:.2e} {rate:.0f} img/s')

    def end_epoch(self):
        if self.progress is not None:
            self.progress.stop()
            self.progress = None
