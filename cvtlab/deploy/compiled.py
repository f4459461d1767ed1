"""`compile_for_inference`: `fuse_for_inference`, then torch.compile with inductor freezing (`FrozenCompiled`)."""
import copy

import torch
import torch.nn as nn

from .transform import InferenceBlock, fuse_for_inference
from .wrapper import Wrapper

__all__ = ['compile_for_inference', 'FrozenCompiled']


class FrozenCompiled(Wrapper):
    """`torch.compile(model)` whose graphs are compiled with inductor freezing when called without
    gradients: the weights become constants, so on CPU the Linears run as pre-packed MKL GEMMs and the
    convs as oneDNN convs with fused bias.

    Why a wrapper: `torch.compile(options={'freezing': True})` reaches inductor but not dynamo, which
    decides while tracing whether parameters are constants; through that option alone the weights stay
    graph inputs and nothing is frozen. So the global flag is set around every call, covering the first
    trace and any recompile. For CPU inputs without gradients inductor's `cpp_wrapper` is set the same way:
    the graph's thousands of kernel calls then run from C++, not Python.

    Frozen graphs are guarded on the identity of their weights, so another model of the same class never
    runs them. Change the weights in place and the graph keeps the old ones: compile again. Calls with
    gradients enabled compile an ordinary graph. The reverse can happen: an unfrozen compile of another
    instance of the same class, made earlier in the process, may be reused here (its guards pass), so
    compare frozen and unfrozen compiles in separate processes.

    Attributes not found here are looked up on the model (`num_classes`, `pretrained_cfg`, ...); the
    state_dict keys carry the `_orig_mod.` prefix that `torch.compile` gives them too.
    """

    wrapped = '_orig_mod'

    def __init__(self, model: nn.Module, **compile_kwargs):
        super().__init__()
        self._orig_mod = model
        # a compiled bound method, not an nn.Module: the model's weights are registered once, above
        self._compiled_forward = torch.compile(model.forward, **compile_kwargs)

    def forward(self, *args, **kwargs):
        on_cpu = all(a.device.type == 'cpu' for a in args if isinstance(a, torch.Tensor))
        cpp_wrapper = on_cpu and not torch.is_grad_enabled()  # inference graphs only, as freezing
        with torch._inductor.config.patch(freezing=True, cpp_wrapper=cpp_wrapper):
            return self._compiled_forward(*args, **kwargs)


def compile_for_inference(model: nn.Module, inplace: bool = False, fuse: bool = True, **compile_kwargs) -> nn.Module:
    """`fuse_for_inference(model)` (unless `fuse=False`: an eval copy as it is) compiled for fast inference
    at fixed input sizes.

    Defaults: `fullgraph=True, dynamic=False` and, with inductor, freezing (`FrozenCompiled`);
    `compile_kwargs` override them (another `backend` gets a plain `torch.compile`). With static shapes the
    CPU token blocks of the fused blocks unroll into the graph. A new input size recompiles; pass
    `dynamic=True` (or None) for varying sizes (the blocks then run whole).
    """
    if fuse:
        model = fuse_for_inference(model, inplace)
    else:
        model = (model if inplace else copy.deepcopy(model)).eval()
    kwargs = dict(fullgraph=True, dynamic=False)
    kwargs.update(compile_kwargs)
    # only a declared dynamic=False keeps sizes static (None lets dynamo make them symbolic on a recompile)
    for m in model.modules():
        if isinstance(m, InferenceBlock):
            m.compiled_blocks = kwargs['dynamic'] is False
    if kwargs.get('backend', 'inductor') == 'inductor':
        return FrozenCompiled(model, **kwargs)
    return torch.compile(model, **kwargs)
