"""Fast inference as a transform of a finished model: `fuse_for_inference` (module swaps: BatchNorm folded,
cache-sized token blocks and sample groups on CPU) and `compile_for_inference` (that, compiled with inductor
freezing). Both return eval-only models equal to the original within 1e-5; training models are untouched."""
from .compiled import FrozenCompiled, compile_for_inference
from .transform import fuse_for_inference

__all__ = ['fuse_for_inference', 'compile_for_inference', 'FrozenCompiled']
