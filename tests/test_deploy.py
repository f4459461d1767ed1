"""The inference transform (cvtlab.deploy): equal outputs, the fast paths really taken, models left textbook."""
import copy
import platform
import re
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch
import torch.nn as nn
import torch.nn.functional as F

import cvtlab
from cvtlab.deploy import blocks, fuse_for_inference
from cvtlab.deploy.transform import InferenceBlock, SampleGroups
from contract import random_bn

# small configs of every registered family member: (name, overrides, input size)
SMALL = [
    ('cvt_13', dict(embed_dims=(16, 32, 48), depths=(1, 1, 2), num_heads=(1, 2, 3)), 64),
    ('cvt_21', dict(embed_dims=(16, 32, 48), depths=(1, 2, 2), num_heads=(1, 2, 3)), 64),
    ('cvt_w24', dict(embed_dims=(24, 48, 64), depths=(1, 1, 2), num_heads=(1, 2, 4)), 64),
    ('cvt_tiny', {}, 48),
    ('cvt_tiny_kv1', {}, 48),
    ('cvt_tiny_stem', {}, 48),
    ('lg_tiny', dict(embed_dims=(16, 32, 48, 64), depths=(1, 1, 2, 1), num_heads=(1, 2, 3, 4)), 72),
    ('lg_small', dict(embed_dims=(16, 32, 48, 64), depths=(1, 1, 3, 1), num_heads=(1, 2, 3, 4)), 64),
    ('lg_nano', {}, 40),
]


def small_model(name, overrides, **kwargs):
    return random_bn(timm.create_model(name, num_classes=7, **overrides, **kwargs))


def test_every_registered_model_is_covered():
    assert sorted(n for n, _, _ in SMALL) == cvtlab.list_models()


@pytest.mark.parametrize('name,overrides,size', SMALL, ids=[s[0] for s in SMALL])
def test_fused_equals_the_model_and_leaves_it_alone(name, overrides, size):
    model = small_model(name, overrides).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    fused = fuse_for_inference(model)
    assert model.training and all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert isinstance(fused, SampleGroups) and not fused.training
    kinds = {type(m).__name__ for m in fused.modules()}
    assert 'BatchNorm2d' not in kinds and 'QuickGeluMlp' not in kinds and 'Block' not in kinds
    assert sum(isinstance(m, InferenceBlock) for m in fused.modules()) == sum(
        type(m).__name__ == 'Block' for m in model.modules())
    # the timm API still answers through the transform
    assert fused.num_classes == 7 and fused.pretrained_cfg == model.pretrained_cfg
    x = torch.randn(3, 3, size, size + 8)  # non-square
    with torch.no_grad():
        ref = model.eval()(x)
        torch.testing.assert_close(fused(x), ref, rtol=0, atol=1e-5)
        torch.testing.assert_close(fused.forward_head(fused.forward_features(x)), ref, rtol=0, atol=1e-5)
        torch.testing.assert_close(fuse_for_inference(fused)(x), ref, rtol=0, atol=1e-5)  # fusing twice: once


@pytest.fixture
def tiny_budgets(monkeypatch):
    """Budgets small enough that test-sized inputs run in several token blocks and sample groups."""
    monkeypatch.setattr(blocks, 'CHUNK_BYTES_INFERENCE', 64 * 64 * 4)
    monkeypatch.setattr(blocks, 'CHUNK_BYTES_SAMPLES', 1)  # attention one sample at a time
    monkeypatch.setattr(blocks, 'CHUNK_BYTES_FEATURES', 1)  # whole networks one sample at a time


@pytest.mark.parametrize('name', ['cvt_tiny', 'lg_nano'])
def test_fast_paths_are_taken_and_change_nothing(name, tiny_budgets, monkeypatch):
    model = small_model(name, {}).eval()
    fused = fuse_for_inference(model)
    calls = {'rows': 0, 'samples': []}
    rowwise, samplewise = blocks.rowwise_chunked, blocks.samplewise_chunked

    def count_rows(fn, x, width, *args):
        def counted(t):
            calls['rows'] += 1
            return fn(t)
        return rowwise(counted, x, width, *args)

    def count_samples(fn, x, *args):
        def counted(t):
            calls['samples'].append(t.shape[0])
            return fn(t)
        return samplewise(counted, x, *args)
    import cvtlab.deploy.transform as transform
    monkeypatch.setattr(transform, 'rowwise_chunked', count_rows)
    monkeypatch.setattr(transform, 'samplewise_chunked', count_samples)
    x = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        ref = model(x)
        got = fused(x)
    n_blocks = sum(isinstance(m, InferenceBlock) for m in fused.modules())
    assert calls['rows'] > 3 * n_blocks, 'no MLP residual ran in token blocks'
    assert set(calls['samples']) == {1} and len(calls['samples']) >= 3, 'no sample groups'
    torch.testing.assert_close(got, ref, rtol=0, atol=1e-5)


def test_rowwise_chunked_equals_one_call_and_stays_whole_when_it_must(monkeypatch):
    monkeypatch.setattr(blocks, 'CHUNK_BYTES_INFERENCE', 64 * 32 * 4)  # 64 rows of 32 hidden values
    mlp = nn.Sequential(nn.LayerNorm(8), nn.Linear(8, 32), nn.GELU(), nn.Linear(32, 8))
    sizes = []

    def fn(t):
        sizes.append(int(t.shape[0]))
        return t + mlp(t)

    class Chunked(nn.Module):  # a module, so that tracing sees the MLP's weights as parameters
        def __init__(self):
            super().__init__()
            self.mlp = mlp

        def forward(self, t):
            return blocks.rowwise_chunked(fn, t, 32)
    x = torch.randn(3, 100, 8)  # 300 rows: blocks of 64, the last one short
    with torch.no_grad():
        whole = x + mlp(x)
        got = blocks.rowwise_chunked(fn, x, 32)
        assert sizes == [64, 64, 64, 64, 44]
        torch.testing.assert_close(got, whole, rtol=0, atol=1e-6)
        sizes.clear()
        blocks.rowwise_chunked(fn, torch.randn(1, 100, 8), 32)  # fewer than 2 blocks
        # a traced loop would freeze the row count (and so the batch size) into an exported graph
        torch.jit.trace(Chunked(), x, check_trace=False)
        assert sizes == [1, 3]  # whole: batch 1, then the traced batch of 3
    sizes.clear()
    blocks.rowwise_chunked(fn, x.requires_grad_(), 32).sum().backward()  # recording gradients: whole
    assert sizes == [3]


def test_samplewise_chunked_groups_evenly_and_stays_whole_when_it_must(monkeypatch):
    monkeypatch.setattr(blocks, 'CHUNK_BYTES_SAMPLES', 400)
    calls = []

    def per_sample(x):  # tokens of a sample depend on each other, samples do not
        calls.append(x.shape[0])
        return x.softmax(dim=1) * 2
    x = torch.randn(9, 5, 4)
    with torch.no_grad():
        got = blocks.samplewise_chunked(per_sample, x, bytes_per_sample=100)  # <= 4 a group: 3 + 3 + 3
        assert calls == [3, 3, 3]
        torch.testing.assert_close(got, per_sample(x), rtol=0, atol=0)
        calls.clear()
        blocks.samplewise_chunked(per_sample, x, bytes_per_sample=100, budget=200)
        assert calls == [2, 2, 2, 2, 1]
        calls.clear()
        torch.jit.trace(lambda t: blocks.samplewise_chunked(per_sample, t, 100), x, check_trace=False)
        assert calls == [9]
    calls.clear()
    blocks.samplewise_chunked(per_sample, x.requires_grad_(), 100).sum().backward()
    assert calls == [9]


@pytest.mark.parametrize('name', ['regnetx_002', 'mobileone_s0'])
def test_other_timm_models_keep_their_outputs(name):
    """Other families: only timm's own reparameterisation (MobileOne's branches merge); their conv + norm +
    activation modules (timm's ConvNormAct, in RegNet) are left alone."""
    model = random_bn(timm.create_model(name, num_classes=5)).eval()
    fused = fuse_for_inference(model)
    assert not any(isinstance(m, (InferenceBlock, SampleGroups)) for m in fused.modules())
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ref = model(x)
        got = fused(x)
    # untrained MobileOne's logits reach ~1e16: compare relative to their size
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-5 * float(ref.abs().max()))
    if name == 'mobileone_s0':
        assert sum(isinstance(m, nn.BatchNorm2d) for m in fused.modules()) < sum(
            isinstance(m, nn.BatchNorm2d) for m in model.modules())


def test_fused_models_refuse_training_and_need_no_no_grad(monkeypatch):
    model = timm.create_model('cvt_tiny').eval()
    fused = fuse_for_inference(model)
    with pytest.raises(RuntimeError, match='inference only'):
        fused.train()
    assert not any(p.requires_grad for p in fused.parameters())
    monkeypatch.setattr(blocks, 'CHUNK_BYTES_INFERENCE', 64 * 64 * 4)
    sizes = []
    rowwise = blocks.rowwise_chunked
    import cvtlab.deploy.transform as transform
    monkeypatch.setattr(transform, 'rowwise_chunked', lambda fn, x, *a: rowwise(
        lambda t: sizes.append(t.shape[0]) or fn(t), x, *a))
    x = torch.randn(4, 3, 64, 64)
    out = fused(x)  # autograd on, but nothing requires a gradient: the fast paths still run
    assert not out.requires_grad and max(sizes) < x.shape[0] * 16 * 16
    torch.testing.assert_close(out, model(x).detach(), rtol=0, atol=1e-5)


def _captured_linears(compile_fn, x):
    """Run `compile_fn(backend=recorder)` (dynamo capture only, no inductor) on x; count the Linear calls
    in the single captured graph."""
    graphs = []

    def backend(gm, example_inputs):
        graphs.append(gm)
        return gm.forward
    torch._dynamo.reset()
    out = compile_fn(backend=backend)(x)
    assert len(graphs) == 1
    linears = sum(1 for n in graphs[0].graph.nodes if n.op == 'call_function' and 'linear' in str(n.target))
    return out, linears


def test_compile_for_inference_unrolls_token_blocks(monkeypatch):
    """cvtlab.compile_for_inference (static shapes) unrolls the token blocks into the graph: more Linear
    calls (more still under a lower row cap), same outputs. A plain torch.compile and dynamic=True run
    them whole."""
    monkeypatch.setattr(blocks, 'CHUNK_BYTES_COMPILED', 64 * 128 * 4)  # cvt_tiny stage 1: 512 rows, 128 hidden
    model = timm.create_model('cvt_tiny', num_classes=10)
    x = torch.randn(2, 3, 64, 64)
    fused = fuse_for_inference(model)
    with torch.no_grad():
        ref = fused(x)
        out, unrolled = _captured_linears(lambda **kw: cvtlab.compile_for_inference(model, **kw), x)
        torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
        _, whole = _captured_linears(lambda **kw: torch.compile(fused, fullgraph=True, dynamic=False, **kw), x)
        _, dynamic = _captured_linears(lambda **kw: cvtlab.compile_for_inference(model, dynamic=True, **kw), x)
        monkeypatch.setattr(blocks, 'CHUNK_ROWS_COMPILED', 32)  # the row cap halves the 64-row blocks
        out, capped = _captured_linears(lambda **kw: cvtlab.compile_for_inference(model, **kw), x)
        torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    assert unrolled > whole, 'compile_for_inference did not unroll the token blocks'
    assert capped > unrolled, 'CHUNK_ROWS_COMPILED did not cap the compiled token blocks'
    assert dynamic == whole
    torch._dynamo.reset()


def test_model_files_carry_no_speed_machinery():
    """The models read like the papers: speed lives in cvtlab/deploy, not in cvtlab/models."""
    banned = re.compile(r'is_tracing|is_compiling|chunk|sample.?group|CHUNK_|_BYTES|deploy|\bprescaled\b')
    models = Path(cvtlab.__file__).parent / 'models'
    for path in models.glob('*.py'):
        code = path.read_text()
        docstring_end = code.find('"""', 3) + 3 if code.startswith('"""') else 0  # the docstring may point at deploy
        hits = [line for line in code[docstring_end:].splitlines() if banned.search(line)]
        assert not hits, f'{path.name}: {hits}'


@pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason='torch built without oneDNN')
@pytest.mark.parametrize('activation', [None, nn.SiLU(), nn.GELU()])
def test_packed_linear_equals_linear_and_falls_back_when_it_must(activation):
    from cvtlab.deploy.kernels import PackedLinear
    linear = nn.Linear(48, 96)
    packed = PackedLinear(linear, activation)
    x = torch.randn(3, 7, 48)
    with torch.no_grad():
        ref = linear(x) if activation is None else activation(linear(x))
        torch.testing.assert_close(packed(x), ref, rtol=1e-5, atol=1e-6)
        assert packed._packed[0] is not None and packed._packed[0].is_mkldnn  # the oneDNN path ran
        copied = copy.deepcopy(packed)  # oneDNN's opaque weight copy is dropped and made again
        torch.testing.assert_close(copied(x), ref, rtol=1e-5, atol=1e-6)
    assert set(packed.state_dict()) == set(linear.state_dict())
    other = nn.Linear(48, 96)
    packed.load_state_dict(other.state_dict())  # new weights in the same tensors: packed again
    with torch.no_grad():
        ref = other(x) if activation is None else activation(other(x))
        torch.testing.assert_close(packed(x), ref, rtol=1e-5, atol=1e-6)
        packed.weight.mul_(2)  # an in-place edit too
        ref = F.linear(x, packed.weight, packed.bias)
        torch.testing.assert_close(packed(x), ref if activation is None else activation(ref), rtol=1e-5, atol=1e-6)
    out = packed(x.requires_grad_())  # recording gradients: F.linear, so backward works
    out.sum().backward()
    assert x.grad is not None


@pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason='torch built without oneDNN')
@pytest.mark.parametrize('stride,groups,bias', [(1, 1, True), (2, 1, False), (2, 16, True), (1, 16, False)])
def test_packed_conv_equals_conv_and_falls_back_when_it_must(stride, groups, bias):
    from cvtlab.deploy.kernels import PackedConv2d
    conv = nn.Conv2d(16, 32 if groups == 1 else 16, 3, stride, 1, groups=groups, bias=bias)
    packed = PackedConv2d(conv)
    tokens = torch.randn(2, 1 + 9 * 11, 16)  # a cls token ahead of a 9 x 11 map: the map is a strided view
    fmap = tokens[:, 1:].reshape(2, 9, 11, 16).permute(0, 3, 1, 2)
    with torch.no_grad():
        for x in (fmap, fmap.contiguous(), torch.randn(3, 16, 20, 14)):  # another size than the packed one
            torch.testing.assert_close(packed(x), conv(x), rtol=1e-5, atol=1e-6)
        assert packed._packed[0] is not None and packed._packed[0].is_mkldnn  # the oneDNN path ran
        torch.testing.assert_close(copy.deepcopy(packed)(fmap), conv(fmap), rtol=1e-5, atol=1e-6)
        packed.weight.mul_(2)  # an in-place edit: packed again
        torch.testing.assert_close(packed(fmap), conv(fmap), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(packed(fmap[0]), conv(fmap[0]), rtol=1e-5, atol=1e-6)  # unbatched: F.conv2d
    assert set(packed.state_dict()) == set(conv.state_dict())
    x = fmap.clone().requires_grad_()  # recording gradients: F.conv2d, so backward works and agrees
    packed(x).square().sum().backward()
    x_ref = fmap.clone().requires_grad_()
    conv(x_ref).square().sum().backward()
    torch.testing.assert_close(x.grad, x_ref.grad, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match='zero padding'):
        PackedConv2d(nn.Conv2d(16, 16, 3, padding='same'))


def test_fused_models_run_every_conv_packed():
    from cvtlab.deploy.kernels import PackedConv2d
    if not torch.backends.mkldnn.is_available():
        pytest.skip('torch built without oneDNN')
    for name in ('cvt_13', 'lg_nano'):
        model = small_model(name, {}).eval()
        fused = fuse_for_inference(model, linear_kernel='torch')  # convs are packed whichever Linear kernel
        convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
        packed = [m for m in fused.modules() if isinstance(m, PackedConv2d)]
        assert len(packed) == len(convs) and not any(type(m) is nn.Conv2d for m in fused.modules())
        x = torch.randn(2, 3, 40, 40)
        with torch.no_grad():
            torch.testing.assert_close(fused(x), model(x), rtol=0, atol=1e-5)
        assert all(m._packed[0] is not None for m in packed)  # every conv ran on its packed weights


@pytest.mark.parametrize('name', ['cvt_13', 'lg_nano'])
def test_fused_under_inference_mode(name):
    """A model fused inside `torch.inference_mode` (its folded weights are then inference tensors, which carry
    no version counter) runs, packed, with the original's outputs."""
    model = small_model(name, {}).eval()
    x = torch.randn(2, 3, 40, 40)
    with torch.inference_mode():
        fused = fuse_for_inference(model, linear_kernel='onednn' if torch.backends.mkldnn.is_available() else 'torch')
        torch.testing.assert_close(fused(x), model(x), rtol=0, atol=1e-5)


@pytest.mark.parametrize('kernel', ['onednn', 'torch'])
def test_linear_kernel_choice(kernel):
    from cvtlab.deploy.kernels import PackedLinear
    if kernel == 'onednn' and not torch.backends.mkldnn.is_available():
        pytest.skip('torch built without oneDNN')
    model = small_model('lg_nano', {}).eval()
    fused = fuse_for_inference(model, linear_kernel=kernel)
    packed = [m for m in fused.modules() if isinstance(m, PackedLinear)]
    plain = [m for m in fused.modules() if type(m) is nn.Linear]
    if kernel == 'onednn':  # every Linear, and each MLP's GELU inside its fc1
        assert packed and not plain and all(not isinstance(m, nn.GELU) for m in fused.modules())
    else:
        assert plain and not packed
    x = torch.randn(2, 3, 40, 40)
    with torch.no_grad():
        torch.testing.assert_close(fused(x), model(x), rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match='linear_kernel'):
        fuse_for_inference(model, linear_kernel='mkl')


def test_linear_kernel_probe_runs_on_the_threads_that_will_run_the_linears(two_threads, monkeypatch):
    """With two threads a batch is split into one-thread workers, so the kernel probe times one thread; it
    leaves the caller's thread count as it was."""
    from cvtlab.deploy import kernels, transform
    seen = []

    def probe(threads, dtype):
        seen.append(threads)
        return kernels.fastest_linear_kernel.__wrapped__(threads, dtype)
    monkeypatch.setattr(transform, 'fastest_linear_kernel', probe)
    inside = []
    linear = F.linear
    monkeypatch.setattr(kernels.F, 'linear', lambda *a: inside.append(torch.get_num_threads()) or linear(*a))
    fuse_for_inference(small_model('cvt_tiny', {}).eval())
    assert seen == [1] and set(inside) == {1} and torch.get_num_threads() == 2


@pytest.mark.parametrize('name', ['cvt_tiny', 'lg_nano'])
def test_bf16_transform_keeps_layernorm_in_fp32_and_says_when_it_cannot(name, monkeypatch, caplog):
    import cvtlab.deploy.transform as transform
    model = small_model(name, {}).eval()
    x = torch.randn(2, 3, 40, 40)
    with torch.no_grad():
        ref = model(x)
    monkeypatch.setattr(transform, 'bf16_supported', lambda: True)  # any CPU runs bf16, if slowly without it
    fused = fuse_for_inference(model, dtype=torch.bfloat16)  # oneDNN where it has bf16 GEMMs, else F.linear
    norms = [m for m in fused.modules() if isinstance(m, nn.LayerNorm)]
    assert norms and all(type(m).__name__ == 'MixedLayerNorm' and m.weight.dtype == torch.float32 for m in norms)
    norm_params = {id(p) for m in norms for p in m.parameters()}
    assert all(p.dtype == torch.bfloat16 for p in fused.parameters() if id(p) not in norm_params)
    with torch.no_grad():
        out = fused(x)
    assert out.dtype == torch.float32 and (out - ref).abs().max() < 0.05 * ref.abs().max()  # bf16 rounding
    monkeypatch.setattr(transform, 'bf16_supported', lambda: False)
    with caplog.at_level('WARNING', logger='cvtlab'):
        kept = fuse_for_inference(model, dtype=torch.bfloat16)
    assert 'keeping fp32' in caplog.text and all(p.dtype == torch.float32 for p in kept.parameters())
    with pytest.raises(ValueError, match='dtype'):
        fuse_for_inference(model, dtype=torch.float16)


@pytest.mark.parametrize('masked', [False, True])
def test_gemm_attention_equals_sdpa_over_sample_groups(masked, monkeypatch):
    import cvtlab.deploy.attention as attention
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(5, 3, n, 16, generator=g) for n in (40, 12, 12))
    mask = torch.randn(1, 3, 40, 12, generator=g).masked_fill(torch.rand(1, 3, 40, 12, generator=g) < 0.3,
                                                             float('-inf')) if masked else None
    if masked:
        mask[..., 0] = 0.0  # every query may attend to at least one key
    ref = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=0.3)
    monkeypatch.setattr(attention, 'SCORES_BYTES', 2 * 3 * 40 * 12 * 4)  # groups of 2 samples: 2 + 2 + 1
    assert torch.allclose(attention.gemm_attention(q, k, v, mask, scale=0.3), ref, atol=1e-6)
    default_scale = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    assert torch.allclose(attention.gemm_attention(q, k, v, mask), default_scale, atol=1e-6)
    assert attention.gemm_attention(q[:0], k[:0], v[:0], mask).shape == (0, 3, 40, 16)  # as SDPA allows


def test_gemm_attention_swap_computes_the_same_model():
    """CvT's bf16 attention modules, run in fp32: the same function as the model's (1e-5)."""
    name = 'cvt_tiny'
    from cvtlab.deploy.attention import GemmConvAttention, use_gemm_attention
    model = small_model(name, {}).eval()
    x = torch.randn(3, 3, 40, 40)
    with torch.no_grad():
        ref = model(x)
        swapped = use_gemm_attention(copy.deepcopy(model))
        out = swapped(x)
    assert GemmConvAttention in {type(m) for m in swapped.modules()}
    assert swapped.state_dict().keys() == model.state_dict().keys()
    assert torch.allclose(out, ref, atol=1e-5), (out - ref).abs().max()


@pytest.mark.parametrize('size', [(56, 56), (44, 60)])  # windows that fit; padded and shifted windows
def test_window_first_paths_compute_the_same_attention(size):
    """LG's inference paths cut windows before qkv: the same outputs (1e-5), every path swapped, the
    fast steps taken (no 3C-wide window permute), and the model's own steps when traced."""
    from cvtlab.deploy import lg_windows
    from cvtlab.models import windows
    model = small_model('lg_nano', {}).eval()
    fast = lg_windows.use_window_first_paths(copy.deepcopy(model))
    assert sum(isinstance(m, lg_windows.WindowFirstPath) for m in fast.modules()) == sum(
        type(m).__name__ == 'AttentionPath' for m in model.modules())
    x = torch.randn(2, 3, *size)
    with torch.no_grad():
        ref = model(x)
        torch.testing.assert_close(fast(x), ref, rtol=0, atol=1e-5)
        with pytest.MonkeyPatch.context() as mp:  # the 3C-wide split never runs on the fast path
            mp.setattr(windows, 'split_windows', lambda *a: pytest.fail('split_windows ran'))
            fast(x)
        traced = torch.jit.trace(fast, x[:1], check_trace=False)  # tracing: the model's own steps, any batch
        torch.testing.assert_close(traced(x), ref, rtol=0, atol=1e-5)


def test_window_masks_are_kept_per_size_and_remade_when_the_bias_changes():
    """Each path keeps its last window mask; a new size or an edited relative-position table makes it again,
    so outputs follow the model's (1e-5)."""
    from cvtlab.deploy import lg_windows
    model = small_model('lg_nano', {}).eval()
    fast = lg_windows.use_window_first_paths(copy.deepcopy(model))
    paths = [m for m in fast.modules() if isinstance(m, lg_windows.WindowFirstPath)]
    made = []
    with pytest.MonkeyPatch.context() as mp:
        real = lg_windows.window_bias_and_mask
        mp.setattr(lg_windows, 'window_bias_and_mask', lambda *a: made.append(1) or real(*a))
        with torch.no_grad():
            counts = []
            for size in [(44, 60), (44, 60), (56, 56), (44, 60)]:
                x = torch.randn(2, 3, *size)
                torch.testing.assert_close(fast(x), model(x), rtol=0, atol=1e-5)
                counts.append(len(made))
            made_per_call = [b - a for a, b in zip([0] + counts, counts)]
            assert made_per_call[0] > 0 and made_per_call[1] == 0  # the same size again: none made
            assert made_per_call[3] == made_per_call[0]  # back to the first size: made again
            for m in (model, fast):  # the same in-place edit of every table
                for name, p in m.named_parameters():
                    if name.endswith('relative_position_bias_table'):
                        p.add_(0.5 * torch.ones_like(p).cumsum(0))
            torch.testing.assert_close(fast(x), model(x), rtol=0, atol=1e-5)
    assert all(p.last_mask[0] is not None for p in paths)


def test_window_masks_follow_gradients_to_the_bias_tables():
    """An eval model whose bias tables alone require grad (so its activations do not), called with gradients on:
    the paths take the model's own steps (no mask kept with a graph in it, no in-place window writes), and
    the tables get the plain model's gradients, call after call."""
    from cvtlab.deploy import lg_windows
    model = small_model('lg_nano', {}).eval()
    for name, p in model.named_parameters():
        p.requires_grad_(name.endswith('relative_position_bias_table'))
    fast = lg_windows.use_window_first_paths(copy.deepcopy(model))
    x = torch.randn(2, 3, 44, 60)

    def table_grads(m):
        m.zero_grad()
        m(x).square().sum().backward()
        return {n: p.grad.clone() for n, p in m.named_parameters() if n.endswith('relative_position_bias_table')}
    with torch.no_grad():
        fast(x)  # masks kept from a call without gradients must not stand in for the recorded ones
    expected = table_grads(model)
    for _ in range(2):  # a second backward through a kept graph would fail
        got = table_grads(fast)
        assert got.keys() == expected.keys() and got
        for name in got:
            torch.testing.assert_close(got[name], expected[name], rtol=1e-4, atol=1e-5)
    masks = [p.last_mask[1] for p in fast.modules() if isinstance(p, lg_windows.WindowFirstPath)]
    assert masks and all(m is not None and not m.requires_grad for m in masks)  # no mask with a graph in it


@pytest.fixture
def two_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize('name', ['cvt_tiny', 'lg_nano'])
def test_sample_parallel_splits_the_batch_across_threads_and_changes_nothing(name, two_threads):
    import threading
    model = small_model(name, {}).eval()
    fused = fuse_for_inference(model)
    x = torch.randn(5, 3, 40, 40)  # 3 + 2 samples
    seen = []
    hook = fused.model.register_forward_pre_hook(
        lambda mod, args: seen.append((threading.current_thread().name, args[0].shape[0], torch.get_num_threads())))
    with torch.inference_mode():
        ref = model(x)
        out = fused(x)
        assert sorted(n for _, n, _ in seen) == [2, 3] and all(t.startswith('cvtlab-samples') for t, _, _ in seen)
        assert all(threads == 1 for _, _, threads in seen)  # two workers, one intra-op thread each
        assert torch.get_num_threads() == 2  # the caller's setting is its own
        seen.clear()
        fused.sample_parallel = False
        plain = fused(x)
        assert [n for _, n, _ in seen] == [5]
    assert torch.allclose(out, ref, atol=1e-5) and torch.allclose(out, plain, atol=1e-6)
    hook.remove()


def test_sample_parallel_keeps_thread_counts_autocast_and_even_shares(two_threads):
    import threading
    from cvtlab.deploy import parallel
    from cvtlab.deploy.parallel import split_workers
    assert [split_workers(b, 2) for b in (1, 2, 3, 4, 5)] == [1, 2, 1, 2, 2]  # 3 = 2 + 1: whole
    assert split_workers(9, 8) == 1 and split_workers(16, 8) == 8 and split_workers(8, 1) == 1
    model = small_model('cvt_tiny', {}).eval()
    fused = fuse_for_inference(model)
    parallel._forget_pool()  # fresh pool threads: each sets its own thread count on its first share
    with torch.inference_mode():
        fused(torch.randn(4, 3, 40, 40))
    later = []  # ATen hands the last thread count set anywhere to threads started afterwards
    t = threading.Thread(target=lambda: later.append(torch.get_num_threads()))
    t.start()
    t.join()
    assert later == [2]
    # autocast belongs to the caller's thread: a batch under it runs there, whole, in bf16
    seen = []
    hook = fused.model.register_forward_pre_hook(lambda mod, args: seen.append(torch.is_autocast_enabled('cpu')))
    with torch.inference_mode(), torch.autocast('cpu', dtype=torch.bfloat16):
        fused(torch.randn(4, 3, 40, 40))
    hook.remove()
    assert seen == [True]


def test_sample_parallel_leaves_gradients_to_the_input_alone(two_threads):
    """Input gradients (explain, adversarial) need the caller's thread: such calls run whole."""
    model = small_model('cvt_tiny', {}).eval()
    fused = fuse_for_inference(model)
    x = torch.randn(4, 3, 40, 40, requires_grad=True)
    fused(x).logsumexp(-1).sum().backward()
    ref_x = x.detach().clone().requires_grad_(True)
    model(ref_x).logsumexp(-1).sum().backward()
    assert torch.allclose(x.grad, ref_x.grad, atol=1e-5)


# a child interpreter: glibc's malloc settings are process-wide and the suite has already moved them. It calls
# malloc itself (as PyTorch's CPU allocator does) so that no other allocation lands on the heap in between.
_FAULTS_CHILD = '''
import ctypes, resource, sys
if sys.argv[1] == "retain":
    from cvtlab.deploy.memory import retain_freed_memory
    assert retain_freed_memory()
libc = ctypes.CDLL(None)
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
def rounds(n):
    for _ in range(n):  # three 20 MiB activations alive at once, written, then freed: a forward pass's pattern
        blocks = [libc.malloc(20 << 20) for _ in range(3)]
        for b in blocks:
            ctypes.memset(b, 1, 20 << 20)
        for b in blocks:
            libc.free(b)
rounds(2)  # glibc adapts its own thresholds to the first frees
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
rounds(6)
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
'''


@pytest.mark.skipif(not (sys.platform == 'linux' and platform.libc_ver()[0] == 'glibc'), reason='glibc only')
def test_retained_memory_stops_fresh_pages_on_every_call():
    def faults(mode: str) -> int:
        out = subprocess.run([sys.executable, '-c', _FAULTS_CHILD, mode], capture_output=True, text=True, check=True)
        return int(out.stdout.split()[-1])

    # 6 rounds of 60 MiB: with glibc's own settings it goes back every round (~92k faults); retained, it is reused
    default, retained = faults('default'), faults('retain')
    assert default > 50_000, default
    assert retained < 500, retained


@pytest.mark.skipif(not (sys.platform == 'linux' and platform.libc_ver()[0] == 'glibc'), reason='glibc only')
@pytest.mark.parametrize('value', ['0', 'off'])
def test_retain_freed_memory_can_be_turned_off(monkeypatch, value):
    from cvtlab.deploy import memory
    monkeypatch.setenv('CVTLAB_RETAIN_MEMORY', value)
    memory.retain_freed_memory.cache_clear()
    try:
        assert memory.retain_freed_memory() is False
    finally:
        memory.retain_freed_memory.cache_clear()


@pytest.mark.parametrize('h,w,shift', [(14, 14, 0), (14, 14, 3), (11, 16, 3), (5, 9, 0)])
def test_window_order_is_the_window_frame(h, w, shift):
    """The gather of `window_order` equals padding, rolling and cutting windows (`windows.to_window_frame`),
    at every real token; its scatter takes every token back."""
    from cvtlab.deploy.lg_windows import window_order
    from cvtlab.models.windows import to_window_frame
    M = 7
    x = torch.randn(1, h, w, 4)
    gather, scatter, Hp, Wp = window_order(h, w, M, shift)
    frame = to_window_frame(x, M, shift)  # 1 Hp Wp C, padding 0
    expected = frame.view(Hp // M, M, Wp // M, M, 4).transpose(1, 2).reshape(-1, 4)  # window slots
    got = x.reshape(h * w, 4)[gather]
    real = torch.tensor([bool(r.abs().sum()) for r in expected])  # padding slots are 0 in the frame
    assert torch.equal(got[real], expected[real])
    assert torch.equal(got[scatter], x.reshape(h * w, 4)) and real[scatter].all()  # back from real slots only
    windows_of = torch.arange(len(gather)) // (M * M)  # padding slots hold a token of their own window
    assert torch.equal(windows_of[scatter[gather]], windows_of)


def test_window_first_path_under_autocast_and_in_training():
    """A shifted, padded path called on an fp32 map under bf16 autocast returns what the model's path returns
    (dtype included); in training it runs the model's own steps (attention dropout)."""
    from cvtlab.deploy.lg_windows import WindowFirstPath, use_window_first_paths
    from cvtlab.models import lg
    torch.manual_seed(0)
    path = lg.AttentionPath(16, 2, 4, rate=1, shift=2, adaptive=False, qkv_bias=True, attn_drop=0.5).eval()
    fast = use_window_first_paths(nn.Sequential(copy.deepcopy(path)))[0]
    assert isinstance(fast, WindowFirstPath)
    x = torch.randn(2, 6, 7, 16)  # 6 x 7: padded to 8 x 8, shifted by 2
    with torch.no_grad(), torch.autocast('cpu', dtype=torch.bfloat16):
        ref, got = path(x), fast(x)
    assert got.dtype == ref.dtype and torch.allclose(got.float(), ref.float(), atol=2e-2)
    fast.train()
    with torch.no_grad():
        torch.manual_seed(1)
        dropped = fast(x)
        torch.manual_seed(1)
        assert torch.equal(dropped, path.train()(x))  # the same dropout draws: the model's own steps ran
