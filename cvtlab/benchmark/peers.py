"""Other ways to run the same model, timed beside cvtlab's inference path in one run (`--compare`): HF
transformers' CvT with the same weights (inference, and the training step), onnxruntime on cvtlab's own ONNX
export (fp32, and int8 as `cvtlab export --int8` writes it), and cvtlab's compiled model
(`compile_for_inference`). Any of them together: every step of every subject takes turns in one run."""
import copy
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import torch

from ..deploy import compile_for_inference
from ..errors import ConfigError
from ..flops import count_macs
from .hf import hf_logits, hf_max_abs_diff, hf_twin
from .limits import int8_gemm_probes
from .measure import create_at_size, default_img_size, gmacs, matmul_rate
from .subjects import (DTYPES, BenchSettings, Subject, check_settings, finish_row, infer_step, measure_subjects,
                       prepare, settings_fields)

PEERS = ('hf', 'onnxruntime', 'onnxruntime-int8', 'compile')


def onnxruntime_runner(model: torch.nn.Module, folder: str, img_size: Tuple[int, int], int8: bool = False):
    """cvtlab's export of `model` (`cvtlab.export.export_onnx`, fused, checked against PyTorch) in an
    onnxruntime `SessionRunner` (as `--backend onnxruntime` and exported files run: a batch split by samples
    across torch's thread count). With `int8`, the export's int8 form, calibrated on two
    batches of random images: the scales it picks change the accuracy, not the speed, which is all that
    is timed here (accuracy: BENCHMARKS.md, measured on a trained model)."""
    from ..deploy.backends import SessionRunner
    from ..export import export_onnx
    path = Path(folder) / ('model.int8.onnx' if int8 else 'model.onnx')
    g = torch.Generator().manual_seed(0)
    calibration = [torch.randn(2, 3, *img_size, generator=g).numpy() for _ in range(2)] if int8 else None
    export_onnx(model, path, int8=int8, calibration=calibration)
    return SessionRunner(path)


def _run_session(runner, x: torch.Tensor) -> torch.Tensor:
    return runner(x)


def compare_peers(name: str, peers: Sequence[str], settings: BenchSettings = BenchSettings(),
                  model_args: Optional[dict] = None, hf_dtype: Optional[str] = None,
                  hf_eager: bool = False) -> List[dict]:
    """cvtlab's inference path for `name` and each of `peers` (any of `PEERS`) on the same weights and input,
    interleaved in one run. Training steps are timed for cvtlab and HF, when 'hf' is among the peers (onnxruntime
    and the compiled peer have none).

    `model_args` overrides the variant's architecture (e.g. a tiny config in tests); `hf_dtype` runs HF in
    another dtype than ours (e.g. ours bf16 against HF fp32); `hf_eager` leaves HF uncompiled when
    `settings.compile` compiles ours (what an HF user runs today).
    Returns [ours, *peers] in the order asked; ours carries, per peer, `infer_vs_<peer>` (ours / theirs) and
    `<peer>_max_abs_diff` (logits), and against HF also `train_vs_hf`, `latency_vs_hf` and the memory ratios
    (ours / HF)."""
    s = settings
    check_settings(name, s)
    peers = list(dict.fromkeys(peers))  # each once, in the order asked
    unknown = [p for p in peers if p not in PEERS]
    if unknown or not peers:
        raise ConfigError(f"--compare takes any of {', '.join(PEERS)} (comma-separated), "
                          f"not {', '.join(unknown) or 'nothing'}")
    if (hf_dtype or hf_eager) and 'hf' not in peers:
        raise ConfigError('--hf-eager and --hf-dtype only apply with --compare hf')
    if s.device != 'cpu' and any(p.startswith('onnxruntime') for p in peers):
        raise ConfigError('--compare onnxruntime runs on CPU only')
    with_hf = 'hf' in peers
    # only HF has a training step to compare with; no batch-1 latency for a compiled peer (a second compile)
    s = replace(s, train=s.train and with_hf, latency=s.latency and 'compile' not in peers)
    res = s.img_size or default_img_size(name)
    img_size = (res, res)
    args = {**(model_args or {}), **({'drop_path_rate': 0.0} if with_hf else {})}  # as the HF twin: no drop path
    model = create_at_size(name, img_size, **args).eval()
    hf = hf_twin(model) if with_hf else None  # HF's weights copied into `model`
    hf_diff = hf_max_abs_diff(model, hf, img_size) if with_hf else None
    params = sum(p.numel() for p in model.parameters())
    macs = gmacs(name, img_size, model) if not model_args else count_macs(model, (3, *img_size)) / 1e9
    subjects = [Subject(name, prepare(copy.deepcopy(model), s, False),
                        prepare(copy.deepcopy(model), s, True) if s.train else None)]
    hf_label, hf_settings = f'hf:{name}', None
    with tempfile.TemporaryDirectory() as folder:
        for peer in peers:
            if peer == 'hf':  # HF has no fusion, no checkpointing, no other backend
                hf_settings = replace(s, fuse=False, grad_checkpointing=False, backend='torch',
                                      dtype=hf_dtype or s.dtype, compile=s.compile and not hf_eager)
                subjects.append(Subject(hf_label, prepare(copy.deepcopy(hf), hf_settings, False),
                                        prepare(copy.deepcopy(hf), hf_settings, True) if s.train else None,
                                        hf_logits, hf_settings.dtype))
            elif peer.startswith('onnxruntime'):
                runner = onnxruntime_runner(model, folder, img_size, int8=peer == 'onnxruntime-int8')
                subjects.append(Subject(peer, runner, None, _run_session))
            else:
                subjects.append(Subject('compile', compile_for_inference(copy.deepcopy(model).to(s.device)), None))
        del model, hf  # every subject holds its own copy
        x = torch.randn(s.batch_size, 3, *img_size, device=s.device)
        # the logits the other peers are compared on (HF apart: `hf_diff`), each computed as its timed step computes
        # them (a compiled subject compiles here, in the autocast state it is timed in)
        compared = [sub for sub in subjects if sub.label != hf_label]
        outputs = {sub.label: infer_step(sub, x, s)().float() for sub in compared} if len(compared) > 1 else {}
        int8 = int8_gemm_probes() if 'onnxruntime-int8' in peers else {}
        rows, limits = measure_subjects(subjects, s, img_size, extra_probes=int8)
    # each row against the limit of the dtype it computes in: the int8 peer against int8 GEMMs, HF in another
    # dtype than ours against its own torch.matmul rate
    int8_limits = {k: v for k, v in limits.items() if k in int8}
    float_limits = {k: v for k, v in limits.items() if k not in int8}
    if hf_settings is not None and hf_settings.dtype != s.dtype:
        hf_limits = {f'{hf_settings.dtype} torch.matmul': matmul_rate(DTYPES[hf_settings.dtype], s.device)}
    else:
        hf_limits = float_limits
    labels = {name: (s, float_limits), hf_label: (hf_settings, hf_limits), 'onnxruntime': (s, float_limits),
              'onnxruntime-int8': (s, int8_limits), 'compile': (s, float_limits)}
    results = [finish_row(dict(model=sub.label, **settings_fields(labels[sub.label][0]), **rows[sub.label]), macs,
                          labels[sub.label][1], params) for sub in subjects]
    ours = results[0]
    ours['backend'] = getattr(subjects[0].infer, 'backend', s.backend)
    if not ours['backend'].startswith('torch'):  # onnxruntime's arena keeps memory: RSS growth is not its need
        ours.pop('infer_peak_mem_mb', None)
    for peer, row in zip(peers, results[1:]):
        row['backend'] = peer if peer.startswith('onnxruntime') else 'torch'
        if peer == 'onnxruntime-int8':
            row['dtype'] = 'int8'
        if peer.startswith('onnxruntime'):  # its arena keeps memory between calls: RSS growth is not its need
            row.pop('infer_peak_mem_mb', None)
        ours[f'infer_vs_{peer}'] = ours['infer_samples_per_sec'] / row['infer_samples_per_sec']
        if peer == 'hf':  # HF keeps its exact GELU: compared with QuickGELU swapped in (`hf_max_abs_diff`)
            ours['hf_max_abs_diff'] = hf_diff
            for key, ratio in [('train_samples_per_sec', 'train_vs_hf'), ('infer_latency_ms', 'latency_vs_hf'),
                               ('infer_peak_mem_mb', 'infer_mem_vs_hf'), ('train_peak_mem_mb', 'train_mem_vs_hf')]:
                if ours.get(key) is not None and row.get(key):
                    ours[ratio] = ours[key] / row[key]
        else:
            ours[f'{peer}_max_abs_diff'] = (outputs[name] - outputs[row['model']]).abs().max().item()
    return results


def compare_hf(name: str, settings: BenchSettings = BenchSettings(), model_args: Optional[dict] = None,
               hf_dtype: Optional[str] = None, hf_eager: bool = False) -> List[dict]:
    """cvtlab's `name` and the same CvT in HF transformers, same weights, interleaved in one run: inference, and
    the training step unless `settings.train` is off. `compare_peers(name, ['hf'], ...)`; returns [ours, hf]."""
    return compare_peers(name, ['hf'], settings, model_args, hf_dtype, hf_eager)
