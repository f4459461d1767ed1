"""The timm model contract, checked once for every model cvtlab registers (both families, one file).

Each model is built small (its family's layout and settings, fewer and narrower blocks) and run on small
non-square images; where only shapes matter (the pretrained cfg, `reset_classifier`'s device and dtype)
the real architecture runs on the meta device. Family-specific behaviour (paper tables, pooling modes,
LG's windows and paths) is tested in test_cvt.py and test_lg.py.
"""
import fnmatch
import io
import math

import numpy as np
import pytest
import timm
import timm.optim
import torch
import torch.nn as nn
from timm.layers import set_layer_config
from timm.models import group_parameters
from torchvision.models.feature_extraction import create_feature_extractor

import cvtlab

# name -> (overrides that keep the family's layout but shrink it, input H x W). The 32 px variants run as
# registered. Sizes are non-square so that a swapped H / W cannot pass, and multiples of every reduction.
SMALL = {
    'cvt_13': (dict(embed_dims=(16, 32, 48), depths=(1, 1, 2), num_heads=(1, 2, 3)), (64, 96)),
    'cvt_21': (dict(embed_dims=(16, 32, 48), depths=(1, 2, 2), num_heads=(1, 2, 3)), (64, 96)),
    'cvt_w24': (dict(embed_dims=(24, 48, 64), depths=(2, 1, 2), num_heads=(1, 2, 4)), (64, 96)),
    'cvt_tiny': ({}, (32, 48)),
    'cvt_tiny_kv1': ({}, (32, 48)),
    'cvt_tiny_stem': ({}, (32, 48)),
    # LG-T / LG-S keep their rates, window 7 and 224 px design size (so which paths shift); >= 32 px inputs
    'lg_tiny': (dict(embed_dims=(16, 32, 48, 64), depths=(2, 1, 1, 1), num_heads=(1, 2, 3, 4)), (64, 96)),
    'lg_small': (dict(embed_dims=(16, 32, 48, 64), depths=(1, 1, 2, 1), num_heads=(1, 2, 3, 4)), (64, 96)),
    'lg_nano': ({}, (32, 48)),
}
MODELS = sorted(SMALL)
# torchvision notes that the training graph has nodes the eval graph lacks (drop path, dropout): as expected
pytestmark = pytest.mark.filterwarnings('ignore:NOTE. The nodes obtained by tracing the model in eval mode')
# torch.compile and ONNX: one small model per family (each costs seconds; test_export.py covers ONNX in depth)
ONE_PER_FAMILY = ['cvt_tiny', 'lg_nano']


def build(name: str, **kwargs) -> nn.Module:
    """The small model, with the same weights on every call (builds that differ only in wrapping compare)."""
    torch.manual_seed(0)
    return timm.create_model(name, **SMALL[name][0], **kwargs)


def meta_model(name: str, **kwargs) -> nn.Module:
    with torch.device('meta'):
        return timm.create_model(name, **kwargs)


def image(name: str, batch: int = 2, odd: bool = False) -> torch.Tensor:
    """The model's input; `odd`: another size, transposed and not a multiple of any reduction (padding)."""
    h, w = SMALL[name][1]
    size = (w + 1, h + 1) if odd else (h, w)
    return torch.randn(batch, 3, *size, generator=torch.Generator().manual_seed(sum(size)))


def to_nchw(x: torch.Tensor, fmt: str) -> torch.Tensor:
    return x.permute(0, 3, 1, 2) if fmt == 'NHWC' else x  # B H W C -> B C H W


def stage_maps_shapes(model: nn.Module, x: torch.Tensor):
    """B C_i ceil(H / r_i) ceil(W / r_i) for every entry of feature_info (channels and reductions)."""
    B, _, H, W = x.shape
    return [(B, f['num_chs'], math.ceil(H / f['reduction']), math.ceil(W / f['reduction'])) for f in model.feature_info]


def close(a: torch.Tensor, b: torch.Tensor, atol: float = 1e-5) -> bool:
    return a.shape == b.shape and torch.allclose(a, b, atol=atol)


def equal_lists(a, b) -> bool:
    return len(a) == len(b) and all(torch.equal(x, y) for x, y in zip(a, b))


def test_every_registered_model_is_covered():
    assert MODELS == cvtlab.list_models()
    assert all(timm.is_model(name) for name in MODELS)


# --- forward, head, classifier ----------------------------------------------------------------------------------
@pytest.mark.parametrize('name', MODELS)
def test_forward_features_and_head(name):
    model = build(name).eval()
    x = image(name)
    with torch.no_grad():
        logits = model(x)
        feats = model.forward_features(x)
        pre = model.forward_head(feats, pre_logits=True)
        assert logits.shape == (2, model.num_classes) and torch.isfinite(logits).all()
        assert close(model.forward_head(feats), logits, atol=0)
        assert pre.shape == (2, model.num_features) and model.head_hidden_size == model.num_features
        assert close(model.get_classifier()(pre), logits)
        assert close(model(x[1:]), logits[1:])  # batch 1 works; samples do not see each other in eval


@pytest.mark.parametrize('name', MODELS)
def test_reset_classifier(name):
    model = build(name).eval()
    x = image(name)
    with torch.no_grad():
        feats = model.forward_features(x)
        pre = model.forward_head(feats, pre_logits=True)
    assert model.get_classifier() is model.get_submodule(model.pretrained_cfg['classifier'])
    model.reset_classifier(7)
    head = model.get_classifier()
    assert model.num_classes == 7 and isinstance(head, nn.Linear)
    assert head is model.get_submodule(model.pretrained_cfg['classifier'])
    assert (head.in_features, head.out_features) == (model.num_features, 7)
    with torch.no_grad():
        assert close(model(x), head(pre))
    model.reset_classifier(0)
    assert model.num_classes == 0 and not list(model.get_classifier().parameters())
    with torch.no_grad():
        assert close(model(x), pre)  # pooled, num_features wide
    model.reset_classifier(0, '')
    with torch.no_grad():
        assert close(model(x), feats)  # nothing pooled: forward_features itself


@pytest.mark.parametrize('name', MODELS)
@pytest.mark.parametrize('training', [True, False])
def test_reset_classifier_keeps_device_dtype_and_mode(name, training):
    """On the real architecture (meta device, float64): the new head is made where the model lives, and the
    model keeps its mode."""
    model = meta_model(name).to(torch.float64).train(training)
    model.reset_classifier(5)
    head = model.get_classifier()
    assert head.weight.device.type == 'meta' and head.weight.dtype == torch.float64
    assert head.weight.shape == (5, model.num_features) and model.training == training
    x = torch.empty(2, *model.pretrained_cfg['input_size'], device='meta', dtype=torch.float64)
    logits = model.eval()(x)
    assert logits.shape == (2, 5) and logits.dtype == torch.float64


@pytest.mark.parametrize('name', MODELS)
def test_pretrained_cfg_pool_size_and_output_fmt(name):
    """pool_size is the final map forward_features returns at the cfg's input size; output_fmt (a model
    attribute in timm: PretrainedCfg has no such field, and timm's feature wrappers read the model's) says its
    layout. A B N C token sequence has no map to pool over: pool_size None."""
    model = meta_model(name).eval()
    cfg = model.pretrained_cfg
    feats = model.forward_features(torch.empty(1, *cfg['input_size'], device='meta'))
    if feats.ndim == 3:
        assert feats.shape[2] == model.num_features and cfg['pool_size'] is None
        return
    fmt = model.output_fmt
    assert fmt == ('NHWC' if name.startswith('lg') else 'NCHW')  # LG maps are NHWC, as timm's Swin
    hooked = timm.create_model(name, features_only=True, feature_cls='hook', pretrained=False, **SMALL[name][0])
    assert str(hooked.output_fmt.value) == fmt  # timm's feature wrappers read it off the model
    fmap = to_nchw(feats, fmt)
    assert fmap.shape[1] == model.num_features
    assert tuple(cfg['pool_size']) == tuple(fmap.shape[2:])
    r = model.feature_info[-1]['reduction']
    assert tuple(fmap.shape[2:]) == tuple(math.ceil(s / r) for s in cfg['input_size'][1:])


# --- forward_intermediates and feature extraction ----------------------------------------------------------
@pytest.mark.parametrize('name', MODELS)
def test_forward_intermediates(name):
    model = build(name).eval()
    x = image(name)
    with torch.no_grad():
        final, maps = model.forward_intermediates(x)
        assert close(final, model.forward_features(x), atol=1e-6)
        assert [tuple(t.shape) for t in maps] == stage_maps_shapes(model, x)  # NCHW, feature_info's channels
        take = model.forward_intermediates
        assert equal_lists(take(x, indices=2, intermediates_only=True), maps[-2:])  # the last two
        assert equal_lists(take(x, indices=[0], stop_early=True, intermediates_only=True), maps[:1])
        nhwc = take(x, output_fmt='NHWC', intermediates_only=True)
        assert equal_lists([t.permute(0, 3, 1, 2) for t in nhwc], maps)
        # norm: the final norm on the last map only, which is then the map forward_features returns
        normed = take(x, norm=True, intermediates_only=True)
        assert len(normed) == len(maps) and equal_lists(normed[:-1], maps[:-1])
        if final.ndim == 4:
            assert close(normed[-1], to_nchw(final, model.output_fmt), atol=1e-6)
        else:  # B n+HW C tokens, the n prefix (cls) tokens first
            tokens = final[:, getattr(model, 'num_prefix_tokens', 0):]
            assert close(normed[-1].flatten(2).transpose(1, 2), tokens, atol=1e-6)
    # pruning to stages 0 and 1 drops the later stages and the classifier, and keeps those two maps
    later = [f['module'] for f in model.feature_info[2:]]
    assert later and model.prune_intermediate_layers([0, 1]) == [0, 1]
    modules = dict(model.named_modules())
    assert all(name not in modules for name in later)
    assert not list(model.get_classifier().parameters())
    with torch.no_grad():
        kept = model.forward_intermediates(x, indices=[0, 1], intermediates_only=True)
    assert equal_lists(kept, maps[:2])


@pytest.mark.parametrize('name', MODELS)
def test_features_only_getter_hook_and_fx_agree(name):
    """features_only with every feature class (the default getter over forward_intermediates, forward hooks,
    timm's FX graph) gives the stage maps of forward_intermediates, in the wrapper's declared output_fmt,
    with feature_info's channels and reductions, also for a subset of out_indices (the getter prunes the
    model, hooks read a subset). In training, gradients of the FX wrapper's maps reach the image and every
    parameter it holds (the final norm and head are not in its graph)."""
    x = image(name)
    model = build(name).eval()
    with torch.no_grad():
        expected = model.forward_intermediates(x, intermediates_only=True)
    channels = [f['num_chs'] for f in model.feature_info]
    reductions = [f['reduction'] for f in model.feature_info]
    every, some = tuple(range(len(channels))), (1, len(channels) - 1)
    for feature_cls, index_sets in ((None, (every, some)), ('hook', (every, some)), ('fx', (every,))):
        cls_arg = {} if feature_cls is None else dict(feature_cls=feature_cls)
        for out_indices in index_sets:
            features = build(name, features_only=True, out_indices=out_indices, **cls_arg).eval()
            assert features.feature_info.channels() == [channels[i] for i in out_indices], feature_cls
            assert features.feature_info.reduction() == [reductions[i] for i in out_indices], feature_cls
            with torch.no_grad():
                out = features(x)
            assert len(out) == len(out_indices), feature_cls
            for o, i in zip(out, out_indices):
                assert close(to_nchw(o, features.output_fmt), expected[i]), (feature_cls, i)

    features.train()  # the FX wrapper
    x.requires_grad_()
    sum(o.square().mean() for o in features(x)).backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in features.parameters())


@pytest.mark.parametrize('name', MODELS)
def test_torchvision_feature_extractor_forward_and_backward(name):
    """torchvision's create_feature_extractor on the stage modules feature_info names and the head: in
    training, gradients reach the image and every parameter; in eval, the model's logits and the stage maps
    of forward_intermediates."""
    model = build(name)
    nodes = {f['module']: f'stage{i}' for i, f in enumerate(model.feature_info)}
    extractor = create_feature_extractor(model, return_nodes={**nodes, 'head': 'logits'})
    x = image(name).requires_grad_()
    extractor.train()
    out = extractor(x)
    (out['logits'].square().mean() + sum(out[k].square().mean() for k in nodes.values())).backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert len(list(extractor.parameters())) == len(list(model.parameters()))
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in extractor.parameters())

    extractor.eval()
    model.eval()
    fmt = getattr(model, 'output_fmt', 'NCHW')
    with torch.no_grad():
        out = extractor(x)
        assert close(out['logits'], model(x))
        for key, expected in zip(nodes.values(), model.forward_intermediates(x, intermediates_only=True)):
            assert close(to_nchw(out[key], fmt), expected), key


# --- tracing, scripting, compiling, exporting ------------------------------------------------------------
def assert_matches_eager_at_two_sizes(converted, model: nn.Module, name: str):
    """One converted model serves every input size: no shape became a constant."""
    with torch.no_grad():
        for x in (image(name), image(name, batch=1, odd=True)):
            assert close(converted(x), model(x))


@pytest.mark.parametrize('name', MODELS)
def test_fx_symbolic_trace_matches_eager(name):
    model = build(name).eval()
    assert_matches_eager_at_two_sizes(torch.fx.symbolic_trace(model), model, name)


@pytest.mark.parametrize('name', MODELS)
def test_torchscript_matches_eager(name):
    with set_layer_config(scriptable=True):
        model = build(name).eval()
        scripted = torch.jit.script(model)
    assert_matches_eager_at_two_sizes(scripted, model, name)


@pytest.mark.parametrize('name', ONE_PER_FAMILY)
def test_torch_compile_fullgraph_matches_eager(name):
    """fullgraph: dynamo captures the model as one graph, in eval and in training (forward and backward).
    Eval runs through backend='aot_eager', the graphs inductor would receive; neither pays for inductor's C++
    compile (a minute per model on two cores): test_benchmark.py compiles one model with inductor."""
    model = build(name, drop_path_rate=0.0).eval()  # no drop path: training runs compare
    x = image(name)
    try:
        compiled = torch.compile(model, fullgraph=True, dynamic=False, backend='aot_eager')
        with torch.no_grad():
            assert close(compiled(x), model(x))
        model.train()
        compiled = torch.compile(model, fullgraph=True, dynamic=False, backend='eager')
        compiled(x).square().mean().backward()
        got = {n: p.grad.clone() for n, p in model.named_parameters()}
        model.zero_grad()
        model(x).square().mean().backward()
        assert all(torch.allclose(got[n], p.grad, atol=1e-6) for n, p in model.named_parameters())
    finally:
        torch.compiler.reset()


@pytest.mark.parametrize('name', ONE_PER_FAMILY)
def test_onnx_matches_pytorch_at_another_size(name, tmp_path):
    """The TorchScript-based exporter with dynamic batch, height and width; onnxruntime at a size and batch
    not used for export, within 1e-4. (test_export.py: fused graphs, cvtlab.export, the CLI.)"""
    ort = pytest.importorskip('onnxruntime')
    model = build(name).eval()
    path = tmp_path / f'{name}.onnx'
    with torch.no_grad():
        torch.onnx.export(model, (image(name),), str(path), dynamo=False, input_names=['image'],
                          output_names=['logits'],
                          dynamic_axes=dict(image={0: 'batch', 2: 'height', 3: 'width'}, logits={0: 'batch'}))
        x = image(name, batch=3, odd=True)
        expected = model(x).numpy()
    got = ort.InferenceSession(str(path), providers=['CPUExecutionProvider']).run(None, {'image': x.numpy()})[0]
    assert got.shape == expected.shape and np.abs(got - expected).max() <= 1e-4


# --- training: gradients, checkpointing, optimizer groups -------------------------------------------------
def count_module_calls(model: nn.Module, x: torch.Tensor) -> int:
    """Module forward calls in one forward + backward: activation checkpointing re-runs forwards in backward."""
    calls = []
    handles = [m.register_forward_hook(lambda *_: calls.append(1)) for m in model.modules()]
    try:
        model(x).square().mean().backward()
    finally:
        for h in handles:
            h.remove()
    return len(calls)


def outputs_and_grads(model: nn.Module, x: torch.Tensor):
    model.zero_grad(set_to_none=True)
    out = model(x)
    out.square().mean().backward()
    return out.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize('name', MODELS)
def test_backward_and_grad_checkpointing(name):
    """In training (no drop path, so that runs compare): backward reaches every parameter with a finite
    gradient; set_grad_checkpointing recomputes forwards in backward and changes neither outputs nor
    gradients; set_grad_checkpointing(False) stops the recomputation."""
    model = build(name, drop_path_rate=0.0).train()
    x = image(name)
    out, grads = outputs_and_grads(model, x)
    assert all(g is not None and torch.isfinite(g).all() for g in grads.values())
    plain_calls = count_module_calls(model, x)

    model.set_grad_checkpointing(True)
    assert count_module_calls(model, x) > plain_calls
    ckpt_out, ckpt_grads = outputs_and_grads(model, x)
    assert close(ckpt_out, out, atol=1e-6)
    for n, g in grads.items():
        assert torch.allclose(ckpt_grads[n], g, atol=1e-6), n
    model.set_grad_checkpointing(False)
    assert count_module_calls(model, x) == plain_calls


def depth_of_parameters(model: nn.Module) -> dict:
    """Parameter name -> index of the feature_info stage holding it; -1 before the stages, inf after them."""
    prefixes = [f['module'] + '.' for f in model.feature_info]
    depth, past_stem = {}, False
    for name, _ in model.named_parameters():
        stage = next((i for i, prefix in enumerate(prefixes) if name.startswith(prefix)), None)
        past_stem = past_stem or stage is not None
        depth[name] = stage if stage is not None else math.inf if past_stem else -1
    return depth


@pytest.mark.parametrize('name', MODELS)
def test_no_weight_decay_and_group_matcher(name):
    """no_weight_decay names parameters, which timm's optimizer factory then leaves undecayed; group_matcher
    puts every parameter in exactly one group, in depth order from the stem to the head, which layer
    decay uses."""
    model = build(name)
    names = [n for n, _ in model.named_parameters()]
    no_decay = model.no_weight_decay()
    assert all(any(fnmatch.fnmatchcase(n, pattern) for n in names) for pattern in no_decay)
    opt = timm.optim.create_optimizer_v2(model, 'adamw', lr=1e-3, weight_decay=0.05)
    undecayed = {id(p) for g in opt.param_groups if g['weight_decay'] == 0 for p in g['params']}
    matched = [p for n, p in model.named_parameters() if any(fnmatch.fnmatchcase(n, q) for q in no_decay)]
    assert all(id(p) in undecayed for p in matched)

    num_stages = len(model.feature_info)
    cfg = model.pretrained_cfg
    depths = depth_of_parameters(model)
    for coarse in (False, True):
        groups = list(group_parameters(model, model.group_matcher(coarse=coarse)).values())
        assert sorted(n for members in groups for n in members) == sorted(names), coarse  # each exactly once
        assert len(groups) >= num_stages + 1, coarse  # the stem, then at least one group per stage
        assert cfg['first_conv'] + '.weight' in groups[0] and cfg['classifier'] + '.weight' in groups[-1], coarse
        depth = [depths[n] for members in groups for n in members]
        assert depth == sorted(depth), coarse  # groups follow the network's depth
    opt = timm.optim.create_optimizer_v2(model, 'adamw', lr=1e-3, layer_decay=0.75)
    scales = sorted({g['lr_scale'] for g in opt.param_groups})
    assert len(scales) >= num_stages + 1 and max(scales) == 1.0


@pytest.mark.parametrize('name', MODELS)
def test_state_dict_round_trip(name):
    """A state dict of plain tensors (loadable with weights_only=True) fills a freshly built model exactly:
    same keys, and the same outputs."""
    model = build(name).eval()
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)
    cfg = model.pretrained_cfg
    assert cfg['first_conv'] + '.weight' in state and cfg['classifier'] + '.weight' in state
    torch.manual_seed(1)
    other = timm.create_model(name, **SMALL[name][0]).eval()
    result = other.load_state_dict(state, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    x = image(name)
    with torch.no_grad():
        assert torch.equal(other(x), model(x))
