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
    'cvt_tiny_kv1': {},  # keys and values at stride 1
    'cvt_tiny_stem': {},  # and a conv stem with BatchNorm
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


def _trained_digits_model():
    """cvt_tiny fitted for a few steps on digits: logits with real margins, unlike random weights'."""
    from timm.data import create_transform
    from cvtlab.data import build_datasets, resolve_data_config
    torch.manual_seed(0)
    model = timm.create_model('cvt_tiny', num_classes=10)
    t = create_transform(**resolve_data_config(model), is_training=False)
    train = build_datasets('digits', t, t).train
    xs, ys = zip(*[train[i] for i in range(256)])
    x, y = torch.stack(xs), torch.tensor(ys)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for step in range(30):
        i = torch.randint(0, 256, (64,))
        loss = torch.nn.functional.cross_entropy(model(x[i]), y[i])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval(), x, y


def test_int8_export_quantizes_and_stays_close_to_fp32(tmp_path):
    from cvtlab.deploy.int8 import attention_matmuls
    from cvtlab.export import calibration_batches
    import onnx
    model, x, y = _trained_digits_model()
    calibration = calibration_batches(model, 'digits', images=96, batch_size=32)
    assert [b.shape for b in calibration] == [(32, 3, 32, 32)] * 3
    r = export_onnx(model, tmp_path / 'm.int8.onnx', int8=True, calibration=calibration)
    graph = onnx.load(str(tmp_path / 'm.int8.onnx')).graph
    ops = [n.op_type for n in graph.node]
    assert r['quantize_nodes'] == ops.count('QuantizeLinear') > 10 and 'DequantizeLinear' in ops
    # int8 weights: a quantized initializer per Linear/Conv; the attention matmuls were left in fp32
    assert sum(init.data_type == onnx.TensorProto.INT8 for init in graph.initializer) >= 10
    blocks = sum(type(m).__name__ == 'Block' for m in model.modules())
    assert r['attention_matmuls_in_fp32'] == 2 * blocks and r['calibration_images'] == 96  # q @ k^T, attn @ v
    assert r['size_mb'] < 0.6 * r['fp32_size_mb']
    fp32_session = ort.InferenceSession(str(tmp_path / 'm.int8.onnx'))
    with torch.no_grad():
        expected = model(x).numpy()
    got = fp32_session.run(None, {'image': x.numpy()})[0]
    assert (got.argmax(1) == expected.argmax(1)).mean() >= 0.95  # 256 training images
    assert 0 < np.abs(got - expected).max() < 1.0  # quantized (not identical), yet close
    assert r['int8_top1_agreement'] >= 0.95
    pre = json.loads((tmp_path / 'm.int8.preprocess.json').read_text())
    assert pre['dtype'] == 'int8' and pre['input_size'] == [3, 32, 32]
    assert not list(tmp_path.glob('*.partial')) and not list(tmp_path.glob('tmp*'))  # nothing left behind
    with pytest.raises(cvtlab.CvtlabError, match='calibration'):
        export_onnx(model, tmp_path / 'x.onnx', int8=True)


def test_attention_matmuls_are_those_without_a_weight():
    import onnx
    from onnx import helper, numpy_helper, TensorProto
    w = numpy_helper.from_array(np.ones((4, 4), np.float32), 'w')
    nodes = [helper.make_node('MatMul', ['x', 'w'], ['a'], name='linear'),
             helper.make_node('MatMul', ['a', 'x'], ['b'], name='qk')]
    graph = helper.make_graph(nodes, 'g', [helper.make_tensor_value_info('x', TensorProto.FLOAT, [4, 4])],
                              [helper.make_tensor_value_info('b', TensorProto.FLOAT, [4, 4])], initializer=[w])
    from cvtlab.deploy.int8 import attention_matmuls
    assert attention_matmuls(helper.make_model(graph)) == ['qk']


def test_exported_onnx_files_evaluate_and_predict(tmp_path):
    """`eval` / `predict --checkpoint FILE.onnx` run an exported file (fp32 or int8) with its preprocessing."""
    model, _, _ = _trained_digits_model()
    labels = [str(i) for i in range(10)]
    cvtlab.save_pretrained(model, tmp_path / 'tiny', label_names=labels)
    run = lambda *a: subprocess.run([sys.executable, '-m', 'cvtlab', *a], capture_output=True, text=True,
                                    timeout=300)
    result = run('export', str(tmp_path / 'tiny'), str(tmp_path / 'q.onnx'), '--int8')
    assert result.returncode == 2 and '--calibration-data' in result.stderr  # a folder does not say its data
    result = run('export', str(tmp_path / 'tiny'), str(tmp_path / 'q.onnx'), '--int8',
                 '--calibration-data', 'digits', '--calibration-images', '64')
    assert result.returncode == 0, result.stderr
    assert 'top-1 agrees with fp32' in result.stdout and 'of 64 calibration images' in result.stdout
    from cvtlab.inference import evaluate, predict
    ours = evaluate(str(tmp_path / 'tiny'), 'digits')
    int8 = evaluate(str(tmp_path / 'q.onnx'), 'digits')
    assert int8['backend'] == 'onnxruntime (int8 ONNX file)' and int8['count'] == ours['count'] == 360
    assert abs(int8['top1'] - ours['top1']) <= 3.0  # a briefly trained model: a loose bound
    Image.fromarray((np.random.default_rng(0).random((20, 20)) * 255).astype(np.uint8)).save(tmp_path / 'a.png')
    results, errors = predict([str(tmp_path / 'a.png')], checkpoint=str(tmp_path / 'q.onnx'), top_k=3)
    assert not errors and [t['label'] for t in results[0]['top']][0] in labels
    assert sum(t['prob'] for t in results[0]['top']) <= 1.0 + 1e-6
    (tmp_path / 'q.preprocess.json').unlink()
    bad = run('eval', '--checkpoint', str(tmp_path / 'q.onnx'), '--data', 'digits')
    assert bad.returncode == 2 and 'preprocess.json is missing' in bad.stderr and 'Traceback' not in bad.stderr


def test_session_runner_splits_a_batch_by_samples_like_the_torch_path(tmp_path):
    """onnxruntime (`--backend onnxruntime`, exported files) splits a batch across the threads by samples, each
    part on a one-thread session: the same logits as one session on the whole batch."""
    from cvtlab.deploy.backends import SessionRunner, onnxruntime_session
    model = random_bn(timm.create_model('lg_nano', num_classes=5)).eval()
    export_onnx(model, tmp_path / 'm.onnx')
    x = torch.randn(4, 3, 32, 32)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    calls = []  # (session, batch size) of every run

    class Recorded:
        def __init__(self, name, session):
            self.name, self.session = name, session

        def run(self, outputs, feeds):
            calls.append((self.name, len(feeds['image'])))
            return self.session.run(outputs, feeds)

    try:
        runner = SessionRunner(tmp_path / 'm.onnx')
        runner.session, runner._one_thread = Recorded('whole', runner.session), Recorded('share', runner._one_thread)
        out = runner(x)
        assert sorted(calls) == [('share', 2), ('share', 2)]  # two shares of 2 images, one per thread
        calls.clear()
        single = runner(x[:1])
        assert calls == [('whole', 1)]  # one image: the session with every thread
    finally:
        torch.set_num_threads(before)
    whole = onnxruntime_session(tmp_path / 'm.onnx').run(None, {'image': x.numpy()})[0]
    assert np.allclose(out.numpy(), whole, atol=1e-5) and np.allclose(single.numpy(), whole[:1], atol=1e-5)
    with torch.no_grad():
        assert torch.allclose(out, model(x), atol=1e-4)
