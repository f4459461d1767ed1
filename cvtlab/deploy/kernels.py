"""Linear and conv layers on the fastest kernels of this machine.

`torch.nn.functional.linear` runs MKL's sgemm on x86 builds; on some CPUs oneDNN runs the same GEMM with
its weights pre-packed noticeably faster (BENCHMARKS.md, issue 16), and can apply the activation that
follows (SiLU, GELU) in the same pass. Which one wins is measured once per process on a GEMM of a
transformer's shape (`fastest_linear_kernel`), not assumed from the CPU's name.

`F.conv2d` already runs oneDNN on CPU, but reorders the weights into oneDNN's blocked layout on every call;
`PackedConv2d` keeps them reordered (a token embedding's 3x3 conv, 192 -> 384 channels: 13.1 against 9.7 ms
for 4 images on one thread).
"""
import functools
import statistics
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ['PackedConv2d', 'PackedLinear', 'fastest_linear_kernel', 'onednn_supports', 'pack_convs',
           'pack_linears', 'weight_key']

# activations oneDNN can apply after its GEMM: module type -> (its post-op name, algorithm, the same in torch)
_POST_OPS = {nn.SiLU: ('swish', '', F.silu), nn.GELU: ('gelu', 'none', F.gelu)}


@functools.lru_cache(maxsize=None)
def onednn_supports(dtype: torch.dtype) -> bool:
    """Whether oneDNN runs `dtype` GEMMs here (bf16 needs AVX-512 BW/VL/DQ or AVX-NE-CONVERT)."""
    if not torch.backends.mkldnn.is_available():
        return False
    return dtype == torch.float32 or (dtype == torch.bfloat16 and torch.ops.mkldnn._is_mkldnn_bf16_supported())


@functools.lru_cache(maxsize=None)
def fastest_linear_kernel(threads: int = 0, dtype: torch.dtype = torch.float32) -> str:
    """'onednn' or 'torch': which of oneDNN (packed weights) and `F.linear` runs a `dtype` 1576 x 384 -> 1536
    Linear (a CvT-13 MLP at batch 8) faster here on `threads` threads (0: the current count), median of a
    few calls each, taking turns."""
    if not onednn_supports(dtype):
        return 'torch'
    g = torch.Generator().manual_seed(0)
    x, w = torch.randn(1576, 384, generator=g).to(dtype), (0.02 * torch.randn(1536, 384, generator=g)).to(dtype)
    b = torch.zeros(1536, dtype=dtype)
    packed = torch.ops.mkldnn._reorder_linear_weight(w, x.shape[0])
    calls = {'torch': lambda: F.linear(x, w, b),
             'onednn': lambda: torch.ops.mkldnn._linear_pointwise(x, packed, b, 'none', [], '')}
    times = {k: [] for k in calls}
    before = torch.get_num_threads()
    torch.set_num_threads(threads or before)
    try:
        with torch.inference_mode():
            for _ in range(7):
                for k, fn in calls.items():
                    start = time.perf_counter()
                    fn()
                    times[k].append(time.perf_counter() - start)
    finally:
        torch.set_num_threads(before)
    return min(times, key=lambda k: statistics.median(times[k][1:]))


class _PackedWeight(nn.Module):
    """What `PackedLinear` and `PackedConv2d` share: when a call may take oneDNN's packed path, and oneDNN's copy
    of `self.weight` (an opaque tensor, never saved), made on first use and again whenever the weight changed
    (load_state_dict, in-place edits, dtype)."""

    _packed = (None, None)  # (the packed weight, the `weight_key` it was made from)

    def _takes_onednn(self, x: torch.Tensor) -> bool:
        """False when recording gradients, tracing (ONNX export), compiling (inductor packs weights itself), off
        the CPU, for another dtype than the weight's, under autocast, or where oneDNN lacks the dtype."""
        # compiling and tracing first: dynamo must not trace the checks after them
        if torch.compiler.is_compiling() or torch.jit.is_tracing():
            return False
        recording = torch.is_grad_enabled() and (x.requires_grad or self.weight.requires_grad)
        return not (recording or x.device.type != 'cpu' or x.dtype != self.weight.dtype
                    or torch.is_autocast_enabled('cpu') or not onednn_supports(x.dtype))

    def _packed_weight(self, pack) -> torch.Tensor:
        """`pack(weight)`, kept while the weight stays the same. One tuple, so that concurrent callers never see
        a packed weight with another version's key."""
        key = weight_key(self.weight)
        packed, packed_key = self._packed
        if packed_key != key:
            packed = pack(self.weight.detach())
            self._packed = (packed, key)
        return packed

    def __getstate__(self):  # deepcopy / pickle: oneDNN's opaque tensor cannot be copied; packed again on use
        return {**self.__dict__, '_packed': (None, None)}


class PackedLinear(_PackedWeight):
    """An `nn.Linear` (optionally followed by a SiLU / GELU) for CPU inference through oneDNN with pre-packed
    weights, in fp32 or bf16 (the weights' dtype; inputs of another dtype or under autocast take `F.linear`).
    The same `weight` / `bias` parameters (state_dict keys unchanged); the packed copy is made on the first
    call and never saved. Falls back to `F.linear` (+ activation) when recording gradients, tracing
    (ONNX export), compiling (inductor packs weights itself) or off the CPU."""

    def __init__(self, linear: nn.Linear, activation: nn.Module = None):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.weight, self.bias = linear.weight, linear.bias
        self.post_op, self.algorithm, self.act = ('none', '', None) if activation is None else \
            _POST_OPS[type(activation)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self._takes_onednn(x):
            y = F.linear(x, self.weight, self.bias)
            return y if self.act is None else self.act(y)
        packed = self._packed_weight(lambda w: torch.ops.mkldnn._reorder_linear_weight(w, 1024))
        rows = x.reshape(-1, x.shape[-1])  # B ... C_in -> (B ...) C_in
        y = torch.ops.mkldnn._linear_pointwise(rows, packed, self.bias, self.post_op, [], self.algorithm)
        return y.reshape(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f'in_features={self.in_features}, out_features={self.out_features}, post_op={self.post_op}'


def weight_key(weight: torch.Tensor) -> tuple:
    """What a copy derived from `weight` was made from: its version (bumped by every in-place edit), storage and
    dtype. A weight made under `torch.inference_mode` (a model fused there) has no version: in-place edits to
    it go unseen, as they do for every inference tensor."""
    return -1 if weight.is_inference() else weight._version, weight.data_ptr(), weight.dtype


def pack_linears(model: nn.Module) -> nn.Module:
    """Every `nn.Linear` of `model` as a `PackedLinear`, in place; an MLP's fc1 takes its SiLU / GELU along
    (the activation module becomes an Identity)."""
    from timm.layers import Mlp
    for mlp in [m for m in model.modules() if isinstance(m, Mlp)]:
        exact = getattr(mlp.act, 'approximate', 'none') == 'none'  # oneDNN's GELU post-op is the erf one
        if type(mlp.fc1) is nn.Linear and type(mlp.act) in _POST_OPS and exact:
            mlp.fc1, mlp.act = PackedLinear(mlp.fc1, mlp.act), nn.Identity()
    for parent in list(model.modules()):
        for name, child in parent.named_children():
            if type(child) is nn.Linear:
                setattr(parent, name, PackedLinear(child))
    return model


class PackedConv2d(_PackedWeight):
    """An `nn.Conv2d` (zero padding) for CPU inference through oneDNN with its weights kept in oneDNN's layout,
    in fp32 or bf16 (the weights' dtype). The same `weight` / `bias` parameters; the packed copy is made on the
    first call, for that call's input size (other sizes ran as fast at CvT's shapes), and never saved. Outputs
    come back channels-last. Falls back to `F.conv2d` in the same cases as `PackedLinear`, and for unbatched
    inputs."""

    def __init__(self, conv: nn.Conv2d):
        super().__init__()
        if conv.padding_mode != 'zeros' or isinstance(conv.padding, str):
            raise ValueError("PackedConv2d needs explicit zero padding (padding_mode='zeros', no 'same' / 'valid')")
        self.in_channels, self.out_channels, self.kernel_size = conv.in_channels, conv.out_channels, conv.kernel_size
        self.stride, self.padding, self.dilation, self.groups = conv.stride, conv.padding, conv.dilation, conv.groups
        self.weight, self.bias = conv.weight, conv.bias
        # oneDNN's op takes lists: made once, not on every call
        self._geometry = (list(self.padding), list(self.stride), list(self.dilation), self.groups)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or not self._takes_onednn(x):
            return F.conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups)
        packed = self._packed_weight(
            lambda w: torch.ops.mkldnn._reorder_convolution_weight(w, *self._geometry, list(x.shape)))
        return torch.ops.mkldnn._convolution_pointwise(x, packed, self.bias, *self._geometry, 'none', [], '')

    def extra_repr(self) -> str:
        return (f'{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, '
                f'padding={self.padding}, dilation={self.dilation}, groups={self.groups}, '
                f'bias={self.bias is not None}')


def pack_convs(model: nn.Module) -> nn.Module:
    """Every 2-d `nn.Conv2d` of `model` with zero padding as a `PackedConv2d`, in place."""
    for parent in list(model.modules()):
        for name, child in parent.named_children():
            if type(child) is nn.Conv2d and child.padding_mode == 'zeros' and not isinstance(child.padding, str):
                setattr(parent, name, PackedConv2d(child))
    return model
