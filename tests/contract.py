"""Checks of the timm model contract shared by every family's tests, and helpers several test files use."""
import torch


def assert_grad_checkpointing_equivalent(model, x):
    """Activation checkpointing changes memory, never outputs or gradients (train mode, no drop path)."""
    def run():
        model.zero_grad()
        out = model(x)
        out.square().mean().backward()
        return out.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}

    ref_out, ref_grads = run()
    model.set_grad_checkpointing(True)
    assert all(s.grad_checkpointing for s in model.stages)
    out, grads = run()
    assert torch.allclose(out, ref_out, atol=1e-6)
    for name in ref_grads:
        assert torch.allclose(grads[name], ref_grads[name], atol=1e-6), name


def assert_backward_reaches_every_parameter(model, x):
    model(x).sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


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
