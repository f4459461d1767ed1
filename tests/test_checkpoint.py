"""Checkpoint reading, strict fitting and clear one-line errors."""
import logging
import os
import subprocess
import sys

import pytest
import timm
import torch
from safetensors.torch import save_file

import cvtlab
from cvtlab.checkpoint import atomic_write, read_state_dict, save_weights
from cvtlab.convert import cvtlab_to_official

TINY = dict(embed_dims=(16, 32, 48), depths=(1, 1, 2), num_heads=(1, 2, 3))


def tiny(**kwargs):
    return timm.create_model('cvt_13', **TINY, **kwargs).eval()


def run_cli(*args):
    return subprocess.run([sys.executable, '-m', 'cvtlab', *map(str, args)], capture_output=True, text=True,
                          timeout=300)


def assert_one_line_error(result):
    assert result.returncode == 2, result.stderr
    assert 'Traceback' not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith('cvtlab: error:'), result.stderr
    return lines[0]


@pytest.fixture
def official_file(tmp_path):
    model = tiny()
    path = tmp_path / 'official.pth'
    torch.save(cvtlab_to_official(model.state_dict()), path)
    return model, path


@pytest.mark.parametrize('suffix', ['.pth', '.safetensors'])
def test_truncated_checkpoint_is_one_line_error(tmp_path, suffix):
    model = tiny()
    path = tmp_path / f'w{suffix}'
    if suffix == '.pth':
        torch.save(model.state_dict(), path)
    else:
        save_file(model.state_dict(), str(path))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(cvtlab.CheckpointError, match='cannot read checkpoint') as info:
        cvtlab.load_checkpoint(tiny(), path)
    assert '\n' not in str(info.value)
    line = assert_one_line_error(run_cli('convert', path, tmp_path / 'out'))
    assert 'truncated' in line
    assert not (tmp_path / 'out').exists()


def test_zero_byte_and_missing_files(tmp_path):
    (tmp_path / 'empty.pth').write_bytes(b'')
    with pytest.raises(cvtlab.CheckpointError, match='empty'):
        read_state_dict(tmp_path / 'empty.pth')
    with pytest.raises(cvtlab.CheckpointError, match='no such checkpoint'):
        read_state_dict(tmp_path / 'nope.pth')
    with pytest.raises(cvtlab.CheckpointError, match='directory holds no'):
        read_state_dict(tmp_path)
    assert 'no such checkpoint' in assert_one_line_error(run_cli('convert', tmp_path / 'nope.pth', tmp_path / 'o'))


def test_wrong_keys_name_them(official_file, tmp_path):
    model, _ = official_file
    sd = model.state_dict()
    sd['stages.0.blocks.0.attn.extra.weight'] = torch.zeros(3)
    del sd['stages.1.blocks.0.mlp.fc1.bias']
    path = tmp_path / 'wrong.safetensors'
    save_file(sd, str(path))
    with pytest.raises(cvtlab.CheckpointError) as info:
        cvtlab.load_checkpoint(tiny(), path)
    msg = str(info.value)
    assert '1 missing keys: stages.1.blocks.0.mlp.fc1.bias' in msg
    assert '1 unexpected keys: stages.0.blocks.0.attn.extra.weight' in msg
    assert '\n' not in msg
    line = assert_one_line_error(run_cli('convert', path, tmp_path / 'out'))
    assert 'missing keys' in line


def test_shape_mismatch_and_other_architecture(official_file, tmp_path):
    _, path = official_file
    other = timm.create_model('cvt_13', embed_dims=(16, 32, 64), depths=(1, 1, 2), num_heads=(1, 2, 4))
    with pytest.raises(cvtlab.CheckpointError, match='shape mismatches'):
        cvtlab.load_checkpoint(other, path)
    with pytest.raises(cvtlab.CheckpointError, match='missing keys'):
        cvtlab.load_checkpoint(timm.create_model('cvt_13', embed_dims=(16, 32, 48), depths=(1, 1, 3),
                                                 num_heads=(1, 2, 3)), path)
    torch.save(timm.create_model('resnet10t').state_dict(), tmp_path / 'resnet.pth')
    with pytest.raises(cvtlab.CheckpointError, match='unknown checkpoint layout'):
        cvtlab.load_checkpoint(tiny(), tmp_path / 'resnet.pth')
    torch.save({'foo.bar': torch.zeros(1)}, tmp_path / 'alien.pth')
    with pytest.raises(cvtlab.CheckpointError, match='unknown checkpoint layout'):
        cvtlab.load_checkpoint(tiny(), tmp_path / 'alien.pth')


def test_head_of_other_size_dropped_with_notice(official_file, caplog):
    model, path = official_file
    with caplog.at_level(logging.WARNING, logger='cvtlab'):
        ft = cvtlab.create_model('cvt_13', checkpoint=str(path), num_classes=10, **TINY)
    assert 'classifier not loaded' in caplog.text and '1000 classes' in caplog.text
    assert ft.head.out_features == 10
    assert torch.equal(ft.stages[2].cls_token, model.stages[2].cls_token)
    # and through timm's pretrained route
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger='cvtlab'):
        ft = timm.create_model('cvt_13', pretrained=True, num_classes=10, **TINY,
                               pretrained_cfg_overlay=dict(file=str(path)))
    assert 'classifier not loaded' in caplog.text
    assert torch.equal(ft.stages[0].patch_embed.proj.weight, model.stages[0].patch_embed.proj.weight)
    # with the matching size the head is loaded, never silently dropped
    same = cvtlab.create_model('cvt_13', checkpoint=str(path), **TINY)
    assert torch.equal(same.head.weight, model.head.weight)


def test_checkpoint_filter_for_hub_weights(official_file):
    """The timm filter (used for Hub downloads) converts and checks strictly too."""
    from cvtlab.models.cvt import checkpoint_filter_fn
    model, path = official_file
    sd = torch.load(path, weights_only=True)
    assert set(checkpoint_filter_fn(sd, tiny())) == set(model.state_dict())
    del sd['stage0.patch_embed.proj.weight']
    with pytest.raises(cvtlab.CheckpointError, match='stages.0.patch_embed.proj.weight'):
        checkpoint_filter_fn(sd, tiny())


class _Payload:
    def __reduce__(self):
        return (os.system, ('touch PWNED_MARKER',))


def test_pickle_payload_refused_and_never_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    torch.save({'stages.0.x': _Payload()}, tmp_path / 'evil.pth')
    with pytest.raises(cvtlab.CheckpointError, match='refused'):
        read_state_dict(tmp_path / 'evil.pth')
    assert not (tmp_path / 'PWNED_MARKER').exists()


def test_atomic_write_keeps_previous_file(tmp_path):
    path = tmp_path / 'w.safetensors'
    save_weights(path, {'a': torch.ones(2)})

    def broken(tmp):
        open(tmp, 'wb').write(b'partial')
        raise RuntimeError('disk full')

    with pytest.raises(RuntimeError):
        atomic_write(path, broken)
    assert torch.equal(read_state_dict(path)['a'], torch.ones(2))
    assert [p.name for p in tmp_path.iterdir()] == ['w.safetensors']  # no temporary left behind


# --- one read per call ----------------------------------------------------------------------------------
@pytest.fixture
def count_reads(monkeypatch):
    """Counts every opening of a weights file: safetensors' load_file and torch.load, wherever called."""
    reads = []

    def counted(load):
        def wrapper(*args, **kwargs):
            reads.append(args[0])
            return load(*args, **kwargs)
        return wrapper

    monkeypatch.setattr(cvtlab.checkpoint, 'load_file', counted(cvtlab.checkpoint.load_file))
    monkeypatch.setattr(torch, 'load', counted(torch.load))
    return reads


def test_each_entry_point_reads_the_file_once(official_file, tmp_path, count_reads):
    model, path = official_file
    entry_points = {
        'create_model': lambda: cvtlab.create_model('cvt_13', checkpoint=str(path), **TINY),
        'convert_checkpoint': lambda: cvtlab.convert_checkpoint(path, tmp_path / 'out'),
        'load_model (model folder)': lambda: cvtlab.load_model(tmp_path / 'out'),
        'load_model (bare official file)': lambda: cvtlab.load_model(path),
        'load_checkpoint': lambda: cvtlab.load_checkpoint(tiny(), path),
    }
    for name, call in entry_points.items():
        count_reads.clear()
        loaded = call()
        assert len(count_reads) == 1, f'{name} read {count_reads}'
        if isinstance(loaded, torch.nn.Module):
            assert torch.equal(loaded.stages[2].cls_token, model.stages[2].cls_token), name


# --- which family a file holds ----------------------------------------------------------------------------
def test_bare_lg_file_is_rebuilt_as_lg(tmp_path):
    model = timm.create_model('lg_nano', num_classes=7).eval()
    x = torch.randn(2, 3, 32, 32)
    # a model folder that lost its config.json; and a plain safetensors file with no config at all
    cvtlab.save_pretrained(model, tmp_path / 'run')
    (tmp_path / 'run' / 'config.json').unlink()
    save_file(model.state_dict(), str(tmp_path / 'bare.safetensors'))
    for path in (tmp_path / 'run', tmp_path / 'bare.safetensors'):
        rebuilt = cvtlab.load_model(path).eval()
        assert type(rebuilt).__name__ == 'LGTransformer' and rebuilt.num_classes == 7
        with torch.no_grad():
            assert torch.equal(rebuilt(x), model(x))
    summary = cvtlab.convert_checkpoint(tmp_path / 'bare.safetensors', tmp_path / 'out')
    assert summary['architecture'] == 'lg_nano' and summary['layout'] == 'cvtlab'
    with torch.no_grad():
        assert torch.equal(cvtlab.load_model(tmp_path / 'out').eval()(x), model(x))


def test_lg_file_of_no_registered_shape_needs_its_config(tmp_path):
    model = timm.create_model('lg_nano', embed_dims=(16, 32, 48, 64), num_classes=3).eval()
    save_file(model.state_dict(), str(tmp_path / 'custom.safetensors'))
    with pytest.raises(cvtlab.CheckpointError, match='match no registered variant.*JSON config') as info:
        cvtlab.load_model(tmp_path / 'custom.safetensors')
    assert 'embed_dims=(16, 32, 48, 64)' in str(info.value) and '\n' not in str(info.value)
    # naming the variant supplies what the tensors cannot (pooling rates, design size)
    summary = cvtlab.convert_checkpoint(tmp_path / 'custom.safetensors', tmp_path / 'out', 'lg_nano')
    assert summary['architecture'] == 'lg_nano'
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(cvtlab.load_model(tmp_path / 'out').eval()(x), model(x))
    with pytest.raises(cvtlab.CheckpointError, match='LG-Transformer, which cvt_13 is not'):
        cvtlab.convert_checkpoint(tmp_path / 'custom.safetensors', tmp_path / 'o2', 'cvt_13')
    assert not (tmp_path / 'o2').exists()


@pytest.mark.parametrize('arch, message', [('resnet18', 'unknown checkpoint layout'),
                                           ('convnext_atto', 'not a cvtlab model.*match neither CvT')])
def test_unrelated_state_dict_is_never_built_as_cvt(tmp_path, arch, message):
    """resnet18's keys are of no known layout; convnext's `stages.N.` keys pass as cvtlab's but are no family."""
    save_file(timm.create_model(arch).state_dict(), str(tmp_path / 'w.safetensors'))
    with pytest.raises(cvtlab.CheckpointError, match=message):
        cvtlab.load_model(tmp_path / 'w.safetensors')
    with pytest.raises(cvtlab.CheckpointError, match=message):
        cvtlab.convert_checkpoint(tmp_path / 'w.safetensors', tmp_path / 'out')
    assert not (tmp_path / 'out').exists()
    line = assert_one_line_error(run_cli('convert', tmp_path / 'w.safetensors', tmp_path / 'out'))
    assert 'w.safetensors' in line


def test_hf_config_is_read_only_when_it_says_cvt(official_file, tmp_path):
    model, _ = official_file
    folder = tmp_path / 'hub'
    folder.mkdir()
    save_file(model.state_dict(), str(folder / 'model.safetensors'))
    (folder / 'config.json').write_text('{"model_type": "vit", "architectures": ["ViTForImageClassification"]}')
    with pytest.raises(cvtlab.CheckpointError, match="model_type='vit'.*CvtForImageClassification only"):
        cvtlab.load_model(folder)
    (folder / 'config.json').write_text('{"architectures": ["CvtForImageClassification"], "num_heads": [1, 2, 3]}')
    assert torch.equal(cvtlab.load_model(folder).head.weight, model.head.weight)
    save_file(timm.create_model('lg_nano').state_dict(), str(folder / 'model.safetensors'))
    with pytest.raises(cvtlab.CheckpointError, match='describes a CvT, the weights are LG-Transformer'):
        cvtlab.load_model(folder)
