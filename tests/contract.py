"""Helpers several test files use (the timm model contract itself is checked in test_contract.py)."""
import torch


def random_bn(model):
    """Non-trivial BN statistics and affine parameters, so that folding them is actually tested."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, t in model.named_buffers():
            if name.endswith('running_var'):
                t.copy_(torch.rand(t.shape, generator=g) + 0.5)
            elif name.endswith('running_mean'):
                t.copy_(0.1 * torch.randn(t.shape, generator=g))
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.copy_(1 + 0.1 * torch.randn(m.weight.shape, generator=g))
                m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=g))
    return model
