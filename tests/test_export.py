"""ONNX export checked in onnxruntime, and attention-map explanations."""
import json
import subprocess
import sys

import numpy as np
import pytest
import timm
import torch
from PIL import Image

import cvtlab
from cvtlab.explain import cvt_attention_maps, lg_path_maps, record_attention
from cvtlab.export import export_onnx
from contract import random_bn

ort = pytest.importorskip('onnxruntime')

# every family and code path, kept small: custom CvT / LG shapes plus the 32 px variants
SMALL = {
    'cvt_13': dict(embed_dims=(16, 32, 48), depths=(1, 1, 2), num_heads=(1, 2, 3)),
    'cvt_tiny': {},
    'lg_tiny': dict(embed_dims=(32, 64, 96, 128), depths=(2, 2, 2, 2), num_heads=(1, 2, 3, 4)),
    'lg_nano': {},
}


@pytest.mark.parametrize('name', sorted(SMALL))
@pytest.mark.parametrize('fuse', [False, True])
def test_onnx_matches_pytorch_at_two_sizes(name, fuse, tmp_path):
    model = random_bn(timm.create_model(name, **SMALL[name])).eval()  # so folding is really exercised
    reference = model(torch.ones(1, 3, 64, 64)).detach()
    result = export_onnx(model, tmp_path / 'm.onnx', fuse=fuse)
    assert len(result['max_abs_diff']) == 2 and max(result['max_abs_diff'].values()) <= 1e-4
    sizes = [k.split('x', 1)[1] for k in result['max_abs_diff']]
    assert sizes[0] != sizes[1]  # two different (the second non-square) sizes
    # a third, odd size never seen at export: the graph has no baked-in shapes
    session = ort.InferenceSession(str(tmp_path / 'm.onnx'))
    x = torch.randn(2, 3, 45, 61)
    with torch.no_grad():
        expected = model(x).numpy()
    assert np.abs(session.run(None, {'image': x.numpy()})[0] - expected).max() <= 1e-4
    pre = json.loads((tmp_path / 'm.preprocess.json').read_text())
    assert pre['mean'] == list(model.pretrained_cfg['mean']) and pre['input_size'][0] == 3
    if not fuse:
        assert 'max_abs_diff_unfused' not in result
    else:  # onnxruntime also checked against the model as it was before fusing
        assert result['max_abs_diff_unfused'].keys() == result['max_abs_diff'].keys()
        assert max(result['max_abs_diff_unfused'].values()) <= 1e-4
    # the caller's model is left as it was (export fuses a copy): BatchNorm kept, same outputs
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules()) or name.startswith('lg')
    assert torch.equal(model(torch.ones(1, 3, 64, 64)), reference)


def test_export_cli_from_a_checkpoint(tmp_path):
    model = timm.create_model('cvt_tiny', num_classes=4)
    cvtlab.save_pretrained(model, tmp_path / 'tiny', label_names=['a', 'b', 'c', 'd'])
    result = subprocess.run([sys.executable, '-m', 'cvtlab', 'export', str(tmp_path / 'tiny'),
                             str(tmp_path / 'out.onnx')], capture_output=True, text=True, timeout=300)  # fuses
    assert result.returncode == 0, result.stderr
    assert 'max |diff|' in result.stdout and 'BN folded' in result.stdout
    assert json.loads((tmp_path / 'out.preprocess.json').read_text())['label_names'] == ['a', 'b', 'c', 'd']
    bad = subprocess.run([sys.executable, '-m', 'cvtlab', 'export', 'cvt_tiny', str(tmp_path / 'out.txt')],
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and 'must end in .onnx' in bad.stderr and 'Traceback' not in bad.stderr


def test_recorded_attention_is_the_models_attention():
    model = timm.create_model('cvt_13', **SMALL['cvt_13']).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        plain = model(x)
        with record_attention() as records:
            recorded = model(x)
    assert torch.equal(plain, recorded)  # recording does not change the computation
    assert len(records) == 4  # one SDPA call per block
    assert all(torch.allclose(p.sum(-1), torch.ones(())) for p in records)
    assert records[-1].shape == (1, 3, 1 + 4 * 4, 1 + 2 * 2)  # stride-2 keys, cls token on both sides


def test_cvt_maps_shapes_and_rollout_is_a_distribution():
    model = timm.create_model('cvt_13', **SMALL['cvt_13']).eval()
    maps = cvt_attention_maps(model, torch.randn(1, 3, 96, 128))
    assert maps['heads'].shape == (3, 3, 4) and maps['rollout'].shape == (6, 8)
    assert (maps['heads'] >= 0).all() and (maps['heads'].sum(dim=(1, 2)) <= 1 + 1e-5).all()
    assert 0 < maps['rollout'].sum() <= 1 + 1e-5


def test_lg_path_maps_one_per_path():
    model = timm.create_model('lg_tiny', **SMALL['lg_tiny']).eval()
    maps = lg_path_maps(model, torch.randn(1, 3, 224, 224))
    assert list(maps) == ['rate 1', 'rate 2', 'rate 4', 'rate 8']
    assert all(m.shape == (56, 56) and (m > 0).all() for m in maps.values())


@pytest.mark.parametrize('name', ['cvt_13', 'lg_tiny'])
def test_explain_cli_writes_png(name, tmp_path):
    model = timm.create_model(name, num_classes=3, **SMALL[name])
    cvtlab.save_pretrained(model, tmp_path / 'm', label_names=['x', 'y', 'z'])
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (120, 90, 3), dtype=np.uint8)).save(tmp_path / 'img.jpg')
    result = subprocess.run([sys.executable, '-m', 'cvtlab', 'explain', str(tmp_path / 'img.jpg'), '--checkpoint',
                             str(tmp_path / 'm'), '--output', str(tmp_path)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    png = tmp_path / 'explain_img.png'
    assert png.stat().st_size > 10_000 and Image.open(png).size[0] > 500
