"""Where inference runs: PyTorch (the model from `fuse_for_inference`) or onnxruntime (cvtlab's own ONNX export
of it), or whichever a short probe measures faster for this model, batch size and machine (`auto`)."""
import logging
import statistics
import tempfile
import time
from pathlib import Path
from typing import Tuple

import torch
import torch.nn as nn

from ..errors import ConfigError
from .wrapper import Wrapper

__all__ = ['BACKENDS', 'OnnxRuntimeModel', 'choose_backend']
BACKENDS = ('torch', 'onnxruntime', 'auto')
_logger = logging.getLogger('cvtlab')


class OnnxRuntimeModel(Wrapper):
    """A model's logits from onnxruntime running cvtlab's export of it (`cvtlab.export.export_onnx`, checked
    against PyTorch at two sizes), called like the model on B 3 H W fp32 tensors. Attributes not found here
    (`num_classes`, `pretrained_cfg`, ...) are looked up on the PyTorch model."""

    wrapped = 'torch_model'

    def __init__(self, model: nn.Module):
        super().__init__()
        try:
            import onnxruntime as ort
        except ImportError:
            raise ConfigError("the onnxruntime backend needs onnx and onnxruntime: pip install 'cvtlab[export]'") \
                from None
        from ..export import export_onnx
        self.torch_model = model
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / 'model.onnx'
            export_onnx(model, path, fuse=False)  # `model` is already what should run (fused or not)
            options = ort.SessionOptions()
            options.intra_op_num_threads = torch.get_num_threads()
            self.session = ort.InferenceSession(str(path), options, providers=['CPUExecutionProvider'])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self.session.run(None, {'image': x.float().contiguous().numpy()})[0])


def _median_time(fn, x: torch.Tensor, calls: int) -> float:
    times = []
    with torch.inference_mode():
        for _ in range(calls):
            start = time.perf_counter()
            fn(x)
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def choose_backend(model: nn.Module, backend: str, batch_size: int) -> Tuple[nn.Module, str]:
    """(what to call, a one-line account of the choice). `model` is the PyTorch inference model; 'auto' times
    both on a random batch of `batch_size` at the model's input size (three calls each after one warm-up,
    taking turns) and keeps the faster. onnxruntime runs fp32 on CPU only."""
    if backend not in BACKENDS:
        raise ConfigError(f"backend must be one of {', '.join(BACKENDS)}, not {backend!r}")
    if backend == 'torch':
        return model, 'torch'
    if getattr(model, 'dtype', torch.float32) != torch.float32:
        if backend == 'onnxruntime':
            raise ConfigError('the onnxruntime backend runs fp32: drop --dtype bf16, or use --backend torch')
        return model, 'torch (auto: onnxruntime runs fp32 only)'
    ort_model = OnnxRuntimeModel(model)
    if backend == 'onnxruntime':
        return ort_model, 'onnxruntime'
    from timm.data import resolve_data_config
    x = torch.randn(batch_size, *resolve_data_config({}, model=model)['input_size'])  # the size served
    for candidate in (model, ort_model):
        _median_time(candidate, x, 1)  # warm-up
    t_torch, t_ort = _median_time(model, x, 3), _median_time(ort_model, x, 3)
    for _ in range(2):  # taking turns: a second round of each
        t_torch = min(t_torch, _median_time(model, x, 3))
        t_ort = min(t_ort, _median_time(ort_model, x, 3))
    if t_ort < t_torch:
        return ort_model, f'onnxruntime (auto: {t_torch / t_ort:.2f}x torch at batch {batch_size})'
    return model, f'torch (auto: {t_ort / t_torch:.2f}x onnxruntime at batch {batch_size})'
