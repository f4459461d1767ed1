"""Other ways to run the same model, timed beside cvtlab's inference path in one run: onnxruntime on
cvtlab's own ONNX export (fp32, and int8 as `cvtlab export --int8` writes it), and cvtlab's compiled model
(`compile_for_inference`)."""
import copy
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import List, Sequence, Tuple

import torch

from ..deploy import compile_for_inference
from ..errors import ConfigError
from .limits import int8_gemm_probes
from .measure import create_at_size, default_img_size, gmacs
from .subjects import BenchSettings, Subject, check_settings, finish_row, measure_subjects, prepare, settings_fields

PEERS = ('onnxruntime', 'onnxruntime-int8', 'compile')


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


def compare_peers(name: str, peers: Sequence[str], settings: BenchSettings = BenchSettings()) -> List[dict]:
    """cvtlab's inference path for `name` and each of `peers` on the same weights and input, interleaved in
    one run (inference only: onnxruntime has no training step). Returns [ours, *peers]; ours carries
    `infer_vs_<peer>` (ours / theirs) and `<peer>_max_abs_diff` (logits, on the timed batch)."""
    s = settings
    check_settings(name, s)
    unknown = [p for p in peers if p not in PEERS]
    if unknown or not peers:
        raise ConfigError(f"--compare takes hf, or any of {', '.join(PEERS)}, not {', '.join(unknown) or 'nothing'}")
    if s.device != 'cpu' and any(p.startswith('onnxruntime') for p in peers):
        raise ConfigError('--compare onnxruntime runs on CPU only')
    # no training step in onnxruntime; no batch-1 latency for a compiled peer (a second, batch-1 compile)
    s = replace(s, train=False, latency=s.latency and 'compile' not in peers)
    res = s.img_size or default_img_size(name)
    img_size = (res, res)
    model = create_at_size(name, img_size).eval()
    params, macs = sum(p.numel() for p in model.parameters()), gmacs(name, img_size, model)
    subjects = [Subject(name, prepare(copy.deepcopy(model), s, training=False), None)]
    with tempfile.TemporaryDirectory() as folder:
        for peer in peers:
            if peer.startswith('onnxruntime'):
                runner = onnxruntime_runner(model, folder, img_size, int8=peer == 'onnxruntime-int8')
                subjects.append(Subject(peer, runner, None, _run_session))
            else:
                subjects.append(Subject('compile', compile_for_inference(model), None))
        x = torch.randn(s.batch_size, 3, *img_size, device=s.device)
        with torch.inference_mode():
            outputs = {sub.label: sub.call(sub.infer, x).float() for sub in subjects}  # also compiles
        int8 = int8_gemm_probes() if 'onnxruntime-int8' in peers else {}
        rows, limits = measure_subjects(subjects, s, img_size, extra_probes=int8)
    # each row against the limit of the dtype it computes in: the int8 peer against int8 GEMMs
    float_limits = {k: v for k, v in limits.items() if k not in int8}
    int8_limits = {k: v for k, v in limits.items() if k in int8}
    results = [finish_row(dict(model=sub.label, **settings_fields(s), **rows[sub.label]), macs,
                          int8_limits if sub.label == 'onnxruntime-int8' else float_limits, params)
               for sub in subjects]
    ours = results[0]
    ours['backend'] = getattr(subjects[0].infer, 'backend', s.backend)
    for row in results[1:]:
        row['backend'] = row['model'] if row['model'].startswith('onnxruntime') else 'torch'
        if row['model'] == 'onnxruntime-int8':
            row['dtype'] = 'int8'
        if row['model'].startswith('onnxruntime'):  # its arena keeps memory between calls: RSS growth is not its need
            row.pop('infer_peak_mem_mb', None)
    for peer, row in zip(peers, results[1:]):
        ours[f'infer_vs_{peer}'] = ours['infer_samples_per_sec'] / row['infer_samples_per_sec']
        ours[f'{peer}_max_abs_diff'] = (outputs[name] - outputs[peer]).abs().max().item()
    return results
