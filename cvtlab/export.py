"""ONNX export with dynamic batch, height and width, checked in onnxruntime at two sizes; optionally int8.

Uses the TorchScript-based exporter (`dynamo=False`): on our models it keeps height and width symbolic
(the windowed LG paths included), while the dynamo exporter currently fails on LG's window paths.
The models have no shape-dependent Python branches, so one graph serves every input size.
With `int8` the checked fp32 graph is then quantized statically by onnxruntime (`cvtlab.deploy.int8`), its
activation ranges calibrated on images of the data the model is for.
"""
import json
import os
import tempfile
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn as nn

from .checkpoint import atomic_write
from .errors import ConfigError, CvtlabError

TOLERANCE = 1e-4


def _check_sizes(input_size: Sequence[int]) -> Tuple[Tuple[int, int], Tuple[int, int]]:
    """The model's own size, and a larger non-square one that needs padding (224 -> 288 x 320)."""
    _, h, w = input_size
    return (h, w), (int(round(h * 9 / 7)), int(round(w * 10 / 7)))


def preprocessing(model: nn.Module) -> dict:
    """What a deployment needs besides the graph: input size, mean/std, resize and crop, labels."""
    from timm.data import resolve_data_config
    cfg = resolve_data_config({}, model=model)
    labels = model.pretrained_cfg.get('label_names')
    return dict(input_size=list(cfg['input_size']), mean=list(cfg['mean']), std=list(cfg['std']),
                interpolation=cfg['interpolation'], crop_pct=cfg['crop_pct'], crop_mode=cfg['crop_mode'],
                channel_order='RGB', pixel_scale='0..1 then (x - mean) / std', layout='NCHW',
                label_names=list(labels) if labels is not None else None,
                input='image', output='logits', dynamic_axes=dict(image=['batch', 'height', 'width'],
                                                                  logits=['batch']))


def _outputs(model: nn.Module, inputs: List[torch.Tensor]) -> List[np.ndarray]:
    with torch.no_grad():
        return [model(x).numpy() for x in inputs]


def _max_abs_diffs(names: List[str], got: List[np.ndarray], expected: List[np.ndarray]) -> Dict[str, float]:
    return {name: float(np.abs(a - b).max()) for name, a, b in zip(names, got, expected)}


def export_onnx(model: nn.Module, path, *, fuse: bool = True, opset: int = 17,
                check_sizes: Optional[Sequence[Tuple[int, int]]] = None, int8: bool = False,
                calibration: Optional[Iterable[np.ndarray]] = None) -> dict:
    """Write `path` (.onnx) and `<stem>.preprocess.json`; compare onnxruntime with PyTorch at two sizes.

    With `fuse` the graph is that of `cvtlab.fuse_for_inference(model)` (a copy: `model` is left as it is),
    and onnxruntime is checked against both the fused copy and `model`. Raises CvtlabError if any difference
    exceeds 1e-4. Returns paths, sizes and the max |difference| per size (`max_abs_diff`; with `fuse` also
    `max_abs_diff_unfused`).

    With `int8`, `path` holds the statically quantized graph (`cvtlab.deploy.int8.quantize_onnx_int8`) and
    `calibration` must give preprocessed image batches (`calibration_batches`); the checks above then apply
    to the fp32 graph it was made from, and the result adds how often the int8 graph's top-1 agrees with
    fp32's on the calibration images (`int8_top1_agreement`) and its largest logit difference there.
    """
    if int8 and calibration is None:
        raise ConfigError('int8 export needs calibration images (cvtlab export --int8 --calibration-data DATA)')
    try:
        import onnxruntime as ort
    except ImportError:
        raise ConfigError("ONNX export needs onnx and onnxruntime: pip install 'cvtlab[export]'") from None
    path = Path(path)
    if path.suffix != '.onnx':
        raise ConfigError(f'{path}: the output file must end in .onnx')
    path.parent.mkdir(parents=True, exist_ok=True)
    if int8:
        with tempfile.TemporaryDirectory(dir=path.parent) as folder:
            result = export_onnx(model, Path(folder) / 'fp32.onnx', fuse=fuse, opset=opset, check_sizes=check_sizes)
            return _quantize(result, path, list(calibration))
    model = model.eval()
    input_size = model.pretrained_cfg.get('input_size', (3, 224, 224))
    sizes = check_sizes or _check_sizes(input_size)
    names = [f'{batch}x{h}x{w}' for batch, (h, w) in zip((1, 3), sizes)]
    inputs = [torch.randn(batch, input_size[0], h, w, generator=torch.Generator().manual_seed(h * w))
              for batch, (h, w) in zip((1, 3), sizes)]
    unfused = None
    if fuse:
        from .deploy import fuse_for_inference
        unfused = _outputs(model, inputs)
        model = fuse_for_inference(model)
    # batch 2: a size-1 example dimension would be specialised to 1 in the graph
    example = torch.randn(2, input_size[0], *sizes[0])
    with torch.no_grad():
        torch.onnx.export(model, (example,), str(path), dynamo=False, opset_version=opset, input_names=['image'],
                          output_names=['logits'],
                          dynamic_axes=dict(image={0: 'batch', 2: 'height', 3: 'width'}, logits={0: 'batch'}))
    session = ort.InferenceSession(str(path), providers=['CPUExecutionProvider'])
    got = [session.run(None, {'image': x.numpy()})[0] for x in inputs]
    diffs = _max_abs_diffs(names, got, _outputs(model, inputs))
    diffs_unfused = _max_abs_diffs(names, got, unfused) if fuse else None
    pre_path = path.with_name(path.stem + '.preprocess.json')
    pre_path.write_text(json.dumps(preprocessing(model), indent=2) + '\n')
    for against, d in (('PyTorch', diffs), ('the unfused PyTorch model', diffs_unfused)):
        worst = max(d.values()) if d else 0.0
        if not worst <= TOLERANCE:
            raise CvtlabError(f'{path}: onnxruntime differs from {against} by {worst:.2e} (> {TOLERANCE}) at {d}')
    result = dict(onnx=str(path), preprocess=str(pre_path), fused=fuse, max_abs_diff=diffs,
                  size_mb=path.stat().st_size / 2 ** 20)
    if fuse:
        result['max_abs_diff_unfused'] = diffs_unfused
    return result


def _quantize(fp32: dict, path: Path, calibration: List[np.ndarray]) -> dict:
    """`fp32`'s export quantized to int8 at `path` (written atomically), with its preprocessing file, and
    compared with the fp32 graph on the calibration batches."""
    import onnxruntime as ort
    from .deploy.int8 import quantize_onnx_int8
    if not calibration:
        raise ConfigError('int8 export: the calibration data gave no images')
    partial = path.with_name(path.name + '.partial')
    try:
        report = quantize_onnx_int8(fp32['onnx'], partial, calibration)
        sessions = [ort.InferenceSession(str(p), providers=['CPUExecutionProvider']) for p in (fp32['onnx'], partial)]
        ref, got = ([s.run(None, {'image': x})[0] for x in calibration] for s in sessions)
        ref, got = np.concatenate(ref), np.concatenate(got)
        os.replace(partial, path)
    finally:
        if partial.exists():  # quantizing or checking failed: leave nothing half-made behind
            partial.unlink()
    pre = json.loads(Path(fp32['preprocess']).read_text())
    pre_path = path.with_name(path.stem + '.preprocess.json')
    text = json.dumps(dict(pre, dtype='int8'), indent=2) + '\n'
    atomic_write(pre_path, lambda tmp: Path(tmp).write_text(text))
    return dict(fp32, onnx=str(path), preprocess=str(pre_path), size_mb=path.stat().st_size / 2 ** 20,
                fp32_size_mb=fp32['size_mb'], int8=True, calibration_images=len(ref),
                int8_top1_agreement=float((ref.argmax(1) == got.argmax(1)).mean()),
                int8_max_abs_diff=float(np.abs(ref - got).max()), **{k: v for k, v in report.items() if k != 'int8'})


def calibration_batches(model: nn.Module, data: str, images: int = 256, batch_size: int = 32,
                        data_root: str = '~/.cache/cvtlab/data', seed: int = 0) -> List[np.ndarray]:
    """`images` images from the training split of `data` ('digits', 'cifar10', or a folder), chosen at random
    with `seed`, preprocessed as the model evaluates (its eval transform): int8 calibration input. The
    validation split is left alone, so accuracy measured on it afterwards stays held out."""
    from timm.data import create_transform
    from .data import build_datasets, resolve_data_config
    transform = create_transform(**resolve_data_config(model), is_training=False)
    train = build_datasets(data, transform, transform, data_root=data_root).train
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))[:images].tolist()
    batches = []
    for start in range(0, len(order), batch_size):
        batches.append(torch.stack([train[i][0] for i in order[start:start + batch_size]]).numpy())
    return batches
