"""Logit parity with HF transformers' CvtForImageClassification (random weights, QuickGELU swapped in)."""
import pytest
import timm
import torch
from safetensors.torch import save_file

import cvtlab
from cvtlab.convert import detect_layout, to_cvtlab
from hf_reference import CVT_13, SMALL, hf_model, hf_to_official_independent

CONFIGS = {'cvt_13': CVT_13, 'small': SMALL}


@pytest.fixture(scope='module', params=list(CONFIGS))
def pair(request):
    cfg = CONFIGS[request.param]
    hf = hf_model(**cfg)
    ours = timm.create_model('cvt_13', **cfg).eval()
    ours.load_state_dict(to_cvtlab(hf.state_dict()), strict=True)
    return hf, ours


@pytest.mark.parametrize('batch', [1, 3])
@pytest.mark.parametrize('size', [(224, 224), (160, 256), (225, 225)])
def test_logits_match_hf(pair, batch, size):
    hf, ours = pair
    x = torch.randn(batch, 3, *size)
    with torch.no_grad():
        expected = hf(pixel_values=x).logits
        got = ours(x)
    assert got.shape == (batch, 1000)
    assert (got - expected).abs().max().item() <= 1e-4


def test_hf_gelu_differs_from_official_quickgelu():
    """Documented difference: HF's exact GELU drifts from the official QuickGELU model."""
    hf_exact = hf_model(**SMALL, quick_gelu=False)
    ours = timm.create_model('cvt_13', **SMALL).eval()
    ours.load_state_dict(to_cvtlab(hf_exact.state_dict()))
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert (ours(x) - hf_exact(pixel_values=x).logits).abs().max() > 1e-3


def _logits(model, x):
    with torch.no_grad():
        return model(x)


@pytest.fixture(scope='module')
def small_reference():
    hf = hf_model(**SMALL)
    x = torch.randn(2, 3, 96, 128)
    with torch.no_grad():
        return hf, x, hf(pixel_values=x).logits


def test_load_save_pretrained_directory(small_reference, tmp_path):
    hf, x, expected = small_reference
    hf.save_pretrained(tmp_path / 'hf')
    assert detect_layout(cvtlab.checkpoint.read_state_dict(tmp_path / 'hf')) == 'hf'
    model = timm.create_model('cvt_13', **SMALL).eval()
    cvtlab.load_checkpoint(model, tmp_path / 'hf')
    assert (_logits(model, x) - expected).abs().max() <= 1e-4
    # and rebuilt from the directory alone (architecture read from config.json and the tensors)
    rebuilt = cvtlab.load_model(tmp_path / 'hf').eval()
    assert (_logits(rebuilt, x) - expected).abs().max() <= 1e-4


@pytest.mark.parametrize('fmt', ['bin', 'safetensors'])
def test_load_hf_state_dict_file(small_reference, tmp_path, fmt):
    hf, x, expected = small_reference
    path = tmp_path / f'pytorch_model.{fmt}'
    sd = {k: v.contiguous() for k, v in hf.state_dict().items()}
    torch.save(sd, path) if fmt == 'bin' else save_file(sd, str(path))
    model = timm.create_model('cvt_13', pretrained=True, pretrained_cfg_overlay=dict(file=str(path)), **SMALL)
    assert (_logits(model.eval(), x) - expected).abs().max() <= 1e-4


def test_load_official_layout(small_reference, tmp_path):
    hf, x, expected = small_reference
    official = hf_to_official_independent(hf.state_dict())
    assert 'stage2.cls_token' in official and 'stage0.blocks.0.attn.conv_proj_k.bn.running_var' in official
    path = tmp_path / 'CvT-small.pth'
    torch.save(official, path)
    assert detect_layout(official) == 'official'
    model = timm.create_model('cvt_13', pretrained=True, pretrained_cfg_overlay=dict(file=str(path)), **SMALL)
    assert (_logits(model.eval(), x) - expected).abs().max() <= 1e-4
    # wrapped as the official training checkpoint ({'state_dict': ...}) and with a DDP 'module.' prefix
    torch.save({'epoch': 3, 'state_dict': {f'module.{k}': v for k, v in official.items()}}, path)
    model = cvtlab.create_model('cvt_13', checkpoint=str(path), **SMALL)
    assert (_logits(model.eval(), x) - expected).abs().max() <= 1e-4


def test_convert_round_trip(small_reference, tmp_path):
    hf, x, expected = small_reference
    hf.save_pretrained(tmp_path / 'hf')
    summary = cvtlab.convert_checkpoint(tmp_path / 'hf', tmp_path / 'out')
    assert summary['layout'] == 'hf' and summary['architecture'] == 'cvt_13'
    assert (tmp_path / 'out' / 'config.json').is_file()
    model = cvtlab.load_model(tmp_path / 'out').eval()
    assert (_logits(model, x) - expected).abs().max() <= 1e-4
    assert detect_layout(cvtlab.checkpoint.read_state_dict(tmp_path / 'out')) == 'cvtlab'
    # timm route with our own layout
    model = timm.create_model('cvt_13', pretrained=True, **SMALL,
                              pretrained_cfg_overlay=dict(file=str(tmp_path / 'out' / 'model.safetensors')))
    assert (_logits(model.eval(), x) - expected).abs().max() <= 1e-4
