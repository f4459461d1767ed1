"""A batch split across the CPU's threads by samples: each worker runs its own samples with one (or a few)
intra-op threads, instead of every op of the whole batch being split across all threads.

Why: on CPU, PyTorch parallelises inside each op (OpenMP). A transformer's many small ops (LayerNorm, window
copies, pooled attention paths, softmax over short rows) are below OpenMP's grain and run on one thread, and
every op ends in a barrier where all threads wait for the slowest: when another process takes a core, the
whole model waits for it (measured on two shared cores: LG-Tiny 1.0 img/s with two OpenMP threads against
7.2 split by samples). Split by samples, every op of a worker runs on that worker's core, and the workers
never wait for each other until the batch is done. Each sample is computed by exactly the same ops as
before, so outputs are identical.

Used by `SampleGroups` (the whole fused network) for batches of at least two samples on CPU.
"""
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, List

import torch

__all__ = ['sample_parallel', 'worker_count']

_pool_lock = threading.Lock()
_pool = {'executor': None, 'size': 0, 'pid': None}


def worker_count(batch: int, threads: int) -> int:
    """How many workers split a batch: one per thread, never more than the samples."""
    return max(1, min(batch, threads))


def _executor(size: int) -> ThreadPoolExecutor:
    # one pool per process (a forked child gets a new one: the parent's threads do not exist there)
    with _pool_lock:
        if _pool['executor'] is None or _pool['size'] < size or _pool['pid'] != os.getpid():
            _pool.update(executor=ThreadPoolExecutor(size, thread_name_prefix='cvtlab-samples'), size=size,
                         pid=os.getpid())
        return _pool['executor']


def sample_parallel(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, threads: int) -> torch.Tensor:
    """`fn(x)` for an `fn` that treats every sample (dim 0) on its own, with the batch split into
    `worker_count` nearly equal parts run concurrently, each with `threads // workers` intra-op threads.
    Runs without gradients (the caller checks that none are recorded) and in inference mode if the caller is."""
    workers = worker_count(x.shape[0], threads)
    if workers == 1:
        return fn(x)
    parts: List[torch.Tensor] = list(x.tensor_split(workers))
    intra = max(1, threads // workers)
    inference = torch.is_inference_mode_enabled()

    def run(part: torch.Tensor) -> torch.Tensor:
        torch.set_num_threads(intra)  # this worker thread's own OpenMP setting; the caller's is untouched
        with torch.inference_mode(inference), torch.no_grad():  # grad modes are per thread
            return fn(part)

    futures = [_executor(workers).submit(run, part) for part in parts]
    outs = [f.result() for f in futures]
    return torch.cat(outs)
