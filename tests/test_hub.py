"""`cvtlab push` (dry run, and the upload with huggingface_hub faked), loading back by `hf-hub:` id from a filled
HF cache, and the official `microsoft/cvt-*` ids through the same cache against HF's model."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
import yaml
from PIL import Image

import cvtlab
from cvtlab.cli import main
from hub_cache import fill_hf_cache

LABELS = [str(d) for d in range(10)]
REPO = 'someone/cvt-tiny-digits'


@pytest.fixture
def run(tmp_path):
    """A training run's files as `cvtlab train` leaves them: best/ and last/ folders, summary and config."""
    torch.manual_seed(0)
    out = tmp_path / 'run'
    model = timm.create_model('cvt_tiny', num_classes=10)
    for name in ('best', 'last'):
        cvtlab.save_pretrained(model, out / name, label_names=LABELS)
    config = cvtlab.make_config(epochs=3, hflip=0.5, output=str(out)).to_dict()
    (out / 'config.yaml').write_text(yaml.safe_dump(config))
    (out / 'summary.json').write_text(json.dumps(dict(
        model='cvt_tiny', data='digits', classes=10, best_top1=97.5, best_top5=99.72, best_epoch=3, final_top1=97.22,
        epochs=3)))
    return out


def _logits(model, x):
    with torch.no_grad():
        return model.eval()(x)


def test_dry_run_then_hf_hub_id_loads_from_the_cache(run, tmp_path, hf_cache, capsys, monkeypatch):
    transformers = pytest.importorskip('transformers')
    out = tmp_path / 'upload'
    assert main(['push', str(run), REPO, '--private', '--dry-run', str(out)]) == 0
    assert f'{out} holds what would be uploaded to {REPO} (private)' in capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == ['README.md', 'config.json', 'model.safetensors']
    card = (out / 'README.md').read_text()
    for text in ('library_name: timm', 'pipeline_tag: image-classification', '`cvt_tiny`', 'arXiv 2103.15808',
                 'top-1 97.50%, top-5 99.72% (best of 3 epochs, epoch 3', 'digits',
                 '`cvtlab train --epochs 3 --hflip 0.5`', 'resize the short side to 32, centre crop 32 x 32',
                 f"timm.create_model('hf-hub:{REPO}', pretrained=True)", f"pipeline('image-classification', "
                 f"model='{REPO}')"):
        assert text in card, text
    assert json.loads((out / 'config.json').read_text())['label_names'] == LABELS

    fill_hf_cache(hf_cache, REPO, out)
    x = torch.rand(2, 3, 32, 32)
    expected = _logits(cvtlab.load_model(run), x)
    for name, load in {'timm': lambda: timm.create_model(f'hf-hub:{REPO}', pretrained=True),
                       'cvtlab': lambda: cvtlab.load_model(f'hf-hub:{REPO}')}.items():
        assert (_logits(load(), x) - expected).abs().max().item() <= 1e-6, name
    hf = transformers.AutoModelForImageClassification.from_pretrained(REPO).eval()
    with torch.no_grad():
        assert (hf(pixel_values=x).logits - expected).abs().max().item() <= 1e-6
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8))
    clf = cvtlab.Classifier.from_pretrained(f'hf-hub:{REPO}', top_k=3)
    top = clf([image])[0].top
    piped = transformers.pipeline('image-classification', model=REPO)(image, top_k=3)
    assert [t.label for t in top] == [p['label'] for p in piped]
    assert max(abs(t.prob - p['score']) for t, p in zip(top, piped)) <= 1e-5  # fused vs as built
    # eval by id: no files unless --output names a folder (there is no checkpoint folder to write beside)
    monkeypatch.chdir(tmp_path)
    assert main(['eval', '--checkpoint', f'hf-hub:{REPO}', '--data', 'digits', '--json']) == 0
    assert json.loads(capsys.readouterr().out)['count'] == 360 and not (tmp_path / 'hf-hub:someone').exists()
    # an id that is not in the cache: one clear line
    with pytest.raises(cvtlab.CheckpointError, match=r'hf-hub:someone/absent: its config.json is not in the HF '
                                                      r'cache \(HF_HUB_OFFLINE is set\)'):
        cvtlab.load_model('hf-hub:someone/absent')


def test_predict_cli_takes_hf_hub_ids_from_the_cache_the_environment_names(run, tmp_path, hf_cache):
    """A fresh process: HF_HUB_CACHE and HF_HUB_OFFLINE=1 from the environment, as a user sets them."""
    cvtlab.push_to_hub(run, REPO, dry_run=tmp_path / 'upload')
    fill_hf_cache(hf_cache, REPO, tmp_path / 'upload')
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8))
    image.save(tmp_path / 'x.png')
    result = subprocess.run([sys.executable, '-m', 'cvtlab', 'predict', str(tmp_path / 'x.png'), '--checkpoint',
                             f'hf-hub:{REPO}', '--json', '--top-k', '3'], capture_output=True, text=True,
                            timeout=300, env={**os.environ})
    assert result.returncode == 0, result.stderr
    expected = cvtlab.Classifier.from_pretrained(run, top_k=3)([image])[0]
    assert [t['label'] for t in json.loads(result.stdout)[0]['top']] == [t.label for t in expected.top]


class FakeHfApi:
    """huggingface_hub.HfApi as far as push uses it: records what would go over the network."""
    calls = []

    def __init__(self, **kwargs):
        self.calls.append(('init', kwargs))

    def create_repo(self, repo_id, private=None, exist_ok=False):
        from huggingface_hub import RepoUrl
        self.calls.append(('create_repo', dict(repo_id=repo_id, private=private, exist_ok=exist_ok)))
        return RepoUrl(f'https://huggingface.co/{repo_id}')

    def upload_folder(self, repo_id, folder_path, commit_message):
        from huggingface_hub import CommitInfo
        files = {p.name: p.read_bytes() for p in sorted(Path(folder_path).iterdir())}
        self.calls.append(('upload_folder', dict(repo_id=repo_id, files=files, commit_message=commit_message)))
        return CommitInfo(commit_url=f'https://huggingface.co/{repo_id}/commit/0123abc', commit_message=commit_message,
                          commit_description='', oid='0123abc')


def test_push_uploads_exactly_the_dry_run_folder(run, tmp_path, hf_cache, monkeypatch, capsys):
    import huggingface_hub
    real_api = huggingface_hub.HfApi
    FakeHfApi.calls = []
    monkeypatch.setattr(huggingface_hub, 'HfApi', FakeHfApi)
    assert main(['push', str(run / 'best'), REPO, '--private']) == 0  # the run's best/ folder: the card finds the run
    assert f'-> https://huggingface.co/{REPO} (README.md, config.json, model.safetensors' in capsys.readouterr().out
    (_, init), (_, create), (_, upload) = FakeHfApi.calls
    assert init['library_name'] == 'cvtlab' and create == dict(repo_id=REPO, private=True, exist_ok=True)
    push_to_hub_dry = cvtlab.push_to_hub(run / 'best', REPO, dry_run=tmp_path / 'dry')
    assert push_to_hub_dry['files'] == ['README.md', 'config.json', 'model.safetensors']
    assert upload['files'] == {name: (tmp_path / 'dry' / name).read_bytes() for name in push_to_hub_dry['files']}
    assert b'97.50%' in upload['files']['README.md']

    # the real client, offline: huggingface_hub refuses to connect; one line, no traceback
    monkeypatch.setattr(huggingface_hub, 'HfApi', real_api)
    assert main(['push', str(run), REPO]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f'cvtlab: error: push to {REPO} failed: OfflineModeIsEnabled: Cannot reach') and \
        '\n' not in err
    assert main(['push', str(run), 'not/a/repo', '--dry-run', str(tmp_path / 'x')]) == 2
    assert 'is not a Hub repository id' in capsys.readouterr().err and not (tmp_path / 'x').exists()
    (tmp_path / 'full').mkdir()
    (tmp_path / 'full' / 'other.txt').write_text('mine')
    assert main(['push', str(run), REPO, '--dry-run', str(tmp_path / 'full')]) == 2
    assert 'not an empty folder' in capsys.readouterr().err


def test_model_card_without_a_run_and_the_command_round_trip(tmp_path):
    """A plain folder gets a card that says no run was recorded; the card's command rebuilds the run's config."""
    from cvtlab.cli import build_parser
    from cvtlab.config import command_line, config_from_args
    cvtlab.save_pretrained(timm.create_model('lg_nano', num_classes=3), tmp_path / 'm', label_names=['a', 'b', 'c'])
    card = cvtlab.push_to_hub(tmp_path / 'm', REPO, dry_run=tmp_path / 'up')
    text = (tmp_path / 'up' / 'README.md').read_text()
    assert 'not recorded (pushed from a model folder' in text and 'arXiv 2107.04735' in text and '`lg_nano`' in text
    assert card['uploaded'] is False
    config = cvtlab.make_config('finetune', data='/data/my images', epochs=3, amp='bf16', ema=True, output='x')
    words = command_line(config.to_dict()).split(' ', 2)[2]
    import shlex
    rebuilt = config_from_args(build_parser().parse_args(['train', *shlex.split(words)]))
    ignored = {'output'}
    assert {k: v for k, v in rebuilt.to_dict().items() if k not in ignored} == \
        {k: v for k, v in config.to_dict().items() if k not in ignored}


@pytest.mark.parametrize('weights', ['model.safetensors', 'pytorch_model.bin'])
def test_official_ids_load_through_the_cache_like_hf(hf_cache, tmp_path, weights):
    """microsoft/cvt-13 as its Hub repository holds it (HF transformers layout and config), converted on load."""
    from hf_reference import SMALL, hf_model
    hf = hf_model(**SMALL)
    hf.save_pretrained(tmp_path / 'hf')
    if weights == 'pytorch_model.bin':  # the older repositories hold pickles (read with weights_only=True)
        torch.save(hf.state_dict(), tmp_path / 'hf' / weights)
        (tmp_path / 'hf' / 'model.safetensors').unlink()
    fill_hf_cache(hf_cache, 'microsoft/cvt-13', tmp_path / 'hf')
    image = Image.fromarray(np.random.default_rng(1).integers(0, 256, (250, 300, 3), dtype=np.uint8))
    loaded = cvtlab.load_model('hf-hub:microsoft/cvt-13')
    cfg = timm.data.resolve_data_config({}, model=loaded)  # cvt_13.ms_in1k's: resize 256, crop 224
    assert cfg['input_size'] == (3, 224, 224) and cfg['crop_pct'] == 0.875
    x = timm.data.create_transform(**cfg)(image)[None]
    with torch.no_grad():
        expected = hf(pixel_values=x).logits
    models = {'cvtlab hf-hub:': loaded,
              'timm cvt_13.ms_in1k': timm.create_model('cvt_13.ms_in1k', pretrained=True, **SMALL),
              'Classifier (fused)': cvtlab.Classifier.from_pretrained('hf-hub:microsoft/cvt-13').model}
    for name, model in models.items():
        assert (_logits(model, x) - expected).abs().max().item() <= 1e-4, name
