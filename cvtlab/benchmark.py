"""Throughput, latency, memory and FLOP measurements for any timm-registered model (`cvtlab benchmark`).

One function per measurement (`matmul_rate`, `time_interleaved`, `latency`, `peak_memory`, `gmacs`);
`benchmark_model` / `compare_hf` / `sweep_resolution` combine them and return plain dicts whose field
names follow timm's `benchmark.py` (`infer_samples_per_sec`, `train_step_time`, `param_count`, ...).

Timing rules, because the machines this runs on are small and shared:
- every model under comparison is timed in the same process, its repetitions interleaved with the
  others' (A B A B ...), and medians are reported, so ratios are fair even when absolute times drift;
- the device's matmul rate is measured in the same run, as one more step interleaved with the models'
  inference steps (so it sees the same contention; a probe taken once before the run drifted 97-161
  GFLOP/s between runs on a shared 2-core CPU), and "fraction of the matmul rate" needs no other number;
- CPU memory is the growth of the process RSS during one step (sampled every 0.5 ms, after handing
  freed heap back with `malloc_trim`); on CUDA it is `max_memory_allocated` above the step's start.
"""
import copy
import ctypes
import gc
import statistics
import sys
import threading
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, replace
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn

from .deploy import FrozenCompiled
from .errors import ConfigError
from .flops import count_macs
from .layers import set_compiled_blocks

DTYPES = {'fp32': torch.float32, 'bf16': torch.bfloat16, 'fp16': torch.float16}
SWEEP_MODELS = ('cvt_13', 'lg_tiny', 'vit_small_patch16_224', 'swin_tiny_patch4_window7_224')


@dataclass(frozen=True)
class BenchSettings:
    """What one benchmark run measures and how.

    `img_size` None means the model's own default input size. `fuse` applies `reparameterize_model`
    (BN folding, see `cvtlab.fuse_for_inference`) to the inference copy only.
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


# --- measurements ---------------------------------------------------------------------------------------
def _sync(device: torch.device):
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


PROBE = 'matmul probe'


def matmul_probe(dtype: torch.dtype = torch.float32, device: str = 'cpu', n: int = 1536,
                 calls: int = 4) -> Tuple[Callable[[], object], float]:
    """A step of `calls` dense n x n x n matmuls, and its GFLOP: timed like a model, its rate is the
    ceiling a model's GEMMs can reach on this machine, measured now rather than taken from a datasheet."""
    device = torch.device(device)
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)

    def step():
        for _ in range(calls):
            a @ b
    return step, 2 * n ** 3 * calls / 1e9


def matmul_rate(dtype: torch.dtype = torch.float32, device: str = 'cpu', repeats: int = 8) -> float:
    """The device's dense matmul rate in GFLOP/s, on its own (median of `repeats` probe steps)."""
    step, gflop = matmul_probe(dtype, device)
    times = time_interleaved({PROBE: step}, warmup=1, repeats=repeats, device=torch.device(device))[PROBE]
    return gflop / statistics.median(times)


def time_interleaved(steps: Dict[str, Callable[[], object]], warmup: int, repeats: int,
                     device: torch.device) -> Dict[str, List[float]]:
    """Seconds per call of each step, the steps taking turns (A B A B ...) so drift hits them alike."""
    for _ in range(warmup):
        for fn in steps.values():
            fn()
    times = {name: [] for name in steps}
    for _ in range(repeats):
        for name, fn in steps.items():
            _sync(device)
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


def _rss_bytes() -> int:
    with open('/proc/self/statm') as f:
        return int(f.read().split()[1]) * _PAGE


_PAGE = 4096
try:
    import os
    _PAGE = os.sysconf('SC_PAGE_SIZE')
    _LIBC = ctypes.CDLL('libc.so.6')
except (OSError, AttributeError, ValueError):
    _LIBC = None


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

    def sample():
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


def gmacs(name: str, img_size: Tuple[int, int], model: Optional[nn.Module] = None) -> Optional[float]:
    """Forward GMACs of one image, attention included: counted on a meta-device build (free), else on
    `model` with SDPA's MATH backend (see `cvtlab.flops`)."""
    try:
        with torch.device('meta'):
            meta = _create(name, img_size)
        return count_macs(meta, (3, *img_size)) / 1e9
    except Exception:  # some models cannot run on meta; count the real one instead
        if model is None:
            return None
        return count_macs(copy.deepcopy(model).float(), (3, *img_size)) / 1e9


# --- models -----------------------------------------------------------------------------------------------
def _create(name: str, img_size: Tuple[int, int]) -> nn.Module:
    """timm model at `img_size`: fixed-size models (ViT, Swin) are built for it, fully convolutional
    ones (CvT) take any size as they are."""
    import timm
    try:
        return timm.create_model(name, img_size=img_size)
    except TypeError:  # the model has no img_size argument: it runs at any size
        return timm.create_model(name)


def default_img_size(name: str) -> int:
    import timm
    return timm.models.get_pretrained_cfg(name).input_size[-1] if timm.models.get_pretrained_cfg(name) else 224


@dataclass
class _Subject:
    """One model under measurement: an inference copy and a training copy, and how to call them."""
    label: str
    infer: nn.Module
    train: Optional[nn.Module]
    call: Callable[[nn.Module, torch.Tensor], torch.Tensor] = lambda m, x: m(x)
    dtype: Optional[str] = None  # autocast dtype for this subject; None: the run's dtype


def _prepare(model: nn.Module, s: BenchSettings, training: bool) -> nn.Module:
    device = torch.device(s.device)
    model = model.to(device).train(training)
    if s.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if training and s.grad_checkpointing and hasattr(model, 'set_grad_checkpointing'):
        model.set_grad_checkpointing(True)
    if not training and s.fuse:
        from timm.utils.model import reparameterize_model
        model = reparameterize_model(model, inplace=True)
    if s.compile:
        # dynamic=False: the training crash, ecosystem.md Sec. 2. Inference copies also get inductor's
        # freezing (weights become constants: pre-packed MKL GEMMs, oneDNN convs with fused bias)
        if training:
            return torch.compile(model, dynamic=False)
        set_compiled_blocks(model)  # static shapes: cvtlab's CPU token blocks may unroll into the graph
        return FrozenCompiled(model, dynamic=False)
    return model


def _input(s: BenchSettings, batch_size: int, img_size: Tuple[int, int]) -> torch.Tensor:
    x = torch.randn(batch_size, 3, *img_size, device=s.device)
    return x.contiguous(memory_format=torch.channels_last) if s.channels_last else x


def _autocast(s: BenchSettings, subject: _Subject):
    dtype = subject.dtype or s.dtype
    if dtype == 'fp32':
        return nullcontext()
    return torch.autocast(torch.device(s.device).type, dtype=DTYPES[dtype])


def _infer_step(subject: _Subject, x: torch.Tensor, s: BenchSettings) -> Callable[[], object]:
    def step():
        with torch.inference_mode(), _autocast(s, subject):
            return subject.call(subject.infer, x)
    return step


def _train_step(subject: _Subject, x: torch.Tensor, s: BenchSettings) -> Callable[[], object]:
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


def _measure(subjects: List[_Subject], s: BenchSettings, img_size: Tuple[int, int],
             probe: bool = True) -> Tuple[Dict[str, dict], Optional[float]]:
    """Every measurement for every subject, timings interleaved across subjects; with `probe`, the
    matmul rate (GFLOP/s) from a probe step interleaved with the inference steps, else None."""
    device = torch.device(s.device)
    rows = {sub.label: dict(infer_batch_size=s.batch_size, infer_img_size=list(img_size)) for sub in subjects}
    x = _input(s, s.batch_size, img_size)
    steps = {sub.label: _infer_step(sub, x, s) for sub in subjects}
    timed = dict(steps)
    if probe:
        timed[PROBE], probe_gflop = matmul_probe(DTYPES[s.dtype], s.device)
    times = time_interleaved(timed, s.warmup, s.repeats, device)
    rate = probe_gflop / statistics.median(times.pop(PROBE)) if probe else None
    for label, t in times.items():
        rows[label].update(infer_step_time=1e3 * statistics.median(t),
                           infer_samples_per_sec=s.batch_size / statistics.median(t))
    if s.latency:
        one = _input(s, 1, img_size)
        ones = {sub.label: _infer_step(sub, one, s) for sub in subjects}
        for label, t in time_interleaved(ones, s.warmup, s.latency_repeats, device).items():
            rows[label]['infer_latency_ms'], rows[label]['infer_latency_p90_ms'] = latency(t)
    if s.memory:
        for label, step in steps.items():
            rows[label]['infer_peak_mem_mb'] = peak_memory(step, device) / 2 ** 20
    if s.train and all(sub.train is not None for sub in subjects):
        train_steps = {sub.label: _train_step(sub, x, s) for sub in subjects}
        for label, t in time_interleaved(train_steps, s.warmup, s.repeats, device).items():
            rows[label].update(train_batch_size=s.batch_size, train_img_size=list(img_size),
                               train_step_time=1e3 * statistics.median(t),
                               train_samples_per_sec=s.batch_size / statistics.median(t))
        if s.memory:
            for label, step in train_steps.items():
                rows[label]['train_peak_mem_mb'] = peak_memory(step, device) / 2 ** 20
    return rows, rate


def _finish(row: dict, macs: Optional[float], rate: float, params: int) -> dict:
    row['param_count'] = round(params / 1e6, 3)
    row['infer_gmacs'] = None if macs is None else round(macs, 3)
    if macs is not None:
        row['infer_gflops_per_sec'] = 2 * macs * row['infer_samples_per_sec']
        row['infer_matmul_fraction'] = row['infer_gflops_per_sec'] / rate
    row['matmul_gflops_per_sec'] = rate
    return row


def _check(name: str, s: BenchSettings):
    import timm
    if name not in timm.list_models():
        raise ConfigError(f'unknown model {name!r} (see `cvtlab models` or timm.list_models())')
    if s.dtype not in DTYPES:
        raise ConfigError(f"dtype must be one of {', '.join(DTYPES)}, not {s.dtype!r}")
    if s.device.startswith('cuda') and not torch.cuda.is_available():
        raise ConfigError('--device cuda: no CUDA device is available')
    if min(s.batch_size, s.repeats, s.latency_repeats) < 1 or s.warmup < 0:
        raise ConfigError('batch size and repeat counts must be >= 1, warm-up >= 0')


def benchmark_model(name: str, settings: BenchSettings = BenchSettings()) -> dict:
    """Measure one timm-registered model: throughput, latency, memory, params, GMACs, matmul fraction."""
    return benchmark_models([name], settings)[0]


def benchmark_models(names: Sequence[str], settings: BenchSettings = BenchSettings()) -> List[dict]:
    """Measure several models side by side (interleaved) at one size; one dict per model."""
    s = settings
    for name in names:
        _check(name, s)
    res = s.img_size or default_img_size(names[0])
    img_size = (res, res)
    subjects, extra = [], {}
    for name in names:
        model = _create(name, img_size)
        params = sum(p.numel() for p in model.parameters())
        macs = gmacs(name, img_size, model)
        train = _prepare(copy.deepcopy(model), s, training=True) if s.train else None
        subjects.append(_Subject(name, _prepare(model, s, training=False), train))
        extra[name] = (macs, params)
    rows, rate = _measure(subjects, s, img_size)
    return [_finish(dict(model=name, **_settings_fields(s), **rows[name]), extra[name][0], rate, extra[name][1])
            for name in names]


def _settings_fields(s: BenchSettings) -> dict:
    return dict(dtype=s.dtype, device=s.device, channels_last=s.channels_last, compiled=s.compile, fused=s.fuse,
                grad_checkpointing=s.grad_checkpointing)


# --- HF transformers comparison -----------------------------------------------------------------------------
def hf_twin(model: nn.Module) -> nn.Module:
    """HF transformers' CvtForImageClassification with `model`'s config, weights copied from HF into `model`.

    The HF model is built randomly and its weights loaded into ours through `cvtlab.convert.to_cvtlab`
    (same weights either way). HF keeps its exact GELU, so its logits differ from ours by ~0.03 (the
    official model uses QuickGELU); `hf_max_abs_diff` checks equality with QuickGELU swapped in.
    """
    try:
        import transformers
    except ImportError:
        raise ConfigError('--compare hf needs HF transformers: pip install transformers') from None
    from .convert import to_cvtlab
    from .models.cvt import CvT
    if not isinstance(model, CvT):
        raise ConfigError('--compare hf works for the CvT family (cvt_*) only')
    stages = model.stages
    if any(len(s.blocks) <= i for i, s in enumerate(stages)):
        raise ConfigError('HF transformers cannot build this CvT: its stage i needs more than i blocks '
                          '(it indexes drop-path rates by stage)')
    config = transformers.CvtConfig(
        embed_dim=[s.patch_embed.proj.out_channels for s in stages], depth=[len(s.blocks) for s in stages],
        num_heads=[s.blocks[0].attn.num_heads for s in stages], num_labels=max(model.num_classes, 1),
        cls_token=[s.cls_token is not None for s in stages],
        drop_path_rate=[0.0] * len(stages))  # HF indexes its rates by stage (breaks when depth <= stage index)
    hf = transformers.CvtForImageClassification(config).eval()
    model.load_state_dict(to_cvtlab(hf.state_dict()))
    return hf


def _hf_call(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return model(pixel_values=x).logits


def hf_max_abs_diff(model: nn.Module, hf: nn.Module, img_size: Tuple[int, int]) -> float:
    """Largest logit difference on a random batch of 2, HF's GELU temporarily swapped for QuickGELU."""
    from timm.layers import QuickGELU
    swapped = [(m, m.activation) for m in hf.modules() if isinstance(getattr(m, 'activation', None), nn.GELU)]
    x = torch.randn(2, 3, *img_size)
    try:
        for m, _ in swapped:
            m.activation = QuickGELU()
        with torch.no_grad():
            return (model.eval()(x) - _hf_call(hf.eval(), x)).abs().max().item()
    finally:
        for m, act in swapped:
            m.activation = act


def compare_hf(name: str, settings: BenchSettings = BenchSettings(), model_args: Optional[dict] = None,
               hf_dtype: Optional[str] = None, hf_eager: bool = False) -> List[dict]:
    """cvtlab's `name` and the same CvT in HF transformers, same weights, interleaved in one run.

    `model_args` overrides the variant's architecture (e.g. a tiny config in tests); `hf_dtype` runs HF
    in another dtype than ours (e.g. ours bf16 against HF fp32); `hf_eager` leaves HF uncompiled when
    `settings.compile` compiles ours (what an HF user runs today).
    Returns [ours, hf]; ours carries the ratios `*_vs_hf` (speed: ours / HF; memory: ours / HF).
    """
    s = settings
    _check(name, s)
    res = s.img_size or default_img_size(name)
    img_size = (res, res)
    import timm
    # as the HF twin: no stochastic depth
    model = timm.create_model(name, **{**(model_args or {}), 'drop_path_rate': 0.0}).eval()
    hf = hf_twin(model)
    diff = hf_max_abs_diff(model, hf, img_size)
    params = sum(p.numel() for p in model.parameters())
    macs = gmacs(name, img_size, model) if not model_args else count_macs(model, (3, *img_size)) / 1e9
    hf_label = f'hf:{name}'
    hf_settings = replace(s, fuse=False, grad_checkpointing=False, dtype=hf_dtype or s.dtype,  # HF has neither
                          compile=s.compile and not hf_eager)
    subjects = [
        _Subject(name, _prepare(copy.deepcopy(model), s, False),
                 _prepare(copy.deepcopy(model), s, True) if s.train else None),
        _Subject(hf_label, _prepare(copy.deepcopy(hf), hf_settings, False),
                 _prepare(copy.deepcopy(hf), hf_settings, True) if s.train else None, _hf_call,
                 hf_settings.dtype),
    ]
    del model, hf
    rows, rate = _measure(subjects, s, img_size)
    ours = _finish(dict(model=name, **_settings_fields(s), **rows[name]), macs, rate, params)
    hf_rate = rate if hf_settings.dtype == s.dtype else matmul_rate(DTYPES[hf_settings.dtype], s.device)
    theirs = _finish(dict(model=hf_label, **_settings_fields(hf_settings), **rows[hf_label]), macs, hf_rate, params)
    ours['hf_max_abs_diff'] = diff
    for key, ratio in [('infer_samples_per_sec', 'infer_vs_hf'), ('train_samples_per_sec', 'train_vs_hf'),
                       ('infer_latency_ms', 'latency_vs_hf'), ('infer_peak_mem_mb', 'infer_mem_vs_hf'),
                       ('train_peak_mem_mb', 'train_mem_vs_hf')]:
        if ours.get(key) is not None and theirs.get(key):
            ours[ratio] = ours[key] / theirs[key]
    return [ours, theirs]


# --- resolution sweep ------------------------------------------------------------------------------------------
def sweep_resolution(names: Sequence[str], resolutions: Sequence[int],
                     settings: BenchSettings = BenchSettings(batch_size=1, train=False, latency=False)) -> List[dict]:
    """Inference img/s and memory against resolution, models interleaved at each size.

    Adds `pixels_per_sec` (img/s x H x W) and `pixel_rate_vs_first` (that over the same at the first
    resolution: 1.0 means cost linear in pixels; a quadratic attention falls towards 0).
    """
    s = replace(settings, train=False, latency=False)
    for name in names:
        _check(name, s)
    rows, first = [], {}
    for res in resolutions:
        img_size = (res, res)
        subjects, failed = [], []
        for name in names:
            try:
                subjects.append(_Subject(name, _prepare(_create(name, img_size), s, training=False), None))
            except Exception as e:  # a model that cannot be built at this size is reported, not fatal
                failed.append(dict(model=name, infer_img_size=[res, res], error=f'{type(e).__name__}: {e}'[:200]))
        measured = _measure(subjects, s, img_size, probe=False)[0] if subjects else {}
        for name, row in measured.items():
            row = dict(model=name, **row)
            row['pixels_per_sec'] = row['infer_samples_per_sec'] * res * res
            first.setdefault(name, row['pixels_per_sec'])
            row['pixel_rate_vs_first'] = row['pixels_per_sec'] / first[name]
            rows.append(row)
        rows.extend(failed)
        del subjects
        gc.collect()
    return rows


def plot_sweep(rows: List[dict], path) -> str:
    """Three panels against resolution, one line per model: img/s, pixel rate relative to the first size
    (flat = cost linear in pixels, falling = worse than linear), and peak memory."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 3, figsize=(17, 4.8))
    for name in dict.fromkeys(r['model'] for r in rows):
        ok = [r for r in rows if r['model'] == name and 'error' not in r]
        res = [r['infer_img_size'][0] for r in ok]
        axes[0].plot(res, [r['infer_samples_per_sec'] for r in ok], 'o-', label=name)
        axes[1].plot(res, [r['pixel_rate_vs_first'] for r in ok], 'o-', label=name)
        axes[2].plot(res, [r.get('infer_peak_mem_mb', float('nan')) for r in ok], 'o-', label=name)
    first = min((r['infer_img_size'][0] for r in rows if 'error' not in r), default=0)
    axes[0].set(title='inference throughput', xlabel='resolution (px)', ylabel='img/s', yscale='log')
    axes[1].set(title=f'pixels/s relative to {first} px (1 = linear cost)', xlabel='resolution (px)',
                ylabel='(img/s x pixels) / same at first size')
    axes[1].axhline(1.0, color='grey', lw=0.8, ls='--')
    axes[2].set(title='inference peak memory', xlabel='resolution (px)', ylabel='MiB', yscale='log')
    for ax in axes:
        ax.set_xscale('log')
        ax.grid(alpha=0.3, which='both')
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return str(path)


# --- CLI ----------------------------------------------------------------------------------------------------------
def add_benchmark_parser(sub):
    p = sub.add_parser('benchmark', help='inference / training throughput, latency, memory, GMACs')
    p.add_argument('models', nargs='*', default=['cvt_13'], help='timm model names (default: cvt_13)')
    p.add_argument('-b', '--batch-size', type=int, help='batch size (default 8; 1 for --sweep-res)')
    p.add_argument('--img-size', type=int, help="square input size (default: the model's own)")
    p.add_argument('--dtype', default='fp32', choices=sorted(DTYPES), help='fp32, or bf16 / fp16 autocast')
    p.add_argument('--device', default='cpu', help='cpu or cuda')
    p.add_argument('--channels-last', action='store_true', help='channels_last model and input')
    p.add_argument('--compile', action='store_true',
                   help='torch.compile (dynamic=False) every copy; inference copies with freezing')
    p.add_argument('--no-fuse', action='store_true', help='keep BatchNorm unfolded in the inference copy')
    p.add_argument('--grad-checkpointing', action='store_true', help='activation checkpointing when training')
    p.add_argument('--no-train', action='store_true', help='skip the training measurements')
    p.add_argument('--no-latency', action='store_true', help='skip the batch-1 latency measurement')
    p.add_argument('--warmup', type=int, default=1, help='untimed calls before timing (default 1)')
    p.add_argument('--repeats', type=int, default=3, help='timed calls per model (default 3)')
    p.add_argument('--latency-repeats', type=int, default=10, help='timed batch-1 calls (default 10)')
    p.add_argument('--compare', choices=['hf'], help='also run the same CvT in HF transformers, same weights')
    p.add_argument('--hf-dtype', choices=sorted(DTYPES), help='with --compare hf: HF in this dtype (default: --dtype)')
    p.add_argument('--hf-eager', action='store_true', help='with --compare hf and --compile: leave HF uncompiled')
    p.add_argument('--sweep-res', help='comma-separated resolutions, e.g. 224,384,512,768,1024')
    p.add_argument('--plot', default='benchmark_sweep.png', help='PNG for --sweep-res (default %(default)s)')
    p.add_argument('--json', action='store_true', help='print the results as JSON')
    p.set_defaults(func=cmd_benchmark)
    return p


def _settings_from_args(args, sweep: bool) -> BenchSettings:
    return BenchSettings(
        batch_size=args.batch_size or (1 if sweep else 8), img_size=args.img_size, dtype=args.dtype,
        device=args.device, channels_last=args.channels_last, compile=args.compile, fuse=not args.no_fuse,
        grad_checkpointing=args.grad_checkpointing, train=not (args.no_train or sweep),
        latency=not (args.no_latency or sweep), warmup=args.warmup, repeats=args.repeats,
        latency_repeats=args.latency_repeats)


def cmd_benchmark(args) -> int:
    import json
    sweep = bool(args.sweep_res)
    s = _settings_from_args(args, sweep)
    if (args.hf_eager or args.hf_dtype) and args.compare != 'hf':
        raise ConfigError('--hf-eager and --hf-dtype only apply with --compare hf')
    if args.hf_eager and not args.compile:
        raise ConfigError('--hf-eager only applies with --compile (without it both run eager)')
    if sweep:
        try:
            resolutions = [int(r) for r in args.sweep_res.split(',')]
        except ValueError:
            raise ConfigError(f'--sweep-res takes comma-separated integers, not {args.sweep_res!r}') from None
        names = args.models if args.models != ['cvt_13'] else list(SWEEP_MODELS)
        rows = sweep_resolution(names, resolutions, s)
        plot = plot_sweep(rows, args.plot)
    elif args.compare == 'hf':
        if len(args.models) != 1:
            raise ConfigError('--compare hf takes exactly one CvT model')
        rows, plot = compare_hf(args.models[0], s, hf_dtype=args.hf_dtype, hf_eager=args.hf_eager), None
    else:
        rows, plot = benchmark_models(args.models, s), None
    if args.json:
        print(json.dumps(dict(settings=asdict(s), results=rows, plot=plot), indent=2))
    else:
        _print_table(rows, sweep)
    summary = sys.stderr if args.json else sys.stdout  # --json keeps stdout machine-readable
    if plot:
        print(f'* plot written to {plot}', file=summary)
    for r in rows:
        if 'error' not in r:
            print(f"* {r['model']}: {r['infer_samples_per_sec']:.2f} img/s inference "
                  f"(batch {r['infer_batch_size']}, {r['infer_img_size'][0]} px, {s.dtype})"
                  + (f", {r['train_samples_per_sec']:.2f} img/s training" if 'train_samples_per_sec' in r else '')
                  + (f", peak {r['infer_peak_mem_mb']:.0f} MiB" if 'infer_peak_mem_mb' in r else ''), file=summary)
    return 0


_COLUMNS = [  # (field, header, format)
    ('model', 'model', 's'), ('infer_img_size', 'px', 'px'), ('infer_batch_size', 'batch', 'd'),
    ('infer_samples_per_sec', 'infer img/s', '.2f'), ('infer_latency_ms', 'b1 ms', '.1f'),
    ('infer_latency_p90_ms', 'b1 p90', '.1f'), ('infer_peak_mem_mb', 'infer MiB', '.0f'),
    ('train_samples_per_sec', 'train img/s', '.2f'), ('train_peak_mem_mb', 'train MiB', '.0f'),
    ('param_count', 'params M', '.2f'), ('infer_gmacs', 'GMACs', '.2f'), ('infer_gflops_per_sec', 'GFLOP/s', '.1f'),
    ('infer_matmul_fraction', 'of mm', '.0%'), ('pixel_rate_vs_first', 'px/s vs first', '.2f'),
    ('infer_vs_hf', 'infer vs HF', '.2f'), ('train_vs_hf', 'train vs HF', '.2f'),
    ('train_mem_vs_hf', 'train mem vs HF', '.2f'), ('hf_max_abs_diff', 'max|Δ| HF', '.1e'), ('error', 'error', 's'),
]


def _print_table(rows: List[dict], sweep: bool):
    from rich.table import Table
    from .cli import console
    columns = [c for c in _COLUMNS if any(r.get(c[0]) is not None for r in rows)]
    rate = next((r['matmul_gflops_per_sec'] for r in rows if 'matmul_gflops_per_sec' in r), None)
    title = 'cvtlab benchmark' + ('' if rate is None else f' (matmul rate measured in this run: {rate:.0f} GFLOP/s)')
    table = Table(title=title)
    for _, header, _ in columns:
        table.add_column(header, justify='left' if header in ('model', 'error') else 'right')
    for r in rows:
        cells = []
        for key, _, fmt in columns:
            v = r.get(key)
            cells.append('-' if v is None else f'{v[0]}' if fmt == 'px' else format(v, fmt))
        table.add_row(*cells)
    console.print(table)
