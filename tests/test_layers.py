"""Token-wise chunking (cvtlab.layers.rowwise_chunked): same numbers, forward and backward, as one call."""
import pytest
import timm
import torch
import torch.nn as nn

import cvtlab  # noqa: F401  (registers the models)
import cvtlab.layers as layers
from cvtlab.deploy import fuse_for_inference
from contract import random_bn


class CountingMlp(nn.Module):
    def __init__(self, dim=8, hidden=32):
        super().__init__()
        self.net = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return x + self.net(x)


class Chunked(nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, x):
        return layers.rowwise_chunked(self.fn, x, 32)


@pytest.fixture
def tiny_chunks(monkeypatch):
    """Budgets small enough that test-sized inputs are chunked (64 rows is the smallest block)."""
    monkeypatch.setattr(layers, 'CHUNK_BYTES_INFERENCE', 64 * 32 * 4)
    monkeypatch.setattr(layers, 'CHUNK_BYTES_TRAINING', 64 * 32 * 4)


@pytest.fixture
def no_chunks(monkeypatch):
    monkeypatch.setattr(layers, 'CHUNK_BYTES_INFERENCE', 1 << 40)
    monkeypatch.setattr(layers, 'CHUNK_BYTES_TRAINING', 1 << 40)


def test_chunked_inference_equals_one_call(tiny_chunks):
    mlp = CountingMlp()
    x = torch.randn(3, 100, 8)  # 300 rows: blocks of 64, the last one short
    with torch.no_grad():
        whole = mlp(x)
        mlp.calls = 0
        chunked = layers.rowwise_chunked(mlp, x, 32)
    assert mlp.calls == 5
    assert chunked.shape == whole.shape
    torch.testing.assert_close(chunked, whole, rtol=0, atol=1e-6)


def test_chunked_backward_equals_one_call(tiny_chunks):
    mlp = CountingMlp()
    x = torch.randn(3, 100, 8, requires_grad=True)
    grad_out = torch.randn(3, 100, 8)
    mlp(x).backward(grad_out)
    whole = [x.grad.clone()] + [p.grad.clone() for p in mlp.parameters()]
    x.grad = None
    mlp.zero_grad()
    mlp.calls = 0
    layers.rowwise_chunked(mlp, x, 32).backward(grad_out)
    assert mlp.calls == 5
    for a, b in zip(whole, [x.grad] + [p.grad for p in mlp.parameters()]):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5)  # weight grads sum over blocks


def test_small_inputs_and_tracing_run_whole(tiny_chunks):
    mlp = CountingMlp()
    with torch.no_grad():
        layers.rowwise_chunked(mlp, torch.randn(1, 100, 8), 32)  # < 2 blocks
        assert mlp.calls == 1
        # a traced loop would freeze the row count (and so the batch size) into an exported graph
        torch.jit.trace(Chunked(mlp), torch.randn(4, 100, 8), check_trace=False)
    assert mlp.calls == 2


@pytest.mark.parametrize('name', ['cvt_tiny', 'lg_nano'])
def test_models_chunked_equal_whole(name, monkeypatch):
    """Whole models, eval (fused for CvT) and a training step with drop path: chunked == one call."""
    model = timm.create_model(name, num_classes=10, drop_path_rate=0.1)
    size = 64 if name == 'cvt_tiny' else 112
    x = torch.randn(2, 3, size, size)
    start = {k: v.clone() for k, v in model.state_dict().items()}  # training moves BN statistics
    results = {}
    for mode, budget in (('whole', 1 << 40), ('chunked', 64 * 32 * 4)):
        monkeypatch.setattr(layers, 'CHUNK_BYTES_INFERENCE', budget)
        monkeypatch.setattr(layers, 'CHUNK_BYTES_TRAINING', budget)
        calls = {'rowwise_chunked': 0, 'fn': 0}
        monkeypatch.setattr(layers, 'rowwise_chunked', _spy(calls, layers.rowwise_chunked))
        model.load_state_dict(start)
        model.train()
        model.zero_grad()
        torch.manual_seed(1)  # the same drop-path draws
        loss = model(x).logsumexp(-1).sum()
        loss.backward()
        grads = [p.grad.clone() for p in model.parameters()]
        with torch.no_grad():
            eval_model = fuse_for_inference(model) if name == 'cvt_tiny' else model.eval()
            results[mode] = (loss.detach(), grads, eval_model(x))
        if mode == 'whole':
            assert calls['fn'] == calls['rowwise_chunked'] > 0
        else:
            assert calls['fn'] > calls['rowwise_chunked'] > 0, 'no block was chunked'
        monkeypatch.undo()
    (loss_w, grads_w, out_w), (loss_c, grads_c, out_c) = results['whole'], results['chunked']
    torch.testing.assert_close(loss_c, loss_w, rtol=1e-6, atol=1e-5)
    torch.testing.assert_close(out_c, out_w, rtol=1e-5, atol=1e-5)
    for a, b in zip(grads_w, grads_c):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-6)


def _spy(calls, rowwise_chunked):
    """rowwise_chunked that counts its own calls and those of the function it chunks."""
    def counted(fn):
        def call(x):
            calls['fn'] += 1
            return fn(x)
        return call

    def wrapped(fn, x, width, *args):
        calls['rowwise_chunked'] += 1
        return rowwise_chunked(counted(fn), x, width, *args)
    return wrapped


@pytest.mark.parametrize('training', [True, False])
def test_mlp_residual_is_the_textbook_residual(training, tiny_chunks):
    """Block.mlp_residual == x + drop_path(mlp(norm2(x))), drop path included (whole samples dropped)."""
    from cvtlab.models.cvt import Block
    block = Block(16, 2, 0, 4.0, True, 0.0, 0.0, drop_path=0.5, kv_stride=2).train(training)
    x = torch.randn(8, 40, 16)  # 320 rows, hidden 64: blocks of 64 rows
    torch.manual_seed(3)
    expected = x + block.drop_path(block.mlp(block.norm2(x)))
    torch.manual_seed(3)
    got = block.mlp_residual(x)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    if training:  # the draws dropped some samples and kept others
        dropped = (got - x).abs().amax(dim=(1, 2)) == 0
        assert dropped.any() and not dropped.all()



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
    calls (more still under a lower row cap), same outputs. A plain torch.compile, dynamic=True and
    compiled training run them whole."""
    monkeypatch.setattr(layers, 'CHUNK_BYTES_COMPILED', 64 * 128 * 4)  # cvt_tiny stage 1: 512 rows, 128 hidden
    model = timm.create_model('cvt_tiny', num_classes=10)
    x = torch.randn(2, 3, 64, 64)
    fused = fuse_for_inference(model)
    with torch.no_grad():
        ref = fused(x)
        out, unrolled = _captured_linears(lambda **kw: cvtlab.compile_for_inference(model, **kw), x)
        torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
        _, whole = _captured_linears(lambda **kw: torch.compile(fused, fullgraph=True, dynamic=False, **kw), x)
        _, dynamic = _captured_linears(lambda **kw: cvtlab.compile_for_inference(model, dynamic=True, **kw), x)
        monkeypatch.setattr(layers, 'CHUNK_ROWS_COMPILED', 32)  # the row cap halves the 64-row blocks
        out, capped = _captured_linears(lambda **kw: cvtlab.compile_for_inference(model, **kw), x)
        torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    assert unrolled > whole, 'compile_for_inference did not unroll the token blocks'
    assert capped > unrolled, 'CHUNK_ROWS_COMPILED did not cap the compiled token blocks'
    assert dynamic == whole
    _, trained = _captured_linears(lambda **kw: torch.compile(model.train(), fullgraph=True, dynamic=False, **kw), x)
    assert trained == whole
    torch._dynamo.reset()


def test_samplewise_chunked_equals_one_call(monkeypatch):
    """Groups of samples in CPU inference (9 samples, at most 4 per group: 3 + 3 + 3, not 4 + 4 + 1), one
    call when recording gradients or tracing."""
    monkeypatch.setattr(layers, 'CHUNK_BYTES_SAMPLES', 400)
    calls = []

    def per_sample(x):  # tokens of a sample depend on each other, samples do not
        calls.append(x.shape[0])
        return x.softmax(dim=1) * 2
    x = torch.randn(9, 5, 4)
    with torch.no_grad():
        got = layers.samplewise_chunked(per_sample, x, bytes_per_sample=100)
        assert calls == [3, 3, 3]
        torch.testing.assert_close(got, per_sample(x), rtol=0, atol=0)
        calls.clear()
        layers.samplewise_chunked(per_sample, x, bytes_per_sample=100, budget=200)  # an explicit budget
        assert calls == [2, 2, 2, 2, 1]
        calls.clear()
        torch.jit.trace(lambda t: layers.samplewise_chunked(per_sample, t, 100), x, check_trace=False)
        assert calls == [9]
    calls.clear()
    layers.samplewise_chunked(per_sample, x.requires_grad_(), 100).sum().backward()
    assert calls == [9]


def test_lg_attention_in_sample_groups_equals_whole(monkeypatch):
    """LG-Nano in eval: attention one sample at a time gives the whole batch's outputs."""
    model = timm.create_model('lg_nano', num_classes=10).eval()
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        monkeypatch.setattr(layers, 'CHUNK_BYTES_SAMPLES', 1 << 40)
        whole = model(x)
        monkeypatch.setattr(layers, 'CHUNK_BYTES_SAMPLES', 1)  # groups of one sample
        calls = {'n': 0}
        forward = type(model.stages[0].blocks[0].attn)._sum_of_paths

        def counted(self, t):
            calls['n'] += 1
            return forward(self, t)
        monkeypatch.setattr(type(model.stages[0].blocks[0].attn), '_sum_of_paths', counted)
        grouped = model(x)
    blocks = sum(len(s.blocks) for s in model.stages)
    assert calls['n'] == 3 * blocks
    torch.testing.assert_close(grouped, whole, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize('arch', ['cvt_13', 'lg_nano'])
def test_inference_in_sample_groups_equals_whole(monkeypatch, arch):
    """CvT and LG in CPU inference run their stages over groups of samples (here 2 + 2 + 1; CvT fused or
    not) with the whole batch's outputs; in train mode (CvT's BatchNorm needs the whole batch) they run
    whole even without autograd, as they do when recording gradients."""
    if arch == 'cvt_13':
        model = random_bn(timm.create_model('cvt_13', embed_dims=(16, 32, 48), depths=(1, 1, 2),
                                            num_heads=(1, 2, 3), num_classes=10))
        embed = model.stages[0].patch_embed.proj
    else:
        model = timm.create_model(arch, num_classes=10)
        embed = model.patch_embed.proj
    batches = []
    model.stages[0].register_forward_pre_hook(lambda _, args: batches.append(args[0].shape[0]))
    variants = (model.eval(), fuse_for_inference(model)) if arch == 'cvt_13' else (model.eval(),)
    x = torch.randn(5, 3, 64, 64)
    first_map = (64 // embed.stride[0]) ** 2 * embed.out_channels * 4  # bytes per sample
    for m in variants:
        with torch.no_grad():
            monkeypatch.setattr(layers, 'CHUNK_BYTES_FEATURES', 1 << 40)
            whole = m(x)
            monkeypatch.setattr(layers, 'CHUNK_BYTES_FEATURES', 2 * first_map)
            batches.clear()
            grouped = m(x)
        assert batches == [2, 2, 1]
        torch.testing.assert_close(grouped, whole, rtol=1e-5, atol=1e-6)  # GEMMs of other sizes: ~1e-7
    batches.clear()
    with torch.no_grad():
        model.train()(x)
    model.eval()(x)  # autograd on
    assert batches == [5, 5]
