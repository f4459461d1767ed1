"""The model folder (config.json in timm's format + model.safetensors): written atomically, read equally by
cvtlab, timm (`local-dir:`) and HF transformers (`AutoModelForImageClassification`, `pipeline()`)."""
import json

import numpy as np
import pytest
import timm
import torch
from PIL import Image

import cvtlab
from contract import random_bn

SMALL_CVT = dict(embed_dims=(16, 32, 48), depths=(1, 1, 2), num_heads=(1, 2, 3))
LABELS = ['cat', 'dog', 'eel']
# a custom CvT shape (its arguments must travel in config.json) and LG, whose relative position index is a
# buffer outside the weights that HF's TimmWrapper must rebuild
MODELS = {'cvt': ('cvt_13', dict(**SMALL_CVT, num_classes=3), 64), 'lg': ('lg_nano', dict(num_classes=3), 32)}


def _model(kind):
    name, kwargs, size = MODELS[kind]
    return random_bn(timm.create_model(name, **kwargs)).eval(), size


def _logits(model, x):
    with torch.no_grad():
        return model.eval()(x)


def _photo(size, seed=0):
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (size + 5, size + 9, 3), dtype=np.uint8))


@pytest.mark.parametrize('kind', sorted(MODELS))
def test_folder_loads_with_equal_logits_in_cvtlab_timm_and_transformers(kind, tmp_path):
    transformers = pytest.importorskip('transformers')
    model, size = _model(kind)
    folder = cvtlab.save_pretrained(model, tmp_path / 'mine', label_names=LABELS)
    assert sorted(p.name for p in folder.iterdir()) == ['config.json', 'model.safetensors']
    x = torch.rand(2, 3, size, size + 16)
    expected = _logits(model, x)
    loaders = {
        'cvtlab.load_model': lambda: cvtlab.load_model(folder),
        'timm local-dir:': lambda: timm.create_model(f'local-dir:{folder}', pretrained=True),
        'transformers Auto': lambda: transformers.AutoModelForImageClassification.from_pretrained(folder),
    }
    for name, load in loaders.items():
        loaded = load().eval()
        got = loaded(pixel_values=x).logits if name.startswith('transformers') else _logits(loaded, x)
        assert (got - expected).abs().max().item() <= 1e-6, name
    assert timm.create_model(f'local-dir:{folder}', pretrained=True).pretrained_cfg['label_names'] == LABELS
    # the pipeline: timm's eval transform from config.json, label names as labels
    classify = transformers.pipeline('image-classification', model=str(folder))
    photo = _photo(size)
    data_config = timm.data.resolve_data_config({}, model=model)
    probs = _logits(model, timm.data.create_transform(**data_config)(photo)[None]).softmax(-1)[0]
    got = classify(photo, top_k=3)
    assert [g['label'] for g in got] == [LABELS[i] for i in probs.argsort(descending=True)]
    assert max(abs(g['score'] - probs[LABELS.index(g['label'])].item()) for g in got) <= 1e-6


def test_config_is_timm_format_without_num_classes_in_model_args(tmp_path):
    model, _ = _model('cvt')
    cvtlab.save_pretrained(model, tmp_path / 'm', label_names=LABELS, data_config=dict(input_size=(3, 96, 96),
                                                                                        crop_pct=1.0))
    config = json.loads((tmp_path / 'm' / 'config.json').read_text())
    assert config['architecture'] == 'cvt_13' and config['num_classes'] == 3 and config['num_features'] == 48
    assert config['global_pool'] == 'token' and config['label_names'] == LABELS
    # HF's TimmWrapper passes num_classes itself: a second one in model_args is a TypeError
    assert 'num_classes' not in config['model_args'] and config['model_args']['depths'] == [1, 1, 2]
    cfg = config['pretrained_cfg']
    assert cfg['input_size'] == [3, 96, 96] and cfg['crop_pct'] == 1.0 and cfg['num_classes'] == 3
    assert cfg['custom_load'] is False and 'hf_hub_id' not in cfg and 'notes' not in cfg  # not the source's
    assert tuple(timm.create_model(f'local-dir:{tmp_path / "m"}').pretrained_cfg['input_size']) == (3, 96, 96)


def test_write_is_atomic_and_refuses_an_inference_copy(tmp_path, monkeypatch):
    model, _ = _model('cvt')
    folder = cvtlab.save_pretrained(model, tmp_path / 'm', label_names=LABELS)
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    other = timm.create_model('cvt_13', **SMALL_CVT, num_classes=3)

    def disk_full(*args, **kwargs):
        raise OSError('No space left on device')

    monkeypatch.setattr(cvtlab.folder, 'save_file', disk_full)
    with pytest.raises(OSError):
        cvtlab.save_pretrained(other, folder)
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before  # the old model, whole
    assert [p.name for p in tmp_path.iterdir()] == ['m']  # no staging folder left behind
    monkeypatch.undo()
    cvtlab.save_pretrained(other, folder, label_names=LABELS)  # an existing folder: each file replaced
    assert torch.equal(cvtlab.load_model(folder).head.weight, other.head.weight)
    with pytest.raises(cvtlab.ConfigError, match='not its inference copy'):
        cvtlab.save_pretrained(cvtlab.fuse_for_inference(model), tmp_path / 'fused')
    with pytest.raises(cvtlab.ConfigError, match='2 label names for a model of 3 classes'):
        cvtlab.save_pretrained(model, tmp_path / 'bad', label_names=['a', 'b'])
    assert not (tmp_path / 'fused').exists() and not (tmp_path / 'bad').exists()


def test_older_files_and_runs_still_load(tmp_path):
    """NAME.safetensors + NAME.json (cvtlab's layout before the folder), and runs holding best.safetensors."""
    model, size = _model('cvt')
    x = torch.rand(1, 3, size, size)
    with pytest.warns(DeprecationWarning, match='save_pretrained'):
        cvtlab.save_model(model, tmp_path / 'old.safetensors', 'cvt_13', dict(SMALL_CVT, num_classes=3), LABELS)
    run = tmp_path / 'run'
    run.mkdir()
    for suffix in ('.safetensors', '.json'):
        (run / f'best{suffix}').write_bytes((tmp_path / f'old{suffix}').read_bytes())
    for source in (tmp_path / 'old.safetensors', run):
        loaded = cvtlab.load_model(source).eval()
        assert torch.equal(_logits(loaded, x), _logits(model, x)), source
        assert list(loaded.pretrained_cfg['label_names']) == LABELS
    summary = cvtlab.convert_checkpoint(run, tmp_path / 'new')
    assert summary['folder'] == str(tmp_path / 'new')
    assert torch.equal(_logits(cvtlab.load_model(tmp_path / 'new').eval(), x), _logits(model, x))
    with pytest.raises(cvtlab.ConfigError, match='writes a model folder'):
        cvtlab.convert_checkpoint(run, tmp_path / 'new.safetensors')


def test_a_save_for_hf_folder_loads_and_convert_makes_it_readable_by_transformers(tmp_path):
    """timm's own save_for_hf repeats num_classes in model_args (TimmWrapper's KeyError); cvtlab reads such a
    folder, and `convert` rewrites it in the format transformers reads."""
    transformers = pytest.importorskip('transformers')
    model, size = _model('cvt')
    timm.models.save_for_hf(model, tmp_path / 'timm', safe_serialization=True)
    x = torch.rand(1, 3, size, size)
    assert torch.equal(_logits(cvtlab.load_model(tmp_path / 'timm'), x), _logits(model, x))
    cvtlab.convert_checkpoint(tmp_path / 'timm', tmp_path / 'ours')
    assert 'num_classes' not in json.loads((tmp_path / 'ours' / 'config.json').read_text())['model_args']
    hf = transformers.AutoModelForImageClassification.from_pretrained(tmp_path / 'ours').eval()
    with torch.no_grad():
        assert torch.equal(hf(pixel_values=x).logits, _logits(model, x))
