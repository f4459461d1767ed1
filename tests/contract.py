"""Checks of the timm model contract shared by every family's tests."""
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
