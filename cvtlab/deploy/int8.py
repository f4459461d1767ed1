"""int8 inference: onnxruntime static quantization of cvtlab's own ONNX export.

Why this route: on CPUs with VNNI (AVX-512 VNNI, AVX-VNNI), onnxruntime's MLAS runs u8 x s8 GEMMs and
convolutions at several times its fp32 rate, and static (calibrated) quantization keeps the activations in
int8 between a QuantizeLinear and the next op, where dynamic quantization re-measures every activation at
run time and lost to fp32 here (0.66x). Measured on CvT-13 at 224 (BENCHMARKS.md): static QDQ of every
MatMul, Gemm and Conv is about 2x onnxruntime fp32; dynamic quantization about 1x.

What is quantized: the weights per output channel (symmetric s8), the activations per tensor (asymmetric
u8, ranges from calibration images). Attention's q @ k^T and softmax(..) @ v stay in fp32 unless asked
(`attention=True`): their inputs have no fixed range across images, and quantizing them costs accuracy for
little speed (they are a small share of the MACs). LayerNorm, softmax and GELU/SiLU run in fp32 between
dequantize and quantize nodes.
"""
import contextlib
import io
import logging
import tempfile
from pathlib import Path
from typing import Iterable, Iterator, List, Optional

import numpy as np

from ..errors import ConfigError

__all__ = ['quantize_onnx_int8', 'int8_supported', 'attention_matmuls']
_logger = logging.getLogger('cvtlab')


def int8_supported() -> Optional[str]:
    """None when the CPU has VNNI (fast u8 x s8 dot products), else why int8 is unlikely to pay off."""
    from ..benchmark.limits import cpu_info
    if cpu_info()['int8']:
        return None
    return ('this CPU has no VNNI (avx512_vnni / avx_vnni): int8 GEMMs run without dot-product instructions '
            'and are rarely faster than fp32')


def attention_matmuls(model) -> List[str]:
    """Names of the MatMul nodes whose two inputs are both computed (no initializer): attention's q @ k^T and
    attn @ v, as opposed to Linear layers, whose second input is a weight."""
    weights = {init.name for init in model.graph.initializer}
    constants = {out for node in model.graph.node if node.op_type == 'Constant' for out in node.output}
    return [node.name for node in model.graph.node if node.op_type == 'MatMul'
            and not any(i in weights or i in constants for i in node.input)]


class _Batches:
    """onnxruntime's CalibrationDataReader protocol over an iterable of B x 3 x H x W float32 arrays."""

    def __init__(self, batches: Iterable[np.ndarray]):
        self._it: Iterator[np.ndarray] = iter(batches)

    def get_next(self):
        x = next(self._it, None)
        return None if x is None else {'image': np.ascontiguousarray(x, dtype=np.float32)}


def quantize_onnx_int8(fp32_path, out_path, calibration: Iterable[np.ndarray], *, attention: bool = False,
                       method: str = 'percentile') -> dict:
    """Write `out_path`: the fp32 ONNX at `fp32_path` with int8 weights and activations (QDQ format).

    `calibration`: batches of preprocessed images (B x 3 x H x W float32, as the model takes them) whose
    activation ranges fix the activation scales; a few hundred images of the data the model will see.
    `method`: 'percentile' (the default: each activation's range clipped to its 0.001% .. 99.999% points, so
    a few outliers do not coarsen its scale; on the digits model it lost 1 of 360 validation images against
    2 for 'minmax') or 'minmax'. Returns what was quantized.
    """
    try:
        import onnx
        from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
        from onnxruntime.quantization.shape_inference import quant_pre_process
    except ImportError:
        raise ConfigError("int8 export needs onnx and onnxruntime: pip install 'cvtlab[export]'") from None
    methods = dict(minmax=CalibrationMethod.MinMax, percentile=CalibrationMethod.Percentile)
    if method not in methods:
        raise ConfigError(f"calibration method must be one of {', '.join(methods)}, not {method!r}")
    with tempfile.TemporaryDirectory() as folder:
        # pre-processing: constant folding and shape inference, so that the quantizer sees whole MatMuls
        # (symbolic shape inference cannot follow our dynamic height/width reshapes: ONNX's own is used)
        pre = Path(folder) / 'pre.onnx'
        quant_pre_process(str(fp32_path), str(pre), skip_symbolic_shape=True)
        graph = onnx.load(str(pre))
        excluded = [] if attention else attention_matmuls(graph)
        with contextlib.redirect_stdout(io.StringIO()):  # the histogram calibrator prints its progress
            quantize_static(str(pre), str(out_path), _Batches(calibration), quant_format=QuantFormat.QDQ,
                            op_types_to_quantize=['MatMul', 'Gemm', 'Conv'], nodes_to_exclude=excluded,
                            per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                            calibrate_method=methods[method],
                            extra_options=dict(CalibTensorRangeSymmetric=False, WeightSymmetric=True))
    quantized = onnx.load(str(out_path))
    count = sum(node.op_type == 'QuantizeLinear' for node in quantized.graph.node)
    return dict(int8=str(out_path), quantize_nodes=count, attention_in_int8=attention,
                attention_matmuls_in_fp32=len(excluded), calibration_method=method)
