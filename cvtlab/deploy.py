"""Inference-ready models: BatchNorm folded (`fuse_for_inference`), then compiled with inductor freezing
(`compile_for_inference`, `FrozenCompiled`). Training models are never touched: both work on copies unless
told `inplace`."""
import copy

import torch
import torch.nn as nn

from .layers import set_compiled_blocks

__all__ = ['fuse_for_inference', 'compile_for_inference', 'FrozenCompiled']


def fuse_for_inference(model: nn.Module, inplace: bool = False) -> nn.Module:
    """An eval-only copy of `model` (or `model` itself, `inplace`) with every `fuse()` applied:
    BatchNorm folded into the depth-wise convs, QuickGELU turned into one SiLU. Outputs equal the
    unfused eval model to ~1e-6; do not train the result (BN statistics are baked in).
    """
    from timm.utils.model import reparameterize_model
    model = model if inplace else copy.deepcopy(model)
    return reparameterize_model(model.eval(), inplace=True)


class FrozenCompiled(nn.Module):
    """`torch.compile(model)` whose graphs are compiled with inductor freezing when called without
    gradients: the weights become constants, so on CPU the Linears run as pre-packed MKL GEMMs and the
    convs as oneDNN convs with fused bias (CvT-13 at 224 px against the same compile unfrozen: batch 1
    1.05x, batch 32 0.98x; BENCHMARKS.md).

    Why a wrapper: `torch.compile(options={'freezing': True})` reaches inductor but not dynamo, which
    decides while tracing whether parameters are constants (torch 2.14: the weights stay graph inputs and
    nothing is frozen; the profile shows `aten::addmm`, not `mkl::_mkl_linear`). So the global flag is
    set around every call, covering the first trace and any recompile. For CPU inputs without gradients
    inductor's `cpp_wrapper` is set the same way: the graph's kernel calls then run from C++, not Python.
    Together with two model changes of the same commit (a363b46), CvT-13 at 224/batch 32 went from 76.3%
    to 80.1% of the matmul probe (medians of three alternating commands; BENCHMARKS.md); its first compile
    then takes about 2 minutes on two cores instead of 1.

    Frozen graphs are guarded on the identity of their weights, so another model of the same class never
    runs them. Change the weights in place and the graph keeps the old ones: compile again. Calls with
    gradients enabled compile an ordinary graph. The reverse can happen: an unfrozen compile of another
    instance of the same class, made earlier in the process, may be reused here (its guards pass), so
    compare frozen and unfrozen compiles in separate processes.

    Attributes not found here are looked up on the model (`num_classes`, `pretrained_cfg`, ...); the
    state_dict keys carry the `_orig_mod.` prefix that `torch.compile` gives them too.
    """

    def __init__(self, model: nn.Module, **compile_kwargs):
        super().__init__()
        self._orig_mod = model
        # a compiled bound method, not an nn.Module: the model's weights are registered once, above
        self._compiled_forward = torch.compile(model.forward, **compile_kwargs)

    def forward(self, *args, **kwargs):
        # on CPU also a C++ wrapper: the graph's ~2000 kernel calls at batch 32 then skip Python (CvT-13
        # frozen profile: 48 ms of 3.1 s was the Python wrapper's own time)
        on_cpu = all(a.device.type == 'cpu' for a in args if isinstance(a, torch.Tensor))
        cpp_wrapper = on_cpu and not torch.is_grad_enabled()  # inference graphs only, as freezing
        with torch._inductor.config.patch(freezing=True, cpp_wrapper=cpp_wrapper):
            return self._compiled_forward(*args, **kwargs)

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name == '_orig_mod':
                raise
            return getattr(self._orig_mod, name)


def compile_for_inference(model: nn.Module, inplace: bool = False, **compile_kwargs) -> nn.Module:
    """`fuse_for_inference(model)` compiled for fast CPU/GPU inference at fixed input sizes.

    Defaults: `fullgraph=True, dynamic=False` and, with inductor, freezing (`FrozenCompiled`);
    `compile_kwargs` override them (another `backend` gets a plain `torch.compile`). With static shapes the
    CPU token blocks of `rowwise_chunked` unroll into the graph (CvT-13 at 224/batch 32: 1.05x over
    compiling the model whole; BENCHMARKS.md). A new input size recompiles; pass `dynamic=True` (or None)
    for varying sizes (the blocks then run whole).
    """
    model = fuse_for_inference(model, inplace)
    kwargs = dict(fullgraph=True, dynamic=False)
    kwargs.update(compile_kwargs)
    # only a declared dynamic=False keeps sizes static (None lets dynamo make them symbolic on a recompile)
    set_compiled_blocks(model, static=kwargs['dynamic'] is False)
    if kwargs.get('backend', 'inductor') == 'inductor':
        return FrozenCompiled(model, **kwargs)
    return torch.compile(model, **kwargs)
