"""What the machine can do: its CPU's relevant instruction sets, and the best dense GEMM rate per dtype
through every kernel library at hand (MKL through `torch.matmul`, oneDNN, onnxruntime's MLAS).

`torch.matmul` is one library's GEMM; on some CPUs another one (oneDNN, MLAS) runs the same GEMM at twice
its rate, so a model's "fraction of the limit" is taken against the best of them, measured in the same
run (each probe is one more step in the interleaved timing, see `subjects.measure_subjects`).
"""
from pathlib import Path
from typing import Callable, Dict, List, Tuple

import torch

from ..deploy.kernels import onednn_supports
from .measure import matmul_probe

# instruction sets that decide which dtypes run on native kernels
FLAGS = ('avx2', 'fma', 'avx512f', 'avx512_bf16', 'avx512_vnni', 'avx_vnni', 'amx_tile', 'amx_bf16', 'amx_int8')
BF16_FLAGS = ('avx512_bf16', 'amx_bf16')
INT8_FLAGS = ('avx512_vnni', 'avx_vnni', 'amx_int8')

Probe = Tuple[Callable[[], object], float]  # a step and its GFLOP


def cpu_info(cpuinfo: str = '/proc/cpuinfo') -> dict:
    """{'model': CPU model name, 'flags': the FLAGS it has, 'missing': those it lacks, 'bf16', 'int8': native?}"""
    model, flags = 'unknown CPU', set()
    try:
        for line in Path(cpuinfo).read_text().splitlines():
            key, _, value = line.partition(':')
            if key.strip() == 'model name' and model == 'unknown CPU':
                model = value.strip()
            elif key.strip() == 'flags' and not flags:
                flags = set(value.split())
    except OSError:  # not Linux: report what torch knows
        pass
    return dict(model=model, flags=[f for f in FLAGS if f in flags], missing=[f for f in FLAGS if f not in flags],
                bf16=any(f in flags for f in BF16_FLAGS), int8=any(f in flags for f in INT8_FLAGS))


def describe_cpu(info: dict) -> str:
    """One line: model, the flags it has and those it lacks."""
    missing = f" (no {', '.join(info['missing'])})" if info['missing'] else ''
    return f"{info['model']}: {' '.join(info['flags']) or 'none of ' + ', '.join(FLAGS)}{missing}"


def _operands(n: int, dtype: torch.dtype) -> Tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.randn(n, n, generator=g).to(dtype), torch.randn(n, n, generator=g).to(dtype)


def onednn_probe(n: int, calls: int, dtype: torch.dtype = torch.float32) -> Probe:
    """A GEMM through oneDNN with its weight pre-packed, as `cvtlab.deploy.kernels.PackedLinear` runs one."""
    a, b = _operands(n, dtype)
    packed = torch.ops.mkldnn._reorder_linear_weight(b.t().contiguous(), n)  # a Linear's weight: out x in

    def step():
        with torch.no_grad():
            for _ in range(calls):
                y = torch.ops.mkldnn._linear_pointwise(a, packed, None, 'none', [], '')
        return y
    return step, 2 * n ** 3 * calls / 1e9


def _onnxruntime_gemm(op: str, x, w, out_type: int, calls: int) -> Probe:
    """`op`(x, w) in a one-node onnxruntime graph, the weight `w` as an initializer (as in an exported model),
    on torch's thread count; a step runs it `calls` times. n x n operands: 2 n^3 operations per call."""
    import onnxruntime as ort
    from onnx import helper, numpy_helper
    from onnx.helper import np_dtype_to_tensor_dtype
    n = x.shape[0]
    graph = helper.make_graph(
        [helper.make_node(op, ['x', 'w'], ['y'])], 'gemm',
        [helper.make_tensor_value_info('x', np_dtype_to_tensor_dtype(x.dtype), list(x.shape))],
        [helper.make_tensor_value_info('y', out_type, [n, n])],
        initializer=[numpy_helper.from_array(w, 'w')])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid('', 17)])
    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()  # the same threads as torch's kernels
    # no spin-waiting after a run: onnxruntime's pool thread otherwise keeps a core busy for ~40 ms, and the
    # step timed next (taking turns) ran 4-7% slower for it (BENCHMARKS.md, issue 16). One op per run: no
    # wake-ups between ops to pay for
    options.add_session_config_entry('session.intra_op.allow_spinning', '0')
    session = ort.InferenceSession(model.SerializeToString(), options, providers=['CPUExecutionProvider'])
    feed = {'x': x}

    def step():
        for _ in range(calls):
            y = session.run(None, feed)[0]
        return y  # a numpy array
    return step, 2 * n ** 3 * calls / 1e9


def onnxruntime_probe(n: int, calls: int) -> Probe:
    """fp32 GEMM in onnxruntime (its MLAS kernels)."""
    from onnx import TensorProto
    a, b = _operands(n, torch.float32)
    return _onnxruntime_gemm('MatMul', a.numpy(), b.numpy(), TensorProto.FLOAT, calls)


def onnxruntime_int8_probe(n: int, calls: int) -> Probe:
    """int8 GEMM in onnxruntime: MatMulInteger of u8 activations and an s8 weight (what its quantized MatMuls
    run: VNNI dot products where the CPU has them), int32 out. Counted as 2 n^3 operations."""
    from onnx import TensorProto
    g = torch.Generator().manual_seed(0)
    a = torch.randint(0, 256, (n, n), generator=g, dtype=torch.uint8)
    b = torch.randint(-128, 128, (n, n), generator=g, dtype=torch.int8)
    return _onnxruntime_gemm('MatMulInteger', a.numpy(), b.numpy(), TensorProto.INT32, calls)


def int8_gemm_probes(n: int = 1536, calls: int = 4) -> Dict[str, Probe]:
    """The int8 GEMMs at hand: onnxruntime's (when installed), the kernel cvtlab's int8 export runs on."""
    try:
        return {'int8 onnxruntime': onnxruntime_int8_probe(n, calls)}
    except ImportError:
        return {}


def gemm_probes(dtype: torch.dtype, device: str = 'cpu', n: int = 1536, calls: int = 4) -> Dict[str, Probe]:
    """Every GEMM this machine can run in `dtype`, by library: {'fp32 torch.matmul (MKL)': (step, GFLOP), ...}.
    On CPU, fp32 and bf16 also through oneDNN, fp32 through onnxruntime (when installed); otherwise
    torch.matmul only."""
    name = {torch.float32: 'fp32', torch.bfloat16: 'bf16', torch.float16: 'fp16'}.get(dtype, str(dtype))
    blas = ' (MKL)' if device == 'cpu' and torch.backends.mkl.is_available() else ''
    probes = {f'{name} torch.matmul{blas}': matmul_probe(dtype, device, n, calls)}
    if device != 'cpu' or dtype not in (torch.float32, torch.bfloat16):
        return probes
    if onednn_supports(dtype):
        probes[f'{name} oneDNN'] = onednn_probe(n, calls, dtype)
    if dtype != torch.float32:
        return probes
    try:
        probes['fp32 onnxruntime'] = onnxruntime_probe(n, calls)
    except ImportError:  # the `export` extra is not installed
        pass
    return probes


def dtype_notes(dtype: str, info: dict) -> List[str]:
    """What a user should know before believing a bf16 / fp16 figure on this CPU."""
    if dtype == 'bf16' and not info['bf16']:
        return [f"this CPU has no {' or '.join(BF16_FLAGS)}: bf16 GEMMs are emulated and slower than fp32; "
                f"keep fp32 here"]
    if dtype == 'fp16':
        return ['fp16 on CPU runs through slow reference kernels on most CPUs; bf16 or fp32 is the choice there']
    return []
