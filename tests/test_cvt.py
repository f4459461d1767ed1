"""CvT against the paper's tables and the official model's quirks (the timm contract: test_contract.py)."""
import pytest
import timm
import timm.optim
import torch
import torch.nn as nn

import cvtlab
from cvtlab import count_macs, count_params
from cvtlab.models.cvt import CVT_VARIANTS

# Exact parameter counts of the official model (cvt.md Sec. 1.7) and FlopCounterMode GMACs (Sec. 1.8).
PARAMS = {'cvt_13': 19_997_480, 'cvt_21': 31_622_696, 'cvt_w24': 277_196_392}
GMACS = {('cvt_13', 224): 4.57, ('cvt_21', 224): 7.18, ('cvt_w24', 224): 60.92,
         ('cvt_13', 384): 16.27, ('cvt_21', 384): 24.85, ('cvt_w24', 384): 194.2}
TINY = dict(embed_dims=(16, 32, 48), depths=(1, 1, 2), num_heads=(1, 2, 3))


def meta_model(name, **kwargs):
    with torch.device('meta'):
        return timm.create_model(name, **kwargs)


@pytest.mark.parametrize('name', sorted(PARAMS))
def test_param_count_exact(name):
    assert count_params(meta_model(name)) == PARAMS[name]


@pytest.mark.parametrize('name,res', sorted(GMACS))
def test_gmacs_within_1pct_of_paper_table(name, res):
    gmacs = count_macs(meta_model(name), (3, res, res)) / 1e9
    assert gmacs == pytest.approx(GMACS[name, res], rel=0.01)


def test_gmacs_count_attention_on_a_real_cpu_model():
    """The fused CPU SDPA kernel is invisible to FlopCounterMode; our count must still include it."""
    model = timm.create_model('cvt_13').eval()
    # the attention matmuls alone are 0.508 GMACs (cvt.md Sec. 1.8): a count without them would be 4.06
    assert count_macs(model) / 1e9 == pytest.approx(4.566, abs=0.002)


def test_registered_with_timm_and_weight_tags():
    for name in ('cvt_13', 'cvt_21', 'cvt_w24'):
        assert timm.is_model(name)
    tags = set(timm.list_pretrained('cvt_*'))
    assert tags == {'cvt_13.ms_in1k', 'cvt_13.ms_in1k_384', 'cvt_13.ms_in22k_ft_in1k_384',
                    'cvt_21.ms_in1k', 'cvt_21.ms_in1k_384', 'cvt_21.ms_in22k_ft_in1k_384',
                    'cvt_w24.ms_in22k_ft_in1k_384'}
    assert cvtlab.list_models('cvt_*') == ['cvt_13', 'cvt_21', 'cvt_tiny', 'cvt_tiny_kv1', 'cvt_tiny_stem', 'cvt_w24']


@pytest.mark.parametrize('tag', ['cvt_13.ms_in1k', 'cvt_21.ms_in1k_384', 'cvt_13.ms_in22k_ft_in1k_384',
                                 'cvt_w24.ms_in22k_ft_in1k_384'])
def test_pretrained_cfg_preprocessing(tag):
    cfg = timm.models.get_pretrained_cfg(tag).to_dict()
    res = 384 if tag.endswith('384') else 224
    assert cfg['input_size'] == (3, res, res)
    assert cfg['interpolation'] == 'bicubic'
    assert cfg['mean'] == (0.485, 0.456, 0.406) and cfg['std'] == (0.229, 0.224, 0.225)
    if res == 224:
        assert cfg['crop_pct'] == 0.875 and cfg['crop_mode'] == 'center'
    else:
        assert cfg['crop_pct'] == 1.0 and cfg['crop_mode'] == 'squash'
    arch = tag.split('.')[0].replace('_', '-')
    assert cfg['hf_hub_id'].startswith(f'microsoft/{arch}')
    model = meta_model(tag)
    state = model.state_dict()
    assert cfg['classifier'] + '.weight' in state and cfg['first_conv'] + '.weight' in state
    data_cfg = timm.data.resolve_data_config({}, model=model)
    assert data_cfg['crop_pct'] == cfg['crop_pct'] and data_cfg['input_size'] == (3, res, res)


def test_custom_config_keeps_key_layout():
    model = timm.create_model('cvt_13', depths=(1, 1, 2), embed_dims=(64, 128, 192), num_heads=(1, 2, 3))
    keys = set(model.state_dict())
    assert 'stages.2.blocks.1.attn.conv_proj_k.bn.running_var' in keys
    assert 'stages.2.cls_token' in keys and 'head.weight' in keys
    assert model.stages[1].blocks[0].attn.num_heads == 2
    assert model(torch.randn(2, 3, 64, 64)).shape == (2, 1000)


def test_architecture_quirks():
    model = timm.create_model('cvt_13')
    attn = model.stages[2].blocks[0].attn
    assert attn.scale == pytest.approx(384 ** -0.5)  # full embedding dim, not the head dim
    assert attn.conv_proj_k.conv.stride == (2, 2) and attn.conv_proj_q.conv.stride == (1, 1)
    assert attn.conv_proj_q.conv.bias is None and attn.conv_proj_q.conv.groups == 384
    assert model.stages[0].patch_embed.proj.bias is not None
    assert [s.cls_token is not None for s in model.stages] == [False, False, True]
    assert model.stages[0].blocks[0].norm1.eps == 1e-5
    mlp = model.stages[0].blocks[0].mlp  # fc2(QuickGELU(fc1 x)), however it is computed
    x = torch.randn(5, 64) * 3
    z = mlp.fc1(x)
    assert torch.allclose(mlp(x), mlp.fc2(z * torch.sigmoid(1.702 * z)), atol=1e-5)
    assert not any(isinstance(m, nn.GELU) for m in model.modules())
    assert not any('pos_embed' in k for k in model.state_dict())


def test_mlp_trains_exactly_like_quickgelu():
    """The MLP computes QuickGELU as one SiLU on rescaled weights: same outputs and gradients as the
    textbook fc1 -> z sigmoid(1.702 z) -> fc2 (the fused inference MLP: test_deploy.py)."""
    mlp = timm.create_model('cvt_13', **TINY).stages[0].blocks[0].mlp
    x = torch.randn(2, 7, mlp.fc1.in_features) * 3

    def grads(out):
        mlp.zero_grad()
        (out ** 2).sum().backward()
        return {name: p.grad.clone() for name, p in mlp.named_parameters()}

    z = mlp.fc1(x)
    ref = mlp.fc2(z * torch.sigmoid(1.702 * z))  # the textbook MLP, with the same parameters
    out = mlp(x)
    assert (out - ref).abs().max() < 1e-5
    got, expected = grads(out), grads(ref)
    for name in expected:
        assert torch.allclose(got[name], expected[name], rtol=1e-4, atol=1e-5), name


def test_layernorm_computes_in_fp32():
    model = timm.create_model('cvt_13', **TINY).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ref = model(x)
        with torch.autocast('cpu', dtype=torch.bfloat16):
            low = model(x)
        norm = model.stages[0].blocks[0].norm1
        t = torch.randn(2, 5, 16).bfloat16()
        assert norm(t).dtype == torch.bfloat16
        expected = nn.functional.layer_norm(t.float(), (16,), norm.weight, norm.bias, 1e-5).bfloat16()
        assert torch.equal(norm(t), expected)
    assert (low.float() - ref).abs().max() < 0.1


def test_drop_path_schedule_per_stage_on_branches():
    model = timm.create_model('cvt_13')
    rates = [[getattr(b.drop_path, 'drop_prob', 0.0) for b in s.blocks] for s in model.stages]
    assert rates[0] == [0.0] and rates[1] == [0.0, 0.0]
    assert rates[2] == pytest.approx([i * 0.1 / 9 for i in range(10)], abs=1e-7)  # rises within the stage
    w24 = meta_model('cvt_w24')
    assert w24.stages[2].blocks[-1].drop_path.drop_prob == pytest.approx(0.3)
    # drop path acts on the residual branch: a dropped sample keeps its input (HF zeroes the stream)
    block = timm.create_model('cvt_13', **TINY, drop_path_rate=(0, 0, 0.999)).stages[2].blocks[1].train()
    x = torch.randn(64, 1 + 16, 48)
    out = block(x, 4, 4)
    kept = (out - x).flatten(1).abs().max(dim=1).values == 0
    assert kept.sum() > 50 and not (out.flatten(1).abs().max(dim=1).values == 0).any()


def test_init_as_official():
    model = timm.create_model('cvt_13')
    lin = model.stages[2].blocks[0].attn.proj_q
    assert lin.weight.std().item() == pytest.approx(0.02, rel=0.1) and lin.bias.abs().max() == 0
    # parity: timm's trunc_normal_ bounds are absolute (+-2), so at std 0.02 it is practically untruncated
    assert 0.04 < lin.weight.abs().max() <= 2
    conv = model.stages[0].patch_embed.proj  # PyTorch default (kaiming uniform, a=sqrt(5)): bound 1/sqrt(fan_in)
    assert conv.weight.abs().max() <= (3 * 49) ** -0.5 and conv.bias.abs().max() > 0
    assert model.head.bias.abs().max() > 0 and model.stages[2].cls_token.abs().max() > 0


@pytest.mark.parametrize('size', [(32, 32), (33, 47), (224, 224), (160, 256)])
def test_any_input_size_and_batch_one(size):
    model = timm.create_model('cvt_13', **TINY).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, *size)).shape == (1, 1000)


def test_token_and_avg_pooling():
    """forward_features returns every token of the last stage, cls first: 'token' pooling (official) takes
    the cls token, 'avg' the mean of the map tokens."""
    model = timm.create_model('cvt_13', **TINY).eval()
    assert model.global_pool == 'token'
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        feats = model.forward_features(x)
        assert feats.shape == (2, 1 + 4 * 4, 48)
        assert torch.equal(model.forward_head(feats, pre_logits=True), feats[:, 0])
        model.reset_classifier(7, 'avg')
        assert torch.allclose(model.forward_head(feats, pre_logits=True), feats[:, 1:].mean(1))
    with pytest.raises(ValueError):
        model.reset_classifier(3, 'max')
    with pytest.raises(ValueError, match='cls token'):
        timm.create_model('cvt_13', **TINY, cls_token=(False, False, False), global_pool='token')


def test_no_weight_decay_as_official():
    model = timm.create_model('cvt_13', **TINY)
    assert model.no_weight_decay() == {'stages.2.cls_token'}
    opt = timm.optim.create_optimizer_v2(model, 'adamw', lr=1e-3, weight_decay=0.05)
    no_decay = {id(p) for g in opt.param_groups if g['weight_decay'] == 0 for p in g['params']}
    named = dict(model.named_parameters())
    assert id(named['stages.2.cls_token']) in no_decay
    assert id(named['stages.0.blocks.0.attn.conv_proj_q.bn.weight']) in no_decay
    assert id(named['stages.0.blocks.0.attn.proj_q.bias']) in no_decay
    # parity with the official recipe: depth-wise conv weights do decay
    assert id(named['stages.0.blocks.0.attn.conv_proj_q.conv.weight']) not in no_decay


def test_feature_info_three_stages_at_strides_4_8_16():
    info = meta_model('cvt_13').feature_info
    assert [f['reduction'] for f in info] == [4, 8, 16] and [f['num_chs'] for f in info] == [64, 192, 384]
    assert meta_model('cvt_w24').pretrained_cfg['pool_size'] is None  # forward_features returns tokens


def test_variant_table_matches_paper_table_2():
    assert CVT_VARIANTS['cvt_13'].depths == (1, 2, 10) and CVT_VARIANTS['cvt_21'].depths == (1, 4, 16)
    assert CVT_VARIANTS['cvt_w24'].embed_dims == (192, 768, 1024)
    for name in ('cvt_13', 'cvt_21', 'cvt_w24'):  # every released config has 64-wide heads
        v = CVT_VARIANTS[name]
        assert all(d // h == 64 for d, h in zip(v.embed_dims, v.num_heads))


def test_bad_constructor_arguments():
    with pytest.raises(TypeError):
        timm.create_model('cvt_13', depht=(1, 2, 3))
    with pytest.raises(ValueError, match='one per stage'):
        timm.create_model('cvt_13', depths=(1, 2))
    with pytest.raises(cvtlab.ConfigError, match='did you mean'):
        cvtlab.create_model('cvt_31')
