"""One function per measurement: interleaved timing, latency, peak memory, the matmul rate, GMACs.

Nothing here knows about model families; `subjects.py` combines these into benchmark rows.
"""
import copy
import ctypes
import gc
import os
import statistics
import threading
import time
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn

from ..flops import count_macs

PROBE = 'matmul probe'

_PAGE = 4096
try:
    _PAGE = os.sysconf('SC_PAGE_SIZE')
    _LIBC = ctypes.CDLL('libc.so.6')
except (OSError, AttributeError, ValueError):  # no glibc (macOS, musl): no heap trimming before a measurement
    _LIBC = None


def _sync(device: torch.device):
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


def time_interleaved(steps: Dict[str, Callable[[], object]], warmup: int, repeats: int,
                     device: torch.device, settle_s: float = 0.0) -> Dict[str, List[float]]:
    """Seconds per call of each step, the steps taking turns (A B A B ...) so drift hits them alike. With
    `settle_s` (CPU runs of `cvtlab benchmark`: `deploy.backends.SETTLE_S`), each timed call starts that long
    after the one before it ended: threads a step leaves spin-waiting (onnxruntime's pool thread for ~40 ms
    after a run, OpenMP's briefly) are idle again when the next step starts."""
    for _ in range(warmup):
        for fn in steps.values():
            fn()
    times = {name: [] for name in steps}
    for _ in range(repeats):
        for name, fn in steps.items():
            _sync(device)
            if settle_s:
                time.sleep(settle_s)
            start = time.perf_counter()
            fn()
            _sync(device)
            times[name].append(time.perf_counter() - start)
    return times


def latency(times: Sequence[float]) -> Tuple[float, float]:
    """(median, p90) in milliseconds of per-call times in seconds."""
    ordered = sorted(times)
    p90 = ordered[min(len(ordered) - 1, int(round(0.9 * (len(ordered) - 1))))]
    return 1e3 * statistics.median(ordered), 1e3 * p90


def matmul_probe(dtype: torch.dtype = torch.float32, device: str = 'cpu', n: int = 1536,
                 calls: int = 4) -> Tuple[Callable[[], object], float]:
    """A step of `calls` dense n x n x n matmuls, and its GFLOP: timed like a model, its rate is the
    ceiling a model's GEMMs can reach on this machine, measured now rather than taken from a datasheet."""
    device = torch.device(device)
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)

    def step():
        for _ in range(calls):
            y = a @ b
        return y
    return step, 2 * n ** 3 * calls / 1e9


def matmul_rate(dtype: torch.dtype = torch.float32, device: str = 'cpu', repeats: int = 8) -> float:
    """The device's dense matmul rate in GFLOP/s, on its own (median of `repeats` probe steps)."""
    step, gflop = matmul_probe(dtype, device)
    times = time_interleaved({PROBE: step}, warmup=1, repeats=repeats, device=torch.device(device))[PROBE]
    return gflop / statistics.median(times)


def _rss_bytes() -> int:
    with open('/proc/self/statm') as f:
        return int(f.read().split()[1]) * _PAGE


def peak_memory(fn: Callable[[], object], device: torch.device) -> int:
    """Bytes that one call of `fn` needs above what is held before it (CPU RSS growth or CUDA allocated)."""
    gc.collect()
    if device.type == 'cuda':
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        fn()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - base
    if _LIBC is not None:
        _LIBC.malloc_trim(0)  # return freed heap to the OS so the growth is this step's own
    base = peak = _rss_bytes()
    done = threading.Event()

    def sample():  # every 0.5 ms: the peak of a step lasting tens of ms is not missed
        nonlocal peak
        while not done.is_set():
            peak = max(peak, _rss_bytes())
            time.sleep(0.0005)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        fn()
    finally:
        done.set()
        sampler.join()
    return max(peak, _rss_bytes()) - base


def create_at_size(name: str, img_size: Tuple[int, int], **kwargs) -> nn.Module:
    """timm model at `img_size` (`kwargs` to `timm.create_model`): fixed-size models (ViT, Swin) are built for
    it, fully convolutional ones (CvT) take any size as they are."""
    import timm
    try:
        return timm.create_model(name, img_size=img_size, **kwargs)
    except TypeError:  # the model has no img_size argument: it runs at any size
        return timm.create_model(name, **kwargs)


def default_img_size(name: str) -> int:
    """The side of the model's default input size (224 when timm has no pretrained cfg for it)."""
    import timm
    cfg = timm.models.get_pretrained_cfg(name)
    return cfg.input_size[-1] if cfg else 224


def gmacs(name: str, img_size: Tuple[int, int], model: Optional[nn.Module] = None) -> Optional[float]:
    """Forward GMACs of one image, attention included: counted on a meta-device build (free), else on
    `model` with SDPA's MATH backend (see `cvtlab.flops`)."""
    try:
        with torch.device('meta'):
            meta = create_at_size(name, img_size)
        return count_macs(meta, (3, *img_size)) / 1e9
    except Exception:  # some models cannot run on meta; count the real one instead
        if model is None:
            return None
        return count_macs(copy.deepcopy(model).float(), (3, *img_size)) / 1e9
