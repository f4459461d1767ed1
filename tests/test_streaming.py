"""Streamed data: WebDataset shards (`wds:`) and HF datasets (`hfds:`), built here from generated images."""
import io
import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms

from cvtlab import streaming
from cvtlab.errors import DataError

wds = pytest.importorskip('webdataset')
datasets = pytest.importorskip('datasets')

SHARD_SIZES = (7, 13, 4, 10, 9)  # uneven on purpose: 43 samples
IDENTITY = transforms.Compose([transforms.Grayscale(), transforms.ToTensor()])


def _png(value: int, size=(8, 8)) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.full(size, value, np.uint8)).save(buffer, 'png')
    return buffer.getvalue()


def write_shards(folder, sizes=SHARD_SIZES, classes=3, extra=None):
    """Shards whose sample i is a flat grey image of value i (so a batch says which samples it holds)."""
    folder.mkdir(parents=True, exist_ok=True)
    index = 0
    for s, n in enumerate(sizes):
        with wds.TarWriter(str(folder / f'shard-{s:02d}.tar')) as writer:
            for _ in range(n):
                writer.write({'__key__': f'{index:05d}', 'png': _png(index), 'cls': str(index % classes)})
                index += 1
            for sample in (extra or {}).get(s, []):
                writer.write(sample)
    return f'{folder}/shard-{{00..{len(sizes) - 1:02d}}}.tar'


def batches_seen(loader):
    """The sample ids of each batch, in order."""
    return [(x[:, 0, 0, 0] * 255).round().long().tolist() for x, _ in loader]


def make_loader(pattern, world, rank, workers, batch_size=4, seed=1):
    stream = streaming.ShardStream(streaming.index_shards(pattern), shuffle=True, seed=seed, shuffle_buffer=5)
    stream.transform = IDENTITY
    return streaming.StreamLoader(stream, batch_size, world, rank, workers, pin=False, train=True)


def test_shard_index_counts_samples_and_labels(tmp_path):
    pattern = write_shards(tmp_path, extra={1: [{'__key__': 'nolabel', 'png': _png(0)}]})
    index = streaming.index_shards(pattern)
    assert index.counts == list(SHARD_SIZES) and index.classes == ['0', '1', '2'] and index.unusable == 1
    (tmp_path / 'classes.txt').write_text('circle\nsquare\ntriangle\n')
    assert streaming.index_shards(pattern).classes == ['circle', 'square', 'triangle']
    with pytest.raises(DataError, match='without an image or a .cls label'):
        streaming.index_shards(pattern, strict=True)


@pytest.mark.parametrize('world,workers', [(1, 0), (2, 2), (3, 0)])
def test_every_sample_once_per_epoch_across_ranks_and_workers(tmp_path, world, workers):
    """Ranks and loader workers split each epoch: no sample twice, every rank the same number of full batches,
    and only the remainder of (samples // world) // batch left out; the next epoch mixes the shards anew."""
    pattern = write_shards(tmp_path)
    total, batch = sum(SHARD_SIZES), 4
    epochs = {}
    for epoch in (0, 1):
        per_rank = []
        for rank in range(world):
            loader = make_loader(pattern, world, rank, workers, batch)
            loader.set_epoch(epoch)
            per_rank.append(batches_seen(loader))
        steps = (total // world) // batch
        assert [len(b) for b in per_rank] == [steps] * world
        assert all(len(b) == batch for rank in per_rank for b in rank)
        seen = [i for rank in per_rank for b in rank for i in b]
        assert len(seen) == len(set(seen)) == world * steps * batch and set(seen) <= set(range(total))
        epochs[epoch] = [b for rank in per_rank for b in rank]
    assert epochs[0] != epochs[1]


@pytest.mark.parametrize('world,workers', [(1, 0), (1, 2), (2, 2), (3, 0)])
def test_resumed_epoch_continues_with_exactly_the_next_batches(tmp_path, world, workers):
    """Stopped after `skip` steps and resumed (same processes and workers: the trainer checks), every rank goes on
    with exactly the batches it had left, so over all ranks every sample is still trained once in the epoch."""
    pattern = write_shards(tmp_path)
    loaders = [make_loader(pattern, world, rank, workers) for rank in range(world)]
    full = []
    for loader in loaders:
        loader.set_epoch(3)
        full.append(batches_seen(loader))
    for skip in [k for k in (1, 2, 5) if k < len(full[0])]:  # 3 ranks have 3 steps each
        resumed = []
        for rank, loader in enumerate(loaders):
            loader.set_epoch(3, skip_batches=skip)
            assert len(loader) == len(full[rank]) - skip
            resumed.append(batches_seen(loader))
            assert resumed[rank] == full[rank][skip:], (rank, skip)
        seen = [i for rank in range(world) for b in full[rank][:skip] + resumed[rank] for i in b]
        assert len(seen) == len(set(seen)) == sum(len(b) for b in full for b in b)


def test_buffer_shuffle_is_webdatasets_and_replays_from_positions_alone():
    """The shuffle is webdataset's (same draws, same order: states written before keep their order), and
    replaying its draws on positions gives the buffer and read position from which the rest follows exactly."""
    import random
    for n in (3, 5, 6, 12, 40):
        expected = list(wds.shuffle(5, initial=5, rng=random.Random('k'))(iter(range(n))))
        assert list(streaming.buffer_shuffle(range(n), 5, random.Random('k'))) == expected
        for skip in range(n + 1):
            rng = random.Random('k')
            held, unread = streaming.replay_shuffle(0, n, skip, 5, rng)
            assert set(held).isdisjoint(expected[:skip]) and unread <= n
            assert list(streaming.buffer_shuffle(range(unread, n), 5, rng, list(held))) == expected[skip:], (n, skip)


def test_a_resumed_reader_does_not_read_the_shards_it_has_passed(tmp_path, monkeypatch):
    """Resuming late in an epoch, a reader opens only the shards from its oldest buffered sample on, not every
    shard of its range from the start."""
    pattern = write_shards(tmp_path, sizes=(8,) * 10)
    opened = []
    real = wds.tarfile_to_samples

    def counting(*args, **kwargs):
        stage = real(*args, **kwargs)
        return lambda source: (opened.append(1), stage(source))[1]
    monkeypatch.setattr(wds, 'tarfile_to_samples', counting)
    loader = make_loader(pattern, 1, 0, 0)  # 20 steps of 4 over 80 samples in 10 shards, buffer of 5
    loader.set_epoch(2)
    full = batches_seen(loader)
    from_start = len(opened)
    opened.clear()
    loader.set_epoch(2, skip_batches=16)
    assert batches_seen(loader) == full[16:]
    assert from_start == 10 and len(opened) <= 3, (from_start, len(opened))


def test_validation_stream_reads_every_sample_once(tmp_path):
    pattern = write_shards(tmp_path)
    seen = []
    for rank in range(2):
        stream = streaming.ShardStream(streaming.index_shards(pattern), shuffle=False)
        stream.transform = IDENTITY
        loader = streaming.StreamLoader(stream, 4, 2, rank, 2, pin=False, train=False)
        seen += [i for b in batches_seen(loader) for i in b]
    assert sorted(seen) == list(range(sum(SHARD_SIZES)))


def test_shard_errors_are_clear(tmp_path):
    pattern = write_shards(tmp_path)
    with pytest.raises(DataError, match='no shard files match'):
        streaming.index_shards(str(tmp_path / 'none-{0..3}.tar'))
    with pytest.raises(DataError, match=r'2 of 7 shards missing \(first: .*shard-05.tar\)'):
        streaming.index_shards(str(tmp_path / 'shard-{00..06}.tar'))
    (tmp_path / 'bad.tar').write_bytes(b'not a tar at all' * 40)
    with pytest.raises(DataError, match='not a readable tar shard'):
        streaming.index_shards(str(tmp_path / 'bad.tar'))
    with pytest.raises(DataError, match='pass --val-data'):
        streaming.build_datasets('wds:' + pattern, None, None, None, data_root='', download=False, val_split=0.2,
                                 strict=False, seed=0)


def _hf_split(n, seed, names=('cat', 'dog', 'fox')):
    rng = np.random.default_rng(seed)
    images = [Image.fromarray(rng.integers(0, 255, (20, 24, 3), dtype=np.uint8)) for _ in range(n)]
    features = datasets.Features({'img': datasets.Image(), 'label': datasets.ClassLabel(names=list(names))})
    return datasets.Dataset.from_dict({'img': images, 'label': [i % len(names) for i in range(n)]}, features=features)


def test_hf_dataset_splits_and_class_names(tmp_path):
    datasets.DatasetDict({'train': _hf_split(30, 0), 'test': _hf_split(9, 1)}).save_to_disk(tmp_path / 'dd')
    _hf_split(20, 2).save_to_disk(tmp_path / 'one')
    split = streaming.build_datasets(f'hfds:{tmp_path / "dd"}', None, None, None, data_root='', download=False,
                                     val_split=0.2, strict=False, seed=0)
    assert split.classes == ['cat', 'dog', 'fox'] and (len(split.train), len(split.val)) == (30, 9)
    img, label = split.train[4]
    assert img.size == (24, 20) and img.mode == 'RGB' and label == 1 and split.image_size == 20
    # one split only: --val-split of it, stratified; an explicit split name; --val-data from another source
    one = streaming.build_datasets(f'hfds:{tmp_path / "one"}', None, None, None, data_root='', download=False,
                                   val_split=0.25, strict=False, seed=0)
    assert (len(one.train), len(one.val)) == (15, 5)
    named = streaming.build_datasets(f'hfds:{tmp_path / "dd"}:test', f'hfds:{tmp_path / "one"}', None, None,
                                     data_root='', download=False, val_split=0.2, strict=False, seed=0)
    assert (len(named.train), len(named.val)) == (9, 20)
    with pytest.raises(DataError, match="no split 'nope'"):
        streaming.build_datasets(f'hfds:{tmp_path / "dd"}:nope', None, None, None, data_root='', download=False,
                                 val_split=0.2, strict=False, seed=0)


def test_hf_hub_name_is_read_from_the_cache(monkeypatch, tmp_path):
    """A Hub name goes to datasets.load_dataset (which serves its cache offline); a name it cannot serve is a
    one-line error. (The suite runs with HF_HUB_OFFLINE=1: nothing is downloaded.)"""
    calls = []
    real = datasets.load_dataset

    def cached(name, *args, **kwargs):
        calls.append(name)
        if name == 'someone/shapes':
            return datasets.DatasetDict({'train': _hf_split(12, 0), 'validation': _hf_split(6, 1)})
        return real(name, *args, **kwargs)
    monkeypatch.setattr(datasets, 'load_dataset', cached)
    split = streaming.build_datasets('hfds:someone/shapes', None, None, None, data_root='', download=False,
                                     val_split=0.2, strict=False, seed=0)
    assert calls == ['someone/shapes'] and (len(split.train), len(split.val)) == (12, 6)
    with pytest.raises(DataError, match='no such data set in the HF cache'):
        streaming.build_datasets('hfds:nobody/nothing-here', None, None, None, data_root='', download=False,
                                 val_split=0.2, strict=False, seed=0)


def test_hf_hub_name_is_not_fetched_unless_asked(monkeypatch):
    """Even where HF_HUB_OFFLINE is unset (as on a user's machine: both libraries' constants off here), a Hub name
    is read from the HF cache only: datasets runs with the Hub offline and no host name is looked up (the network
    is cut by this test either way). `hub_download` (--hub-download) lets datasets fetch it."""
    import socket
    from huggingface_hub import constants
    from cvtlab.cli import build_parser
    monkeypatch.setattr(constants, 'HF_HUB_OFFLINE', False)
    monkeypatch.setattr(datasets.config, 'HF_HUB_OFFLINE', False)
    lookups = []

    def cut(host, *args, **kwargs):
        lookups.append(host)
        raise OSError('network cut by the test')
    monkeypatch.setattr(socket, 'getaddrinfo', cut)
    monkeypatch.setattr(socket, 'create_connection', cut)
    with pytest.raises(DataError, match=r'no such data set in the HF cache \(--hub-download fetches it\)'):
        streaming.build_datasets('hfds:nobody/nothing-here', None, None, None, data_root='', download=True,
                                 val_split=0.2, strict=False, seed=0)
    assert lookups == []
    assert constants.HF_HUB_OFFLINE is False and datasets.config.HF_HUB_OFFLINE is False  # restored after the call

    modes = []

    def load_dataset(name, *args, **kwargs):
        modes.append((constants.is_offline_mode(), datasets.config.HF_HUB_OFFLINE))
        return datasets.DatasetDict({'train': _hf_split(12, 0), 'validation': _hf_split(6, 1)})
    monkeypatch.setattr(datasets, 'load_dataset', load_dataset)
    for hub_download in (False, True):
        streaming.build_datasets('hfds:someone/shapes', None, None, None, data_root='', download=True,
                                 val_split=0.2, strict=False, seed=0, hub_download=hub_download)
    assert modes == [(True, True), (False, False)]
    # the opt-in, on the command line of train (a config field) and eval
    assert build_parser().parse_args(['train', '--hub-download']).hub_download is True
    assert build_parser().parse_args(['eval', '--model', 'cvt_tiny', '--hub-download']).hub_download is True


def test_train_and_eval_on_shards_end_to_end(tmp_path):
    """`cvtlab train --data wds:... --val-data wds:...` and `cvtlab eval --data wds:...` through the CLI."""
    train = write_shards(tmp_path / 'train', sizes=(20, 20, 24))
    val = write_shards(tmp_path / 'val', sizes=(9,))
    out = tmp_path / 'run'
    result = subprocess.run([sys.executable, '-m', 'cvtlab', 'train', '--data', f'wds:{train}', '--val-data',
                             f'wds:{val}', '--epochs', '1', '--batch-size', '8', '--num-workers', '2', '--quiet',
                             '--output', str(out)], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((out / 'summary.json').read_text())
    assert summary['classes'] == 3 and summary['epochs'] == 1 and summary['data'].startswith('wds:')
    assert 'input 32 px' in (out / 'train.log').read_text()  # 8 px images: the data's size, at least 32
    assert len(list((out / 'samples').glob('*.png'))) == 8
    state = torch.load(out / 'train_state.pt', weights_only=True)
    assert state['run']['step'] == 64 // 8  # every full batch of the epoch
    result = subprocess.run([sys.executable, '-m', 'cvtlab', 'eval', '--checkpoint', str(out), '--data',
                             f'wds:{val}', '--json'], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads(result.stdout)['count'] == 9


def test_bad_streaming_input_is_one_line(tmp_path, capsys):
    from test_train import assert_one_line_error, run_in_process
    pattern = write_shards(tmp_path / 'shards')
    fast = ['--epochs', '1', '--num-workers', '0', '--quiet']
    cases = [
        (('--data', f'wds:{tmp_path}/missing-{{0..3}}.tar', '--val-data', f'wds:{pattern}'), 'no shard files match'),
        (('--data', f'wds:{tmp_path}/shards/shard-{{00..07}}.tar', '--val-data', 'digits'), '3 of 8 shards missing'),
        (('--data', f'wds:{pattern}'), 'pass --val-data'),
        (('--data', f'wds:{pattern}', '--val-data', 'digits'), 'differ from the training classes'),
        (('--data', f'hfds:{tmp_path}/nothing-here'), 'no such data set in the HF cache'),
    ]
    for i, (args, message) in enumerate(cases):
        result = run_in_process(capsys, 'train', *args, *fast, '--output', tmp_path / f'o{i}')
        assert_one_line_error(result, message)
