"""Dynamic batching: requests that arrive close together share one forward pass.

Handlers on the event loop `submit` their images; one loop task collects them into batches of up to
`max_batch` images, waiting at most `max_wait_ms` after the first, and runs each batch on one worker
thread, so inference never blocks the event loop and never runs two batches at once (two would only
split the same cores). A bounded count of waiting images turns overload into `QueueFull` (HTTP 503)
instead of growing memory.
"""
import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, List, Optional, Sequence

__all__ = ['DynamicBatcher', 'QueueFull', 'BatchStats']


class QueueFull(Exception):
    """More images are waiting than the batcher accepts: the caller should retry later."""


@dataclass
class BatchStats:
    requests: int = 0
    images: int = 0
    batches: int = 0
    largest_batch: int = 0
    rejected: int = 0
    batch_sizes: dict = field(default_factory=dict)  # size -> how many batches had it

    def as_dict(self) -> dict:
        return dict(requests=self.requests, images=self.images, batches=self.batches,
                    mean_batch=self.images / self.batches if self.batches else 0.0,
                    largest_batch=self.largest_batch, rejected=self.rejected,
                    batch_sizes={str(k): v for k, v in sorted(self.batch_sizes.items())})


class DynamicBatcher:
    """`run(list of items) -> list of results` (same order), called on batches of queued items.

    Use inside a running event loop: `await start()`, `await submit(items)` from handlers, `await stop()`
    (which first finishes everything already queued).
    """

    def __init__(self, run: Callable[[List[Any]], Sequence[Any]], max_batch: int = 16, max_wait_ms: float = 10,
                 max_queue: int = 256):
        if max_batch < 1 or max_queue < max_batch or max_wait_ms < 0:
            raise ValueError('need max_batch >= 1, max_queue >= max_batch and max_wait_ms >= 0')
        self.run, self.max_batch, self.max_wait = run, max_batch, max_wait_ms / 1e3
        self.max_queue = max_queue
        self.executor: Optional[ThreadPoolExecutor] = None
        self.stats = BatchStats()
        self._queue: Optional[asyncio.Queue] = None
        self._task: Optional[asyncio.Task] = None
        self._waiting = 0  # images submitted and not yet answered

    async def start(self):
        self.executor = ThreadPoolExecutor(1, thread_name_prefix='cvtlab-inference')
        self._queue = asyncio.Queue()
        self._task = asyncio.create_task(self._serve(), name='cvtlab-batcher')

    def check_room(self, count: int = 1):
        """QueueFull unless `count` more images may wait now: called before a request's body is even read,
        so an overloaded server sheds load before spending memory on it."""
        if self._waiting + count > self.max_queue:
            self.stats.rejected += 1
            raise QueueFull(f'{self._waiting} images are waiting (at most {self.max_queue})')

    async def submit(self, items: List[Any]) -> List[Any]:
        """Results for `items`, in order, once their batches have run. Raises QueueFull when accepting them
        would leave more than `max_queue` images waiting, and the batch's exception if it failed."""
        self.check_room(len(items))
        loop = asyncio.get_running_loop()
        futures = [loop.create_future() for _ in items]
        self._waiting += len(items)
        self.stats.requests += 1
        try:
            for item, future in zip(items, futures):
                self._queue.put_nowait((item, future))
            return list(await asyncio.gather(*futures))
        finally:
            self._waiting -= len(items)

    async def call(self, fn: Callable, *args):
        """Run `fn(*args)` on the inference thread (between batches): other work that needs the model. It
        counts as one waiting image, so it is bounded (QueueFull) like predictions."""
        self.check_room(1)
        self._waiting += 1
        try:
            return await asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)
        finally:
            self._waiting -= 1

    async def _next_batch(self) -> list:
        batch = [await self._queue.get()]
        deadline = time.monotonic() + self.max_wait
        while len(batch) < self.max_batch:
            if not self._queue.empty():
                batch.append(self._queue.get_nowait())
                continue
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                batch.append(await asyncio.wait_for(self._queue.get(), remaining))
            except asyncio.TimeoutError:
                break
        return batch

    async def _serve(self):
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._next_batch()
            live = [(item, future) for item, future in batch if not future.done()]  # skip cancelled requests
            if not live:
                continue
            try:
                results = await loop.run_in_executor(self.executor, self.run, [item for item, _ in live])
                if len(results) != len(live):
                    raise RuntimeError(f'the batch function returned {len(results)} results for {len(live)} items')
            except Exception as e:  # one failed batch fails its own requests only
                for _, future in live:
                    if not future.done():
                        future.set_exception(e)
                continue
            self.stats.batches += 1
            self.stats.images += len(live)
            self.stats.largest_batch = max(self.stats.largest_batch, len(live))
            self.stats.batch_sizes[len(live)] = self.stats.batch_sizes.get(len(live), 0) + 1
            for (_, future), result in zip(live, results):
                if not future.done():
                    future.set_result(result)

    async def stop(self, timeout: float = 60):
        """Finish what is queued (for at most `timeout` seconds), then stop the loop task and the inference
        thread."""
        deadline = time.monotonic() + timeout
        while self._waiting and not self._task.done() and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        self.executor.shutdown(wait=True)
