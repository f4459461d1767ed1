"""Parameter and MAC counts that include the attention matmuls.

`torch.utils.flop_counter.FlopCounterMode` counts nothing for SDPA's fused CPU kernel
(pytorch/pytorch#195460), so counting runs with the MATH backend, whose matmuls it sees. GMACs are
FLOPs / 2, as papers and timm report them.
"""
from typing import Sequence

import torch
import torch.nn as nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@torch.no_grad()
def count_macs(model: nn.Module, input_size: Sequence[int] = (3, 224, 224)) -> int:
    """Multiply-accumulates of one forward pass on one image of `input_size` (C, H, W).

    Runs wherever the model lives; build it under `torch.device('meta')` to count big models for free.
    """
    param = next(model.parameters())
    x = torch.zeros(1, *input_size, device=param.device, dtype=param.dtype)
    was_training = model.training
    model.eval()
    try:
        with sdpa_kernel([SDPBackend.MATH]), FlopCounterMode(display=False) as counter:
            model(x)
    finally:
        model.train(was_training)
    return counter.get_total_flops() // 2
