"""Freed memory kept for the next call: glibc's malloc tuned so that inference stops paying for fresh pages.

Why: PyTorch's CPU tensors come straight from malloc. glibc serves large blocks from the heap (or, above
its mmap threshold, from fresh mappings) and hands the top of the heap back to the kernel whenever more
than its trim threshold lies free there, so a forward pass that frees and reallocates tens of MiB of
activations gets new pages every call: each is a page fault plus zeroing 4 KiB. On LG-Tiny at 224 px that
was ~49,000 faults per batch of 8 (~190 MiB) and 6% of the time on two threads (BENCHMARKS.md, issue 16).
With the threshold raised, the freed heap stays with the process and the next call reuses it.

`retain_freed_memory()` sets glibc's mmap threshold to 32 MiB (the largest it adapts to by itself) and its
trim threshold to `TRIM_THRESHOLD`: the process keeps up to that much freed memory for reuse (its resident
size stays near the peak of a forward pass). It is process-wide and done once; `fuse_for_inference` calls it
for cvtlab's models on CPU unless the environment sets CVTLAB_RETAIN_MEMORY=0 (or false / no / off).
Elsewhere than glibc (macOS, Windows, musl) it does nothing.
"""
import ctypes
import functools
import logging
import os
import platform

__all__ = ['retain_freed_memory', 'MMAP_THRESHOLD', 'TRIM_THRESHOLD']

_logger = logging.getLogger('cvtlab')

# glibc's mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
MMAP_THRESHOLD = 32 << 20  # blocks above this are mapped and unmapped on their own: glibc's ceiling for it
TRIM_THRESHOLD = 1 << 30  # free memory at the heap's top is handed back only beyond this


@functools.lru_cache(maxsize=None)
def retain_freed_memory() -> bool:
    """Tune glibc's malloc to keep freed memory for reuse (module docstring). True if it was tuned (now or
    earlier in this process); False where the C library is not glibc or CVTLAB_RETAIN_MEMORY=0."""
    if os.environ.get('CVTLAB_RETAIN_MEMORY', '1').strip().lower() in ('0', 'false', 'no', 'off'):
        return False
    if platform.system() != 'Linux' or platform.libc_ver()[0] != 'glibc':
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    # setting either one also stops glibc adapting them on its own, so both are set
    done = mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1 and mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
    _logger.debug('glibc malloc: mmap threshold %d MiB, trim threshold %d MiB (%s)', MMAP_THRESHOLD >> 20,
                  TRIM_THRESHOLD >> 20, 'set' if done else 'refused')
    return done
