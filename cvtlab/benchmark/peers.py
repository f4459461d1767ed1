"""Other ways to run the same model, timed beside cvtlab's inference path in one run: onnxruntime on
cvtlab's own ONNX export, and cvtlab's compiled model (`compile_for_inference`)."""
import copy
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import List, Sequence

import torch

from ..deploy import compile_for_inference
from ..errors import ConfigError
from .measure import create_at_size, default_img_size, gmacs
from .subjects import BenchSettings, Subject, check_settings, finish_row, measure_subjects, prepare, settings_fields

PEERS = ('onnxruntime', 'compile')


def onnxruntime_session(model: torch.nn.Module, folder: str):
    """cvtlab's export of `model` (`cvtlab.export.export_onnx`, fused, checked against PyTorch) in an
    onnxruntime session with torch's thread count."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise ConfigError("--compare onnxruntime needs onnx and onnxruntime: pip install 'cvtlab[export]'") from None
    from ..export import export_onnx
    path = Path(folder) / 'model.onnx'
    export_onnx(model, path)
    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    return ort.InferenceSession(str(path), options, providers=['CPUExecutionProvider'])


def _run_session(session, x: torch.Tensor) -> torch.Tensor:
    return torch.from_numpy(session.run(None, {'image': x.contiguous().numpy()})[0])


def compare_peers(name: str, peers: Sequence[str], settings: BenchSettings = BenchSettings()) -> List[dict]:
    """cvtlab's inference path for `name` and each of `peers` on the same weights and input, interleaved in
    one run (inference only: onnxruntime has no training step). Returns [ours, *peers]; ours carries
    `infer_vs_<peer>` (ours / theirs) and `<peer>_max_abs_diff` (logits, on the timed batch)."""
    s = settings
    check_settings(name, s)
    unknown = [p for p in peers if p not in PEERS]
    if unknown or not peers:
        raise ConfigError(f"--compare takes hf, or any of {', '.join(PEERS)}, not {', '.join(unknown) or 'nothing'}")
    if s.device != 'cpu' and 'onnxruntime' in peers:
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
            if peer == 'onnxruntime':
                subjects.append(Subject('onnxruntime', onnxruntime_session(model, folder), None, _run_session))
            else:
                subjects.append(Subject('compile', compile_for_inference(model), None))
        x = torch.randn(s.batch_size, 3, *img_size, device=s.device)
        with torch.inference_mode():
            outputs = {sub.label: sub.call(sub.infer, x).float() for sub in subjects}  # also compiles
        rows, limits = measure_subjects(subjects, s, img_size)
    results = [finish_row(dict(model=sub.label, **settings_fields(s), **rows[sub.label]), macs, limits, params)
               for sub in subjects]
    ours = results[0]
    for row in results[1:]:
        if row['model'] == 'onnxruntime':  # its arena keeps memory between calls: RSS growth is not its need
            row.pop('infer_peak_mem_mb', None)
    for peer, row in zip(peers, results[1:]):
        ours[f'infer_vs_{peer}'] = ours['infer_samples_per_sec'] / row['infer_samples_per_sec']
        ours[f'{peer}_max_abs_diff'] = (outputs[name] - outputs[peer]).abs().max().item()
    return results
