"""What a benchmark run measures (`BenchSettings`), the models under measurement (subjects: an inference
and a training copy each), and `benchmark_models`, which times them side by side into result rows."""
import copy
import statistics
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn

from ..deploy import compile_for_inference, fuse_for_inference
from ..deploy.backends import SETTLE_S, choose_backend
from ..errors import ConfigError
from .limits import Probe, gemm_probes
from .measure import create_at_size, default_img_size, gmacs, latency, peak_memory, time_interleaved

DTYPES = {'fp32': torch.float32, 'bf16': torch.bfloat16, 'fp16': torch.float16}


@dataclass(frozen=True)
class BenchSettings:
    """What one benchmark run measures and how.

    `img_size` None means the model's own default input size. `fuse` passes the inference copy through
    `cvtlab.fuse_for_inference` (BN folded, the CPU fast paths); `compile` compiles every copy, the
    inference copy through `cvtlab.compile_for_inference` (inductor freezing). Training copies are never fused.
    `backend` runs the inference copy as `predict --backend` would: 'torch', 'onnxruntime' (cvtlab's ONNX
    export of the fused model) or 'auto' (whichever a short probe at `batch_size` measures faster).
    """
    batch_size: int = 8
    img_size: Optional[int] = None
    dtype: str = 'fp32'
    device: str = 'cpu'
    channels_last: bool = False
    compile: bool = False
    fuse: bool = True
    grad_checkpointing: bool = False
    train: bool = True
    latency: bool = True
    memory: bool = True
    warmup: int = 1
    repeats: int = 3
    latency_repeats: int = 10
    backend: str = 'torch'


@dataclass
class Subject:
    """One model under measurement: an inference copy and a training copy, and how to call them."""
    label: str
    infer: nn.Module
    train: Optional[nn.Module]
    call: Callable[[nn.Module, torch.Tensor], torch.Tensor] = lambda m, x: m(x)
    dtype: Optional[str] = None  # autocast dtype for this subject; None: the run's dtype


def prepare(model: nn.Module, s: BenchSettings, training: bool) -> nn.Module:
    """`model` on the run's device, set up as the settings say; an inference copy may come back wrapped."""
    model = model.to(torch.device(s.device)).train(training)
    if s.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if training and s.grad_checkpointing and hasattr(model, 'set_grad_checkpointing'):
        model.set_grad_checkpointing(True)
    # dynamic=False everywhere: with dynamic shapes the training compile crashed
    if training:
        return torch.compile(model, dynamic=False) if s.compile else model
    if s.compile:
        return compile_for_inference(model, inplace=True, fuse=s.fuse, dynamic=False)
    if s.fuse:
        # bf16 through the transform (bf16 weights, LayerNorm in fp32) rather than autocast over fp32 weights
        bf16 = s.dtype == 'bf16' and s.device == 'cpu'
        model = fuse_for_inference(model, inplace=True, dtype=torch.bfloat16 if bf16 else torch.float32)
    model, model.backend = choose_backend(model, s.backend, s.batch_size)  # backend: what runs, and why
    return model


def _input(s: BenchSettings, batch_size: int, img_size: Tuple[int, int]) -> torch.Tensor:
    x = torch.randn(batch_size, 3, *img_size, device=s.device)
    return x.contiguous(memory_format=torch.channels_last) if s.channels_last else x


def _autocast(s: BenchSettings, subject: Subject):
    dtype = subject.dtype or s.dtype
    if dtype == 'fp32':
        return nullcontext()
    return torch.autocast(torch.device(s.device).type, dtype=DTYPES[dtype])


def infer_step(subject: Subject, x: torch.Tensor, s: BenchSettings) -> Callable[[], object]:
    """`subject`'s inference call on `x` as it is timed: in inference mode, under the run's autocast."""
    # a model the transform made bf16 casts its input itself; autocast would only add casts
    own_dtype = getattr(subject.infer, 'dtype', None) == torch.bfloat16

    def step():
        with torch.inference_mode(), (nullcontext() if own_dtype else _autocast(s, subject)):
            return subject.call(subject.infer, x)
    return step


def _train_step(subject: Subject, x: torch.Tensor, s: BenchSettings) -> Callable[[], object]:
    model = subject.train
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-6)
    target = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
    loss_fn = nn.CrossEntropyLoss()

    def step():
        with _autocast(s, subject):
            loss = loss_fn(subject.call(model, x).float(), target)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return step


def measure_subjects(subjects: List[Subject], s: BenchSettings, img_size: Tuple[int, int],
                     probe: bool = True, extra_probes: Optional[Dict[str, Probe]] = None
                     ) -> Tuple[Dict[str, dict], Dict[str, float]]:
    """Every measurement for every subject, timings interleaved across subjects; with `probe`, also the
    GEMM rate (GFLOP/s) of every kernel library at hand in the run's dtype (`limits.gemm_probes`) and of
    `extra_probes` (e.g. int8 GEMMs), each probe one more step interleaved with the inference steps;
    else an empty dict."""
    device = torch.device(s.device)
    rows = {sub.label: dict(infer_batch_size=s.batch_size, infer_img_size=list(img_size)) for sub in subjects}
    x = _input(s, s.batch_size, img_size)
    steps = {sub.label: infer_step(sub, x, s) for sub in subjects}
    probes = {**gemm_probes(DTYPES[s.dtype], s.device), **(extra_probes or {})} if probe else {}
    # on CPU every timed call starts on idle cores: no step's spinning threads in the next one's time
    settle = SETTLE_S if device.type == 'cpu' else 0.0
    times = time_interleaved({**steps, **{k: step for k, (step, _) in probes.items()}}, s.warmup, s.repeats, device,
                             settle)
    limits = {k: gflop / statistics.median(times.pop(k)) for k, (_, gflop) in probes.items()}
    for label, t in times.items():
        rows[label].update(infer_step_time=1e3 * statistics.median(t),
                           infer_samples_per_sec=s.batch_size / statistics.median(t))
    if s.latency:
        one = _input(s, 1, img_size)
        ones = {sub.label: infer_step(sub, one, s) for sub in subjects}
        for label, t in time_interleaved(ones, s.warmup, s.latency_repeats, device, settle).items():
            rows[label]['infer_latency_ms'], rows[label]['infer_latency_p90_ms'] = latency(t)
    if s.memory:
        for label, step in steps.items():
            rows[label]['infer_peak_mem_mb'] = peak_memory(step, device) / 2 ** 20
    trained = [sub for sub in subjects if sub.train is not None]  # onnxruntime, say, has no training step
    if s.train and trained:
        train_steps = {sub.label: _train_step(sub, x, s) for sub in trained}
        for label, t in time_interleaved(train_steps, s.warmup, s.repeats, device, settle).items():
            rows[label].update(train_batch_size=s.batch_size, train_img_size=list(img_size),
                               train_step_time=1e3 * statistics.median(t),
                               train_samples_per_sec=s.batch_size / statistics.median(t))
        if s.memory:
            for label, step in train_steps.items():
                rows[label]['train_peak_mem_mb'] = peak_memory(step, device) / 2 ** 20
    return rows, limits


def finish_row(row: dict, macs: Optional[float], limits: Dict[str, float], params: int) -> dict:
    """`row` with params (M), GMACs, the achieved GFLOP/s, and its fraction of `torch.matmul`'s rate (the
    first of `limits`) and of the best GEMM rate of any library (the machine's limit in this dtype); for a
    training step (counted as 3x the forward's FLOPs) its fraction of that limit too."""
    row['param_count'] = round(params / 1e6, 3)
    row['infer_gmacs'] = None if macs is None else round(macs, 3)
    rate = next(iter(limits.values()), None)
    best = max(limits, key=limits.get) if limits else None
    if macs is not None:
        row['infer_gflops_per_sec'] = 2 * macs * row['infer_samples_per_sec']
        if limits:
            row['infer_matmul_fraction'] = row['infer_gflops_per_sec'] / rate
            row['infer_limit_fraction'] = row['infer_gflops_per_sec'] / limits[best]
        if row.get('train_samples_per_sec'):  # forward + backward: the usual 3x the forward's FLOPs
            row['train_gflops_per_sec'] = 3 * 2 * macs * row['train_samples_per_sec']
            if limits:
                row['train_limit_fraction'] = row['train_gflops_per_sec'] / limits[best]
    row.update(matmul_gflops_per_sec=rate, gemm_limits=dict(limits), limit_kernel=best,
               limit_gflops_per_sec=limits[best] if best else None)
    return row


def check_settings(name: str, s: BenchSettings):
    import timm
    if name not in timm.list_models():
        raise ConfigError(f'unknown model {name!r} (see `cvtlab models` or timm.list_models())')
    if s.dtype not in DTYPES:
        raise ConfigError(f"dtype must be one of {', '.join(DTYPES)}, not {s.dtype!r}")
    if s.device.startswith('cuda') and not torch.cuda.is_available():
        raise ConfigError('--device cuda: no CUDA device is available')
    if s.backend != 'torch' and (s.device != 'cpu' or s.compile or s.dtype != 'fp32'):
        raise ConfigError('--backend onnxruntime / auto: CPU, fp32 and without --compile only')
    if min(s.batch_size, s.repeats, s.latency_repeats) < 1 or s.warmup < 0:
        raise ConfigError('batch size and repeat counts must be >= 1, warm-up >= 0')


def settings_fields(s: BenchSettings) -> dict:
    return dict(dtype=s.dtype, device=s.device, channels_last=s.channels_last, compiled=s.compile, fused=s.fuse,
                grad_checkpointing=s.grad_checkpointing, backend=s.backend)


def benchmark_model(name: str, settings: BenchSettings = BenchSettings()) -> dict:
    """Measure one timm-registered model: throughput, latency, memory, params, GMACs, matmul fraction."""
    return benchmark_models([name], settings)[0]


def benchmark_models(names: Sequence[str], settings: BenchSettings = BenchSettings()) -> List[dict]:
    """Measure several models side by side (interleaved) at one size; one dict per model."""
    s = settings
    for name in names:
        check_settings(name, s)
    res = s.img_size or default_img_size(names[0])
    img_size = (res, res)
    subjects, extra = [], {}
    for name in names:
        model = create_at_size(name, img_size)
        params = sum(p.numel() for p in model.parameters())
        macs = gmacs(name, img_size, model)
        train = prepare(copy.deepcopy(model), s, training=True) if s.train else None
        subjects.append(Subject(name, prepare(model, s, training=False), train))
        extra[name] = (macs, params)
    rows, limits = measure_subjects(subjects, s, img_size)
    results = [finish_row(dict(model=name, **settings_fields(s), **rows[name]), extra[name][0], limits,
                          extra[name][1]) for name in names]
    for row, subject in zip(results, subjects):
        row['backend'] = getattr(subject.infer, 'backend', s.backend)
        if not row['backend'].startswith('torch'):  # onnxruntime's arena keeps memory: RSS growth is not its need
            row.pop('infer_peak_mem_mb', None)
    return results
