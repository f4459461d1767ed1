"""ONNX export with dynamic batch, height and width, checked in onnxruntime at two sizes.

Uses the TorchScript-based exporter (`dynamo=False`): on our models it keeps height and width symbolic
(the windowed LG paths included), while the dynamo exporter currently fails on LG's window paths.
The models have no shape-dependent Python branches, so one graph serves every input size.
"""
import json
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn as nn

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
                check_sizes: Optional[Sequence[Tuple[int, int]]] = None) -> dict:
    """Write `path` (.onnx) and `<stem>.preprocess.json`; compare onnxruntime with PyTorch at two sizes.

    With `fuse` the graph is that of `cvtlab.fuse_for_inference(model)` (a copy: `model` is left as it is),
    and onnxruntime is checked against both the fused copy and `model`. Raises CvtlabError if any difference exceeds 1e-4. Returns paths, sizes and the
    max |difference| per size (`max_abs_diff`; with `fuse` also `max_abs_diff_unfused`).
    """
    try:
        import onnxruntime as ort
    except ImportError:
        raise ConfigError("ONNX export needs onnx and onnxruntime: pip install 'cvtlab[export]'") from None
    path = Path(path)
    if path.suffix != '.onnx':
        raise ConfigError(f'{path}: the output file must end in .onnx')
    path.parent.mkdir(parents=True, exist_ok=True)
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
