"""Adversarial and fault suite: hostile checkpoints, hostile images, fuzzed CLI flags, kill -9, soak."""
import contextlib
import io
import os
import pickle
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from safetensors.torch import save_file

import cvtlab
from cvtlab.checkpoint import read_state_dict
from cvtlab.cli import main as cli_main
from cvtlab.data import ImageDataset, list_images, load_image
from cvtlab.errors import CheckpointError, DataError

TINY = dict(embed_dims=(16, 32, 48), depths=(1, 1, 2), num_heads=(1, 2, 3))


def tiny():
    return timm.create_model('cvt_13', **TINY).eval()


# --- hostile checkpoints ------------------------------------------------------------------------------
class _Exec:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f'touch {self.marker}',))


class _EvalPayload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (eval, (f"open({self.marker!r}, 'w').write('pwned')",))


@pytest.mark.parametrize('payload', [_Exec, _EvalPayload])
@pytest.mark.parametrize('where', ['top', 'nested', 'legacy_format'])
def test_pickle_payload_is_refused_and_never_runs(tmp_path, payload, where):
    marker = tmp_path / 'PWNED'
    obj = payload(str(marker))
    data = {'top': {'stages.0.x': obj}, 'nested': {'state_dict': {'stages.0.x': torch.zeros(1), 'y': [obj]}},
            'legacy_format': {'stages.0.x': obj}}[where]
    path = tmp_path / 'evil.pth'
    if where == 'legacy_format':
        with open(path, 'wb') as f:  # a raw pickle stream, not the zip container
            pickle.dump(data, f)
    else:
        torch.save(data, path)
    with pytest.raises(CheckpointError) as info:
        cvtlab.load_checkpoint(tiny(), path)
    assert '\n' not in str(info.value)
    assert not marker.exists()
    # through timm's route too (timm's own weights_only loader refuses it, before our filter)
    with pytest.raises((CheckpointError, RuntimeError), match='weights_only|refused'):
        timm.create_model('cvt_13', pretrained=True, pretrained_cfg_overlay=dict(file=str(path)), **TINY)
    assert not marker.exists()


@pytest.mark.parametrize('cut', [0, 1, 100, 0.5, -1])
@pytest.mark.parametrize('fmt', ['pth', 'safetensors'])
def test_truncated_and_zero_byte_checkpoints(tmp_path, cut, fmt):
    model = tiny()
    path = tmp_path / f'w.{fmt}'
    torch.save(model.state_dict(), path) if fmt == 'pth' else save_file(model.state_dict(), str(path))
    data = path.read_bytes()
    n = int(len(data) * cut) if isinstance(cut, float) else (len(data) + cut if cut < 0 else cut)
    path.write_bytes(data[:n])
    with pytest.raises(CheckpointError) as info:
        cvtlab.load_checkpoint(tiny(), path)
    assert '\n' not in str(info.value)


def test_garbage_and_renamed_files(tmp_path):
    for name, data in [('random.pth', os.urandom(4096)), ('random.safetensors', os.urandom(4096)),
                       ('text.bin', b'hello world\n' * 10), ('image.pth', b'\x89PNG\r\n\x1a\n' + os.urandom(64))]:
        (tmp_path / name).write_bytes(data)
        with pytest.raises(CheckpointError):
            read_state_dict(tmp_path / name)


@pytest.mark.parametrize('dtype', [torch.int64, torch.int8, torch.bool])
def test_safetensors_with_wrong_dtype(tmp_path, dtype):
    sd = tiny().state_dict()
    sd['stages.0.patch_embed.proj.weight'] = sd['stages.0.patch_embed.proj.weight'].to(dtype)
    save_file(sd, str(tmp_path / 'w.safetensors'))
    with pytest.raises(CheckpointError, match='dtype mismatches: stages.0.patch_embed.proj.weight'):
        cvtlab.load_checkpoint(tiny(), tmp_path / 'w.safetensors')


def test_half_precision_weights_are_a_cast_not_an_error(tmp_path):
    model = tiny()
    save_file({k: v.half() if v.is_floating_point() else v for k, v in model.state_dict().items()},
              str(tmp_path / 'w.safetensors'))
    loaded = cvtlab.load_checkpoint(tiny(), tmp_path / 'w.safetensors')
    assert loaded.head.weight.dtype == torch.float32


def test_safetensors_with_wrong_shapes_and_other_architecture(tmp_path):
    sd = tiny().state_dict()
    sd['stages.1.blocks.0.mlp.fc1.weight'] = torch.zeros(7, 7)
    save_file(sd, str(tmp_path / 'shape.safetensors'))
    with pytest.raises(CheckpointError, match='shape mismatches'):
        cvtlab.load_checkpoint(tiny(), tmp_path / 'shape.safetensors')
    lg = timm.create_model('lg_nano')
    save_file(lg.state_dict(), str(tmp_path / 'lg.safetensors'))
    with pytest.raises(CheckpointError, match='does not fit CvT'):
        cvtlab.load_checkpoint(tiny(), tmp_path / 'lg.safetensors')
    with pytest.raises(CheckpointError, match='does not fit LGTransformer'):
        cvtlab.load_checkpoint(timm.create_model('lg_nano'), _official_tiny(tmp_path))


def _official_tiny(tmp_path):
    path = tmp_path / 'official.pth'
    torch.save(cvtlab.convert.cvtlab_to_official(tiny().state_dict()), path)
    return path


# --- hostile images -------------------------------------------------------------------------------------
def test_decompression_bomb_is_a_clear_error(tmp_path, monkeypatch):
    path = tmp_path / 'bomb.png'
    Image.new('L', (4000, 4000)).save(path, optimize=True)  # compresses to a few kB
    assert path.stat().st_size < 200_000
    monkeypatch.setattr(Image, 'MAX_IMAGE_PIXELS', 1_000_000)  # 16 MP > 2 x limit: PIL refuses it
    with pytest.raises(DataError, match='DecompressionBomb'):
        load_image(path)


def _png_bytes(img):
    buf = io.BytesIO()
    img.save(buf, format='PNG')
    return buf.getvalue()


def test_broken_and_odd_images(tmp_path):
    good = _png_bytes(Image.new('RGB', (20, 20), 'red'))
    bad = {'zero.png': b'', 'truncated.png': good[: len(good) // 2], 'text.jpg': b'just text',
           'random.webp': os.urandom(500), 'header_only.gif': b'GIF89a'}
    for name, data in bad.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(DataError, match='not a readable image'):
            load_image(tmp_path / name)
    frames = [Image.new('P', (16, 16), i * 40) for i in range(3)]
    frames[0].save(tmp_path / 'anim.gif', save_all=True, append_images=frames[1:], duration=50, loop=0)
    odd = {'wrong_ext.jpg': _png_bytes(Image.new('RGB', (9, 9), 'blue')), 'one.png': _png_bytes(Image.new('RGB', (1, 1)))}
    for name, data in odd.items():
        (tmp_path / name).write_bytes(data)
    Image.new('CMYK', (8, 8), (0, 255, 0, 0)).save(tmp_path / 'cmyk.jpg')
    Image.fromarray(np.full((8, 8), 65535, np.uint16)).save(tmp_path / 'white16.png')
    for name in ('anim.gif', 'wrong_ext.jpg', 'one.png', 'cmyk.jpg', 'white16.png'):
        img = load_image(tmp_path / name)
        assert img.mode == 'RGB'
    assert load_image(tmp_path / 'white16.png').getpixel((0, 0)) == (255, 255, 255)  # 16-bit scaled, not clipped
    r, g, b = load_image(tmp_path / 'cmyk.jpg').getpixel((0, 0))  # pure magenta ink
    assert r > 192 and g < 64 and b > 192
    # a 1x1 image goes through the model's preprocessing
    from timm.data import create_transform
    x = create_transform(**cvtlab.data.resolve_data_config(tiny()), is_training=False)(load_image(tmp_path / 'one.png'))
    assert x.shape == (3, 224, 224)


def test_symlink_loops_in_data_folders(tmp_path):
    root = tmp_path / 'data'
    (root / 'cat').mkdir(parents=True)
    Image.new('RGB', (8, 8)).save(root / 'cat' / 'a.png')
    os.symlink(root, root / 'cat' / 'loop')  # cat/loop -> data -> cat/loop ...
    os.symlink(root / 'cat', root / 'cat' / 'self')
    files = list_images(root)
    assert [f.name for f in files] == ['a.png']


def test_dataset_skips_files_that_break_after_scanning(tmp_path):
    paths = []
    for i in range(3):
        Image.new('RGB', (8, 8), (i * 50, 0, 0)).save(tmp_path / f'{i}.png')
        paths.append(tmp_path / f'{i}.png')
    (tmp_path / '1.png').write_bytes(b'')  # deleted / emptied between scan and load
    ds = ImageDataset([(p, 0) for p in paths])
    img, label = ds[1]
    assert img.getpixel((0, 0)) == (100, 0, 0)  # the next readable sample
    with pytest.raises(DataError):
        ImageDataset([(p, 0) for p in paths], strict=True)[1]


# --- fuzzed command line --------------------------------------------------------------------------------
_FLAGS = ['--epochs', '--batch-size', '--lr', '--base-lr', '--img-size', '--val-split', '--amp', '--device',
          '--opt', '--sched', '--scale', '--model', '--recipe', '--num-workers', '--grad-accum', '--mixup',
          '--drop-path-rate', '--warmup-epochs', '--log-interval', '--top-k', '--opset', '--format']
_VALUES = st.one_of(st.integers(-10**6, 10**6).map(str), st.floats(allow_nan=True).map(str),
                    st.sampled_from(['', 'nan', 'inf', '-1', '0', 'abc', 'cvt_13', 'fp16', 'cuda', 'sgd', '1e309',
                                     '../../etc/passwd', '\x00', '--', 'digits', '💥']),
                    st.text(max_size=12))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(command=st.sampled_from(['train', 'eval', 'predict', 'export', 'convert', 'explain', 'models', 'recipes']),
       pairs=st.lists(st.tuples(st.sampled_from(_FLAGS), _VALUES), max_size=4))
def test_fuzzed_cli_flags_fail_cleanly(tmp_path_factory, command, pairs):
    """Every failure is a clear message with exit code 2, never a traceback. Training never starts:
    its data always points at a missing folder, so only argument and config handling is exercised."""
    cwd = tmp_path_factory.mktemp('fuzz')
    argv = [command]
    for flag, value in pairs:
        argv += [flag, value]
    if command == 'train':
        argv += ['--data', str(cwd / 'missing'), '--output', str(cwd / 'out')]
    elif command in ('predict', 'explain'):
        argv.insert(1, str(cwd / 'missing.png'))
    elif command in ('export', 'convert'):
        argv[1:1] = [str(cwd / 'missing.pth'), str(cwd / 'out.onnx')]
    elif command == 'models':
        argv += ['--json', 'cvt_tiny']  # one small model: counting all of them takes ~20 s
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            code = cli_main(argv)
        except SystemExit as e:  # argparse
            code = e.code
    assert code in (0, 2), (argv, err.getvalue())
    if code == 2:
        text = err.getvalue()
        assert 'Traceback' not in text and text.strip(), argv
        assert 'cvtlab' in text and 'error:' in text, (argv, text)  # argparse's or ours, one message


# --- kill -9 at random moments ------------------------------------------------------------------------------
@pytest.mark.parametrize('trial', range(3))
def test_kill_9_at_random_moments(tmp_path, trial):
    out = tmp_path / 'run'
    args = ['--output', str(out), '--epochs', '2', '--num-workers', '0', '--quiet', '--batch-size', '128']
    proc = subprocess.Popen([sys.executable, '-m', 'cvtlab', 'train', *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not (out / 'train_state.pt').exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.02)
    time.sleep(random.Random(trial).uniform(0.0, 2.0))  # during training, evaluation or a checkpoint write
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    if proc.returncode == 0:  # finished before the kill: nothing to recover
        return
    state = torch.load(out / 'train_state.pt', weights_only=True)
    assert state['run']['epoch'] >= 1
    cvtlab.load_model(out / 'last')
    resumed = subprocess.run([sys.executable, '-m', 'cvtlab', 'train', '--output', str(out), '--resume'],
                             capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    assert (out / 'summary.json').is_file()


# --- soak --------------------------------------------------------------------------------------------------
def _rss_mb():
    with open('/proc/self/statm') as f:
        return int(f.read().split()[1]) * os.sysconf('SC_PAGE_SIZE') / 2 ** 20


@pytest.mark.skipif(not Path('/proc/self/statm').exists(), reason='needs /proc (Linux)')
def test_predict_soak_bounded_memory(tmp_path):
    model = timm.create_model('cvt_tiny', num_classes=5)
    cvtlab.save_pretrained(model, tmp_path / 'm', label_names=list('abcde'))
    rng = np.random.default_rng(0)
    folder = tmp_path / 'imgs'
    folder.mkdir()
    for i in range(300):
        Image.fromarray(rng.integers(0, 255, (int(rng.integers(8, 64)), 40, 3), dtype=np.uint8)).save(folder / f'{i}.png')
    rounds = []
    for _ in range(4):
        results, errors = cvtlab.predict([str(folder)], checkpoint=str(tmp_path / 'm'))
        assert len(results) == 300 and not errors
        rounds.append(_rss_mb())
    assert rounds[-1] - rounds[1] < 30, rounds  # 900 more predictions after warm-up: no leak
