"""Defaults that scale with the run and the data: the capped warm-up, the input size, any timm model through
`cvtlab train`, and the baselines benchmark's offline data and plain CNN."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import cvtlab
from cvtlab.config import make_config
from cvtlab.data import choose_img_size
from cvtlab.schedule import derive_schedule

sys.path.insert(0, str(Path(__file__).parents[1] / 'benchmarks'))
from test_train import make_folder  # noqa: E402


def test_warmup_is_capped_at_a_fraction_of_the_run():
    short = derive_schedule(make_config(epochs=3, warmup_epochs=3, max_warmup_frac=0.1), 64, 100)
    assert short.warmup_epochs == pytest.approx(0.3) and short.warmup_updates == 30 and short.total_updates == 300
    long = derive_schedule(make_config(epochs=300, warmup_epochs=5), 2048, 10)
    assert long.warmup_epochs == 5 and long.lr == pytest.approx(make_config().base_lr * 2048 / 256)
    text = short.describe(make_config(epochs=3, warmup_epochs=3), 64)
    assert 'warm-up 0.3 epochs = 30 of 300 updates (warmup_epochs 3 capped at max_warmup_frac 0.1 x 3 epochs)' in text
    # the scheduler really warms up that long: lr peaks at update 30, not 300
    c = make_config(epochs=3, warmup_epochs=3, num_workers=0)
    from timm.scheduler import create_scheduler_v2
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=short.lr)
    sched, _ = create_scheduler_v2(opt, sched=c.sched, num_epochs=3, warmup_epochs=short.warmup_epochs,
                                   warmup_lr=c.warmup_lr, min_lr=c.min_lr, step_on_epochs=False,
                                   updates_per_epoch=100)
    lrs = []
    for update in range(300):
        sched.step_update(update)
        lrs.append(opt.param_groups[0]['lr'])
    assert int(np.argmax(lrs)) == 30 and max(lrs) == pytest.approx(short.lr, rel=0.01)


def test_input_size_follows_the_data_when_training_from_scratch():
    assert choose_img_size(224, 28, pretrained=False) == 32  # a resnet18 on MNIST-sized images
    assert choose_img_size(224, 64, pretrained=False) == 64
    assert choose_img_size(32, 64, pretrained=False) == 32  # never above the model's own size
    assert choose_img_size(224, 8, pretrained=False) == 32  # at least 32
    assert choose_img_size(224, 28, pretrained=True) == 224  # pretrained weights keep their size
    assert choose_img_size(224, None, pretrained=False) == 224


# the ViT run repeats the ResNet one's path but for the fixed input size: CI runs the ResNet (`make test-all`: both)
@pytest.mark.parametrize('model', ['resnet18', pytest.param('vit_tiny_patch16_224', marks=pytest.mark.slow)])
def test_any_timm_model_trains_at_the_data_size_and_reloads(tmp_path, model):
    """`--model` takes any timm model: a ViT (fixed input size) is built at the data's size and rebuilt so by
    load_model; a ResNet's keys (no cvtlab layout) load back as they are."""
    root = make_folder(tmp_path / 'shapes', per_class=16, size=28)
    out = tmp_path / 'run'
    result = subprocess.run([sys.executable, '-m', 'cvtlab', 'train', '--data', str(root), '--model', model,
                             '--epochs', '1', '--batch-size', '8', '--num-workers', '0', '--quiet', '--output',
                             str(out)], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert 'input 32 px' in (out / 'train.log').read_text()
    assert '# derived: input 32 px' in (out / 'config.yaml').read_text()
    config = json.loads((out / 'best' / 'config.json').read_text())  # the run's model folder
    assert config['architecture'] == model and config['pretrained_cfg']['input_size'] == [3, 32, 32]
    assert config.get('model_args', {}).get('img_size') == (32 if model.startswith('vit') else None)
    report = cvtlab.evaluate(str(out), str(root))
    summary = json.loads((out / 'summary.json').read_text())
    assert report['count'] == 48 and summary['classes'] == 3
    loaded = cvtlab.load_model(out / 'best')
    assert loaded.num_classes == 3 and loaded.eval()(torch.zeros(1, 3, 32, 32)).shape == (1, 3)


def test_plain_cnn_reference_learns_digits():
    """The benchmark's reference: two convs, Adam, no augmentation, on cvtlab's digits split."""
    from baselines import plain_cnn
    r = plain_cnn('digits', epochs=2)
    assert r['final_top1'] > 80 and r['images_per_sec'] > 0


def test_offline_data_sets_export_as_image_folders(tmp_path):
    import offline_datasets
    for name, count in (('mnist5k', 5000), ('animals10k', 10000)):
        try:
            images, labels, classes = offline_datasets.LOADERS[name]()
        except ModuleNotFoundError as e:
            pytest.skip(str(e))
        assert images.shape == (count, 28, 28) and images.dtype == np.uint8 and len(classes) == 10
        assert np.bincount(labels).tolist() == [count // 10] * 10 and 20 < images.mean() < 120
    root = offline_datasets.export_folder('mnist5k', tmp_path)
    assert len(list((root / 'train' / '3').glob('*.png'))) == 400 and len(list((root / 'val' / '3').iterdir())) == 100


def test_data_files_never_run_code(tmp_path):
    import pickle
    import offline_datasets

    class Evil:
        def __reduce__(self):
            return (print, ('ran',))
    with pytest.raises(pickle.UnpicklingError, match='refusing builtins.print'):
        offline_datasets._ArraysOnly(__import__('io').BytesIO(pickle.dumps(Evil()))).load()
