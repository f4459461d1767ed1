"""A batch split across the CPU's threads by samples: each worker runs its share of the samples on one thread,
instead of every op of the whole batch being split across all threads.

Why: on CPU, PyTorch parallelises inside each op (OpenMP). A transformer's many small ops (LayerNorm, window
copies, pooled attention paths, softmax over short rows) are below OpenMP's grain and run on one thread, and
every op ends in a barrier where all threads wait for the slowest: when another process takes a core, the
whole model waits for it (measured on two shared cores: LG-Tiny 1.0 img/s with two OpenMP threads against
7.0 split by samples, BENCHMARKS.md). Split by samples, a worker's ops all run on its own core and the
workers meet once, when the batch is done. Each sample goes through the same ops as before; only the
GEMMs' row counts change, so outputs agree within float rounding.

Used by `SampleGroups` (the whole fused network) and `backends.SessionRunner` (onnxruntime) on CPU.
"""
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

import torch

__all__ = ['sample_parallel', 'split_workers']

# a split runs when its slowest worker has at most this much more than an even share (9 samples on 8 threads:
# one worker runs 2, 1.78x an even share, so the batch runs whole)
MAX_IMBALANCE = 1.25

_pool = {'executor': None, 'size': 0}
_pool_lock = threading.Lock()
_worker = threading.local()  # .intra: the thread count this pool thread was set to


def _forget_pool():  # a forked child has none of the parent's threads: it makes its own pool and lock
    global _pool_lock
    _pool.update(executor=None, size=0)
    _pool_lock = threading.Lock()


if hasattr(os, 'register_at_fork'):
    os.register_at_fork(after_in_child=_forget_pool)


def split_workers(batch: int, threads: int) -> int:
    """How many one-thread workers split a batch: every thread, when the samples share out evenly enough
    (`MAX_IMBALANCE`); else 1 (the batch runs whole, OpenMP splitting each op). Never inside a worker."""
    if threads < 2 or batch < threads or getattr(_worker, 'intra', None) is not None:
        return 1
    per_worker = -(-batch // threads)
    return threads if per_worker * threads <= MAX_IMBALANCE * batch else 1


def _executor(size: int) -> ThreadPoolExecutor:
    with _pool_lock:
        if _pool['executor'] is None or _pool['size'] < size:
            if _pool['executor'] is not None:
                _pool['executor'].shutdown(wait=False)  # its queued calls still finish
            _pool.update(executor=ThreadPoolExecutor(size, thread_name_prefix='cvtlab-samples'), size=size)
        return _pool['executor']


def sample_parallel(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, threads: int) -> torch.Tensor:
    """`fn(x)` for an `fn` that treats every sample (dim 0) on its own, with the batch split into
    `split_workers(len(x), threads)` nearly equal parts run concurrently on one thread each. Runs without
    gradients, in inference mode if the caller is (the caller checks that no gradients are recorded and no
    autocast is on: both are per thread)."""
    workers = split_workers(x.shape[0], threads)
    if workers == 1:
        return fn(x)
    inference, caller_threads = torch.is_inference_mode_enabled(), torch.get_num_threads()

    def run(part: torch.Tensor) -> torch.Tensor:
        if getattr(_worker, 'intra', None) != 1:
            # this pool thread's own OpenMP setting, made once; ATen also keeps the last setting as the
            # default for threads started later, which the caller restores below
            torch.set_num_threads(1)
            _worker.intra = 1
        with torch.inference_mode(inference), torch.no_grad():
            return fn(part)

    futures = [_executor(workers).submit(run, part) for part in x.tensor_split(workers)]
    try:
        return torch.cat([f.result() for f in futures])
    finally:
        torch.set_num_threads(caller_threads)  # the default for threads started later is the caller's again
