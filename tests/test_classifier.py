"""`cvtlab.Classifier`: every kind of item, bad items one by one, batches, test-time flips, and the
`cvtlab predict` / `eval` paths built on it."""
import csv
import json
import re

import numpy as np
import pytest
import timm
import torch
from PIL import Image

import cvtlab
from cvtlab.cli import main

LABELS = ['ant', 'bee', 'cat', 'dog']


@pytest.fixture(scope='module')
def folder(tmp_path_factory):
    """A cvt_tiny model folder (32 px input, crop 1.0: an image of 32 x 32 goes in unchanged) with 4 labels."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp('model') / 'tiny'
    return cvtlab.save_pretrained(timm.create_model('cvt_tiny', num_classes=4), path, label_names=LABELS)


def _pixels(h=32, w=32, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _probs(prediction):
    return {t.label: t.prob for t in prediction.top}


def test_every_kind_of_item_gives_the_files_prediction(folder, tmp_path):
    pixels = _pixels(40, 52)
    Image.fromarray(pixels).save(tmp_path / 'img.png')
    rgba = np.concatenate([pixels, np.full((40, 52, 1), 255, np.uint8)], axis=2)
    items = [str(tmp_path / 'img.png'), tmp_path / 'img.png', Image.fromarray(pixels), Image.fromarray(rgba),
             pixels, rgba, torch.from_numpy(pixels).permute(2, 0, 1) / 255.0,
             (torch.from_numpy(pixels).permute(2, 0, 1) / 255.0).double()]
    clf = cvtlab.Classifier.from_pretrained(folder, top_k=4)
    got = clf(items)
    assert [p.index for p in got] == list(range(len(items))) and all(p.ok for p in got)
    assert got[0].source == str(tmp_path / 'img.png') and got[2].source == 'PIL.Image RGB 52x40'
    assert got[4].source == 'numpy uint8 (40, 52, 3)' and got[6].source == 'tensor float32 (3, 40, 52)'
    reference = _probs(got[0])
    assert sorted(reference) == LABELS and abs(sum(reference.values()) - 1) < 1e-5
    for p in got[1:]:
        assert max(abs(_probs(p)[k] - reference[k]) for k in LABELS) <= 1e-6, p.source
    # grey and palette images are converted like files of those modes
    grey = Image.fromarray(pixels).convert('L')
    grey.save(tmp_path / 'grey.png')
    from_file, from_memory, from_array = clf([tmp_path / 'grey.png', grey, np.asarray(grey)])
    assert _probs(from_memory) == pytest.approx(_probs(from_file), abs=1e-6) == _probs(from_array)


def test_bad_items_are_reported_one_by_one_and_the_rest_predicted(folder, tmp_path):
    (tmp_path / 'notes.png').write_text('not an image')
    nan = torch.rand(3, 20, 20)
    nan[0, 3, 4] = float('nan')
    good = Image.fromarray(_pixels())
    items = [None, Image.new('RGB', (0, 0)), _pixels().astype(np.float64), np.zeros(5, np.uint8), nan,
             (torch.rand(3, 8, 8) * 255).to(torch.uint8), torch.randn(3, 8, 8) * 2, 42,
             str(tmp_path / 'notes.png'), torch.rand(4, 8, 8), good]
    reasons = ['None is not an image', r'empty image \(0x0 pixels\)', 'numpy array of float64: expected uint8',
               r'numpy array of shape \(5,\)', 'NaN or infinite', 'tensor of torch.uint8: expected float pixels',
               r'outside \[0, 1\].*not normalised', 'unsupported item of type int', 'notes.png: not a readable image',
               r'tensor of shape \(4, 8, 8\)']
    got = cvtlab.Classifier.from_pretrained(folder)(items)
    assert len(got) == len(items)
    for p, reason in zip(got, reasons):
        assert not p.ok and not p.top, p
        assert re.search(reason, p.error), (reason, p.error)
        assert '\n' not in p.error
    assert got[0].source == 'None' and got[7].source == 'int'
    assert got[-1].ok and len(got[-1].top) == 4 and got[-1].top[0].label in LABELS
    assert got[-1].to_dict()['top'][0].keys() == {'label', 'index', 'prob'}
    with pytest.raises(cvtlab.ConfigError, match='list of items'):
        cvtlab.Classifier.from_pretrained(folder)(good)


def test_batches_of_the_chosen_size_give_the_same_predictions(folder):
    items = [_pixels(seed=i) for i in range(5)]
    small = cvtlab.Classifier.from_pretrained(folder, batch_size=2)
    sizes = []
    small.model.register_forward_hook(lambda module, args, out: sizes.append(args[0].shape[0]))
    got = small(items + [None])
    assert sizes == [2, 2, 1] and got[-1].error == 'None is not an image'  # the bad item left batch 3 with one
    whole = cvtlab.Classifier.from_pretrained(folder, batch_size=32)(items)
    for a, b in zip(got, whole):
        assert [t.label for t in a.top] == [t.label for t in b.top]
        assert max(abs(x.prob - y.prob) for x, y in zip(a.top, b.top)) <= 1e-6


def test_flip_tta_is_the_mean_of_the_image_and_its_mirror(folder):
    image = Image.fromarray(_pixels())  # 32 x 32: the transform changes no pixel, so the mirror is exact
    plain = cvtlab.Classifier.from_pretrained(folder)
    once, mirrored = plain([image, image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)])
    tta = cvtlab.Classifier.from_pretrained(folder, tta='flip')([image])[0]
    expected = {k: (_probs(once)[k] + _probs(mirrored)[k]) / 2 for k in LABELS}
    assert _probs(tta) == pytest.approx(expected, abs=1e-6)
    assert max(abs(_probs(once)[k] - expected[k]) for k in LABELS) > 1e-4  # the flip changes something


def test_accessors_and_sources(folder, tmp_path):
    clf = cvtlab.Classifier.from_pretrained(folder, batch_size=7, top_k=2)
    assert (clf.model_name, clf.label_names, clf.num_classes) == ('cvt_tiny', LABELS, 4)
    assert (clf.backend, clf.dtype, clf.batch_size, clf.top_k, clf.tta) == ('torch', 'fp32', 7, 2, None)
    assert tuple(clf.data_config['input_size']) == (3, 32, 32) and clf.data_config['crop_pct'] == 1.0
    assert len(clf([_pixels()])[0].top) == 2 and len(clf([_pixels()], top_k=9)[0].top) == 4
    # a model the caller holds is copied (it can still train); a model name with random weights
    model = timm.create_model('cvt_tiny', num_classes=4)
    cvtlab.Classifier(model, label_names=LABELS)
    assert model.training and type(model).__name__ == 'CvT'
    assert cvtlab.Classifier.from_pretrained('cvt_tiny', pretrained=False).num_classes == 1000
    with pytest.raises(cvtlab.ConfigError, match='cvt_tiny has no pretrained weights'):
        cvtlab.Classifier.from_pretrained('cvt_tiny')
    with pytest.raises(cvtlab.CheckpointError, match='no such checkpoint'):
        cvtlab.Classifier.from_pretrained(tmp_path / 'missing')
    with pytest.raises(cvtlab.ConfigError, match='3 label names for 4 classes'):
        cvtlab.Classifier(model, label_names=LABELS[:3])


def test_eval_and_predict_run_through_the_classifier(folder, tmp_path, monkeypatch):
    built = []
    real_init = cvtlab.Classifier.__init__

    def init(self, *args, **kwargs):
        built.append(kwargs)
        real_init(self, *args, **kwargs)
    monkeypatch.setattr(cvtlab.Classifier, '__init__', init)
    Image.fromarray(_pixels()).save(tmp_path / 'a.png')
    results, errors = cvtlab.predict([str(tmp_path / 'a.png')], checkpoint=str(folder), top_k=3, tta='flip')
    assert len(results) == 1 and not errors and len(built) == 1 and built[0]['tta'] == 'flip'
    saved = cvtlab.save_pretrained(timm.create_model('cvt_tiny', num_classes=10), tmp_path / 'ten',
                                   label_names=[str(d) for d in range(10)])
    report = cvtlab.evaluate(str(saved), 'digits', batch_size=128)
    assert len(built) == 2 and report['count'] == 360 and built[1]['batch_size'] == 128


def test_predict_cli_writes_csv_and_json_with_the_errors(folder, tmp_path, capsys):
    images = tmp_path / 'images'
    images.mkdir()
    for i in range(3):
        Image.fromarray(_pixels(seed=i)).save(images / f'{i}.png')
    (images / 'broken.png').write_bytes(b'\x89PNG broken')
    args = ['predict', str(images), '--checkpoint', str(folder), '--top-k', '2', '--tta', 'flip', '--batch-size', '2']
    assert main([*args, '--out', str(tmp_path / 'p.csv')]) == 2  # one unreadable image
    assert f'-> {tmp_path / "p.csv"}' in capsys.readouterr().err
    rows = list(csv.DictReader(open(tmp_path / 'p.csv')))
    assert list(rows[0]) == ['filename', 'index_0', 'index_1', 'label_0', 'label_1', 'prob_0', 'prob_1', 'error']
    assert [r['filename'].rsplit('/', 1)[1] for r in rows] == ['0.png', '1.png', '2.png', 'broken.png']
    assert rows[0]['label_0'] in LABELS and 'not a readable image' in rows[3]['error'] and rows[3]['label_0'] == ''
    assert main([*args, '--out', str(tmp_path / 'p.json')]) == 2
    records = json.loads((tmp_path / 'p.json').read_text())
    assert [r['index'] for r in records] == [0, 1, 2, 3] and records[3]['error'] and not records[3]['top']
    assert records[0]['top'][0]['label'] == rows[0]['label_0']
    assert abs(records[0]['top'][0]['prob'] - float(rows[0]['prob_0'])) < 1e-5
    assert main([*args, '--out', str(tmp_path / 'p.txt')]) == 2
    assert 'p.txt: predictions are written as .csv or .json' in capsys.readouterr().err
    assert not (tmp_path / 'p.txt').exists()
