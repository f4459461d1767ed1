"""Where inference runs: PyTorch (the model from `fuse_for_inference`) or onnxruntime (cvtlab's own ONNX export
of it), or whichever a short probe measures faster for this model, batch size and machine (`auto`); and an
exported `.onnx` file (fp32 or int8) run as a model."""
import json
import logging
import statistics
import tempfile
import time
from pathlib import Path
from typing import Tuple

import torch
import torch.nn as nn

from ..errors import ConfigError
from . import parallel
from .wrapper import Wrapper

__all__ = ['BACKENDS', 'OnnxRuntimeModel', 'OnnxFileModel', 'SessionRunner', 'choose_backend']
BACKENDS = ('torch', 'onnxruntime', 'auto')
_logger = logging.getLogger('cvtlab')


def onnxruntime_session(path, threads: int = 0):
    """An onnxruntime CPU session on `path` (or the graph's bytes) with `threads` intra-op threads (default:
    torch's thread count)."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise ConfigError("the onnxruntime backend needs onnx and onnxruntime: pip install 'cvtlab[export]'") \
            from None
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or torch.get_num_threads()
    return ort.InferenceSession(path if isinstance(path, bytes) else str(path), options,
                                providers=['CPUExecutionProvider'])


class SessionRunner:
    """An exported graph in onnxruntime, called on B 3 H W fp32 tensors, returning fp32 logits.

    Like the torch path (`SampleGroups`), a batch that shares out evenly over torch's thread count is split
    by samples (`parallel.sample_parallel`), each share on a one-thread session; other batches run on
    `session`, with all the threads. With two or more threads both sessions are made here (each holds the
    weights), so the graph's file may go once this returns."""

    def __init__(self, path):
        graph = path if isinstance(path, bytes) else str(path)
        self.threads = torch.get_num_threads()
        self.session = onnxruntime_session(graph, self.threads)
        self._one_thread = onnxruntime_session(graph, 1) if self.threads > 1 else None

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self._one_thread is None or parallel.split_workers(x.shape[0], self.threads) == 1:
            return self._run(self.session, x)
        return parallel.sample_parallel(lambda part: self._run(self._one_thread, part), x, self.threads)

    @staticmethod
    def _run(session, x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(session.run(None, {'image': x.float().contiguous().numpy()})[0])


class OnnxRuntimeModel(Wrapper):
    """A model's logits from onnxruntime running cvtlab's export of it (`cvtlab.export.export_onnx`, checked
    against PyTorch at two sizes), called like the model on B 3 H W fp32 tensors (`SessionRunner`).
    Attributes not found here (`num_classes`, `pretrained_cfg`, ...) are looked up on the PyTorch model."""

    wrapped = 'torch_model'

    def __init__(self, model: nn.Module):
        super().__init__()
        from ..export import export_onnx
        self.torch_model = model
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / 'model.onnx'
            export_onnx(model, path, fuse=False)  # `model` is already what should run (fused or not)
            self.runner = SessionRunner(path.read_bytes())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.runner(x)


class OnnxFileModel(nn.Module):
    """A file written by `cvtlab export` (fp32 or `--int8`) in onnxruntime (`SessionRunner`), called like a
    timm model on B 3 H W fp32 tensors. Its `<stem>.preprocess.json` supplies what timm's data config reads
    (`pretrained_cfg`: input size, mean/std, interpolation, crop, label names); `num_classes` comes from the
    graph's output."""

    def __init__(self, path):
        super().__init__()
        path = Path(path)
        pre_path = path.with_name(path.stem + '.preprocess.json')
        if not path.is_file():
            raise ConfigError(f'{path}: no such ONNX file')
        if not pre_path.is_file():
            raise ConfigError(f'{path}: {pre_path.name} is missing beside it (cvtlab export writes both)')
        pre = json.loads(pre_path.read_text())
        self.runner = SessionRunner(path)
        self.num_classes = int(self.runner.session.get_outputs()[0].shape[-1])
        keys = ('input_size', 'mean', 'std', 'interpolation', 'crop_pct', 'crop_mode', 'label_names')
        self.pretrained_cfg = {k: (tuple(pre[k]) if isinstance(pre[k], list) else pre[k]) for k in keys if k in pre}
        self.onnx_dtype = pre.get('dtype', 'fp32')

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.runner(x)


# the pause before timing something on CPU after something else ran: onnxruntime's pool thread spins ~40 ms
# after a run (its default) and would take a core from whatever is timed next (BENCHMARKS.md, issue 16)
SETTLE_S = 0.1


def _median_time(fn, x: torch.Tensor, calls: int, settle: bool = True) -> float:
    if settle:
        time.sleep(SETTLE_S)
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
    taking turns, each block `SETTLE_S` after the one before: 0.6 s of pauses) and keeps the faster.
    onnxruntime runs fp32 on CPU only."""
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
        _median_time(candidate, x, 1, settle=False)  # warm-up
    t_torch, t_ort = _median_time(model, x, 3), _median_time(ort_model, x, 3)
    for _ in range(2):  # taking turns: a second round of each
        t_torch = min(t_torch, _median_time(model, x, 3))
        t_ort = min(t_ort, _median_time(ort_model, x, 3))
    if t_ort < t_torch:
        return ort_model, f'onnxruntime (auto: {t_torch / t_ort:.2f}x torch at batch {batch_size})'
    return model, f'torch (auto: {t_ort / t_torch:.2f}x onnxruntime at batch {batch_size})'
