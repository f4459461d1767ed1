"""Data past one folder: WebDataset tar shards (`wds:PATTERN`) and HF datasets (`hfds:NAME_OR_PATH[:SPLIT]`).

**WebDataset.** `wds:/data/train-{000000..000127}.tar` (brace patterns; local or mounted files). A sample is
the tar members sharing a key (`0001.png` + `0001.cls`, webdataset's grouping): an image (jpg, png, webp, ...)
and its class index as text. Class names come from a `classes.txt` beside the shards (one per line), else
they are the indices. Rank 0 reads the tar headers once (how many samples each shard holds, which labels) and
sends the index to the other ranks. Each epoch, the shards are put in a fresh order (seed, epoch); that
sequence of samples is cut into one contiguous range per rank and per loader worker, so every sample goes to
exactly one of them; each range is read with webdataset (`tarfile_to_samples`) through its shuffle buffer
(1,000 samples, seeded by seed, epoch and range). Every rank runs the same number of
steps (DDP needs it): the epoch has (samples // world size) // batch size of them, like the folder loader's
`drop_last`, so at most a batch per rank of samples is left out, a different one each epoch. Augmentation is
seeded by the sample's position in the epoch, and a resumed epoch skips exactly the batches already trained:
the shuffle buffer's draws depend on its length only, never on the samples, so each reader replays its draws
on sample positions alone (no reading), then reads from the oldest sample still in its buffer: whole shards
before that are not opened, and of the shard it lies in only the tar members are walked through.

**HF datasets.** `hfds:PATH` loads a `save_to_disk` folder, `hfds:NAME` a Hub data set from the HF cache
(`datasets.load_dataset`, with the Hub held offline: nothing is fetched unless `hub_download`, the
`--hub-download` flag, asks for it), `:SPLIT` picks a split (default: train). The image column is the one of
type `Image`, the label the `ClassLabel` one (whose names become the classes) or a column named `label`.
Validation: `--val-data`, else a validation / valid / val / test split, else `--val-split` of the data.
These are random-access: they go through the same sampler as image folders.
"""
import contextlib
import io
import itertools
import logging
import os
import random
import re
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Tuple

import numpy as np
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from .data import DataSplit, ImageDataset, _local_samples, _stratified_split, check_same_classes, load_image, \
    seed_sample, to_rgb, typical_size
from .errors import DataError

_logger = logging.getLogger('cvtlab')

WDS, HFDS = 'wds:', 'hfds:'
IMAGE_KEYS = ('jpg', 'jpeg', 'png', 'webp', 'ppm', 'pgm', 'bmp', 'tif', 'tiff', 'gif')
LABEL_KEY = 'cls'
VAL_SPLITS = ('validation', 'valid', 'val', 'test')
_META = r'__[^/]*__($|/)'  # webdataset skips these members (e.g. __key__)


def is_streaming(data: Optional[str]) -> bool:
    return str(data).startswith((WDS, HFDS))


def _require(module: str):
    """Import an optional dependency, or say in one line how to install it."""
    import importlib
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError:
        raise DataError(f'{module} is not installed: pip install "cvtlab[stream]" (webdataset, datasets)') from None


# --- WebDataset shards -------------------------------------------------------------------------------------
def expand_shards(pattern: str) -> List[str]:
    """The shard files of a brace pattern; every one must exist."""
    braceexpand = _require('braceexpand').braceexpand
    paths = [str(Path(p).expanduser()) for p in braceexpand(pattern)]
    missing = [p for p in paths if not Path(p).is_file()]
    if not paths or len(missing) == len(paths):
        raise DataError(f'wds:{pattern}: no shard files match')
    if missing:
        raise DataError(f'wds:{pattern}: {len(missing)} of {len(paths)} shards missing (first: {missing[0]})')
    return paths


def _usable(keys) -> bool:
    return LABEL_KEY in keys and any(k in IMAGE_KEYS for k in keys)


def _scan_shard(path: str) -> Tuple[int, List[int], int]:
    """(usable samples, their labels, samples without an image or a label) of one shard: tar headers only,
    plus the tiny label members. Samples are grouped as webdataset groups them (same key, consecutive)."""
    base_plus_ext = _require('webdataset.tariterators').base_plus_ext
    labels, unusable = [], 0
    key, members = None, {}

    def close():
        nonlocal unusable
        if key is None:
            return
        if _usable(members):
            try:
                labels.append(int(members[LABEL_KEY]().decode().strip()))
            except ValueError:
                raise DataError(f'{path}: sample {key}: the .{LABEL_KEY} member is not a class index') from None
        else:
            unusable += 1

    try:
        with tarfile.open(path, 'r:*') as tar:
            for m in tar:
                if not m.isreg() or re.match(_META, m.name):
                    continue
                prefix, suffix = base_plus_ext(m.name)
                if prefix is None:
                    continue
                if prefix != key:
                    close()
                    key, members = prefix, {}
                members[suffix.lower()] = (lambda m=m: tar.extractfile(m).read())
            close()
    except (tarfile.TarError, OSError, EOFError) as e:
        raise DataError(f'{path}: not a readable tar shard ({type(e).__name__}: {str(e)[:120]})') from None
    return len(labels), labels, unusable


@dataclass
class ShardIndex:
    shards: List[str]
    counts: List[int]  # usable samples per shard
    classes: List[str]
    unusable: int  # samples without an image or a label (not used)


def index_shards(pattern: str, strict: bool = False) -> ShardIndex:
    from . import distributed
    index = None
    if _rank() == 0:  # one reader; the others wait for its answer
        try:
            index = ('ok', _index_shards(pattern, strict))
        except DataError as e:
            index = ('error', str(e))
    status, value = distributed.broadcast_object(index)
    if status == 'error':
        raise DataError(value)
    return value


def _index_shards(pattern: str, strict: bool) -> ShardIndex:
    shards = expand_shards(pattern)
    counts, label_set, unusable = [], set(), 0
    for path in shards:
        count, labels, bad = _scan_shard(path)
        counts.append(count)
        label_set.update(labels)
        unusable += bad
    if unusable and strict:
        raise DataError(f'wds:{pattern}: {unusable} samples without an image or a .{LABEL_KEY} label (--strict-data)')
    if unusable:
        _logger.warning(f'wds:{pattern}: {unusable} samples without an image or a .{LABEL_KEY} label are not used')
    if not sum(counts):
        raise DataError(f'wds:{pattern}: no samples with an image and a .{LABEL_KEY} label')
    if min(label_set) < 0:
        raise DataError(f'wds:{pattern}: negative class index {min(label_set)}')
    names_file = Path(shards[0]).parent / 'classes.txt'
    classes = names_file.read_text().split('\n') if names_file.is_file() else []
    classes = [c.strip() for c in classes if c.strip()] or [str(i) for i in range(max(label_set) + 1)]
    if max(label_set) >= len(classes):
        raise DataError(f'wds:{pattern}: class index {max(label_set)} but {names_file} names {len(classes)} classes')
    return ShardIndex(shards, counts, classes, unusable)


_END = object()


def _pick(buf: list, rng: random.Random):
    """Take a random item out of the buffer (swap with the last: O(1)), as webdataset's `pick` does."""
    k = rng.randint(0, len(buf) - 1)
    item, buf[k] = buf[k], buf[-1]
    buf.pop()
    return item


def buffer_shuffle(items, bufsize: int, rng: random.Random, buf: Optional[list] = None):
    """webdataset's `shuffle` with `initial=bufsize` (the same draws, so the same order), able to start from a
    given buffer. Its draws depend on how full the buffer is, never on the items: `replay_shuffle` runs it on
    positions to know what a resumed reader's buffer holds without reading a sample."""
    buf = [] if buf is None else buf
    items = iter(items)
    for item in items:
        buf.append(item)
        if len(buf) < bufsize:
            extra = next(items, _END)
            if extra is not _END:
                buf.append(extra)
        if len(buf) >= bufsize:
            yield _pick(buf, rng)
    while buf:
        yield _pick(buf, rng)


def replay_shuffle(start: int, stop: int, skip: int, bufsize: int, rng: random.Random) -> Tuple[list, int]:
    """After `skip` items of `buffer_shuffle` over positions [start, stop): (the positions in its buffer, in
    buffer order, and the first position not read yet); `rng` is left where that shuffle's would be."""
    buf, read = [], [start]

    def positions():
        for position in range(start, stop):
            read[0] = position + 1
            yield position
    shuffled = buffer_shuffle(positions(), bufsize, rng, buf)
    for _ in range(skip):
        next(shuffled)
    return buf, read[0]


@dataclass(frozen=True)
class _Slice:
    """One reader's share of an epoch: global sample positions [start, stop), the first `skip` (after shuffling)
    already trained."""
    start: int
    stop: int
    skip: int = 0


class ShardStream(IterableDataset):
    """WebDataset shards as (image tensor, label) samples; `StreamLoader` sets the epoch's plan before each pass."""

    def __init__(self, index: ShardIndex, shuffle: bool, seed: int = 0, shuffle_buffer: int = 1000,
                 strict: bool = False):
        self.index, self.shuffle, self.seed = index, shuffle, seed
        self.shuffle_buffer, self.strict = shuffle_buffer, strict
        self.transform = None
        self.epoch = 0
        self.plan = None  # one _Slice per loader worker, set by the loader

    def __len__(self):
        return sum(self.index.counts)

    def shard_order(self, epoch: int) -> List[int]:
        n = len(self.index.shards)
        return list(np.random.default_rng([self.seed, epoch]).permutation(n)) if self.shuffle else list(range(n))

    def _positions(self, order: List[int], part: _Slice):
        """(global position, raw webdataset sample) for the positions in `part`, in shard order."""
        import webdataset as wds
        start = 0
        for shard in order:
            stop = start + self.index.counts[shard]
            if stop > part.start and start < part.stop:
                usable = (s for s in wds.tarfile_to_samples()(iter([dict(url=self.index.shards[shard])]))
                          if _usable(s))
                for position, sample in enumerate(usable, start):
                    if position >= part.stop:
                        break
                    if position >= part.start:
                        yield position, sample
            start = stop
            if start >= part.stop:
                return

    def _decode(self, sample: dict):
        ext = next(k for k in IMAGE_KEYS if k in sample)
        return load_image(io.BytesIO(sample[ext]), name=f'{sample["__url__"]}:{sample["__key__"]}.{ext}')

    def _resumed(self, order: List[int], part: _Slice):
        """(position, sample) of `part` in shuffled order, without its first `part.skip` (already trained)."""
        if not self.shuffle:
            return self._positions(order, _Slice(part.start + part.skip, part.stop))
        # keyed by the slice, not the worker id: a resumed epoch hands slices to other workers
        rng = random.Random(f'{self.seed}/{self.epoch}/{part.start}')
        held, unread = replay_shuffle(part.start, part.stop, part.skip, self.shuffle_buffer, rng)
        wanted, kept = set(held), {}
        raw = self._positions(order, _Slice(min(held + [unread]), part.stop))
        first = []
        for position, sample in raw:  # the samples still in the buffer: read again, the others passed over
            if position >= unread:
                first = [(position, sample)]
                break
            if position in wanted:
                kept[position] = sample
        return buffer_shuffle(itertools.chain(first, raw), self.shuffle_buffer, rng,
                              [(position, kept[position]) for position in held])

    def __iter__(self):
        info = get_worker_info()
        part = self.plan[info.id if info is not None else 0]
        last_good = None
        for position, sample in self._resumed(self.shard_order(self.epoch), part):
            label = int(sample[LABEL_KEY].decode().strip())
            try:
                img = self._decode(sample)
            except DataError as e:
                # the step count is fixed in advance (every rank the same): stand in the last good image
                if self.strict or last_good is None:
                    raise
                _logger.warning(f'unreadable image replaced by the one before: {e}')
                img, label = last_good
            last_good = img, label
            if self.transform is not None:
                seed_sample(self.seed, self.epoch, position)
                img = self.transform(img)
            yield img, label

    def preview(self, count: int):
        """The first `count` images and labels, untransformed (for the run's samples/ folder)."""
        out = []
        for _, sample in self._positions(list(range(len(self.index.shards))), _Slice(0, count)):
            out.append((self._decode(sample), int(sample[LABEL_KEY].decode().strip())))
        return out


def train_slices(total: int, world_size: int, rank: int, workers: int, batch_size: int, skip_batches: int):
    """(steps per epoch, one _Slice per worker of `rank`). Every rank gets the same number of full batches;
    worker w serves the rank's batches w, w + workers, ... (the DataLoader's round-robin order)."""
    steps = (total // world_size) // batch_size
    start = rank * total // world_size
    slices = []
    for w in range(workers):
        batches = steps // workers + (w < steps % workers)
        done = max(0, -(-(skip_batches - w) // workers))  # of its batches, those among the first skip_batches
        slices.append(_Slice(start, start + batches * batch_size, min(done, batches) * batch_size))
        start += batches * batch_size
    return steps, slices


def eval_slices(total: int, world_size: int, rank: int, workers: int):
    """Every sample once over all ranks and workers: contiguous, near-equal ranges."""
    lo, hi = rank * total // world_size, (rank + 1) * total // world_size
    return [_Slice(lo + w * (hi - lo) // workers, lo + (w + 1) * (hi - lo) // workers) for w in range(workers)]


class StreamLoader:
    """The trainer's loader interface (`set_epoch`, `batches_per_epoch`, `len`) over a ShardStream."""

    def __init__(self, stream: ShardStream, batch_size: int, world_size: int, rank: int, num_workers: int,
                 pin: bool, train: bool):
        self.stream, self.batch_size, self.world_size, self.rank = stream, batch_size, world_size, rank
        self.workers, self.train = max(1, num_workers), train
        self.loader = DataLoader(stream, batch_size=batch_size, num_workers=num_workers, pin_memory=pin,
                                 drop_last=train)
        self.batches_per_epoch = train_slices(len(stream), world_size, rank, self.workers, batch_size, 0)[0]
        if train and self.batches_per_epoch < 1:
            raise DataError(f'{len(stream)} training samples are fewer than one batch of {batch_size} per process; '
                            f'lower --batch-size')
        self.skip = 0
        self.set_epoch(0)

    def set_epoch(self, epoch: int, skip_batches: int = 0):
        self.stream.epoch, self.skip = epoch, skip_batches
        if self.train:
            _, slices = train_slices(len(self.stream), self.world_size, self.rank, self.workers, self.batch_size,
                                     skip_batches)
        else:
            slices = eval_slices(len(self.stream), self.world_size, self.rank, self.workers)
        # the DataLoader asks worker 0 first: after skipping k batches, worker 0 must serve batch k
        turn = skip_batches % self.workers
        slices = slices[turn:] + slices[:turn]
        self.stream.plan = slices  # worker processes copy the stream when iteration starts

    def __iter__(self):
        return iter(self.loader)

    def __len__(self):
        if self.train:
            return self.batches_per_epoch - self.skip
        return sum(-(-(s.stop - s.start) // self.batch_size) for s in self.stream.plan)


def train_loader(stream, batch_size, world_size, rank, seed, num_workers, pin):
    return StreamLoader(stream, batch_size, world_size, rank, num_workers, pin, train=True)


def eval_loader(stream, batch_size, world_size, rank, num_workers, pin):
    return StreamLoader(stream, batch_size, world_size, rank, num_workers, pin, train=False)


# --- HF datasets -------------------------------------------------------------------------------------------
class HFImage:
    """Loads row `i`'s image as RGB: picklable, so loader workers can hold it."""

    def __init__(self, dataset, column: str):
        self.dataset, self.column = dataset, column

    def __call__(self, i: int):
        return to_rgb(self.dataset[int(i)][self.column])


def _parse_hf(spec: str) -> Tuple[str, Optional[str]]:
    """'NAME_OR_PATH[:SPLIT]' -> (name, split or None); a path that exists is never split."""
    if Path(spec).expanduser().exists() or ':' not in spec:
        return spec, None
    name, split = spec.rsplit(':', 1)
    return name, split


@contextlib.contextmanager
def _hub_offline():
    """The Hub held offline for one call, whatever HF_HUB_OFFLINE says: huggingface_hub and datasets read it once,
    at import, into module constants that they consult at call time, so set both and restore them after."""
    import datasets
    from huggingface_hub import constants
    saved = constants.HF_HUB_OFFLINE, datasets.config.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = datasets.config.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE, datasets.config.HF_HUB_OFFLINE = saved


def _load_hf(name: str, hub_download: bool = False):
    """A save_to_disk folder, else a Hub data set: from the HF cache only unless `hub_download` (a training job
    should not start a download of unknown size on every node because a name was mistyped or not cached)."""
    datasets = _require('datasets')
    path = Path(name).expanduser()
    if path.exists():
        try:
            return datasets.load_from_disk(str(path))
        except (FileNotFoundError, ValueError, OSError) as e:
            raise DataError(f'hfds:{name}: not a save_to_disk folder ({type(e).__name__}: '
                            f'{str(e).splitlines()[0][:160]})') from None
    try:
        with contextlib.nullcontext() if hub_download else _hub_offline():
            return datasets.load_dataset(name)
    except (FileNotFoundError, ValueError, OSError, ConnectionError) as e:  # the Hub's errors derive from these
        if not hub_download:
            where = 'in the HF cache (--hub-download fetches it)'
        elif os.environ.get('HF_HUB_OFFLINE', '').lower() in ('1', 'true', 'yes', 'on'):
            where = 'in the HF cache, and HF_HUB_OFFLINE is set, so --hub-download could not fetch it'
        else:
            where = 'on the Hub'
        raise DataError(f'hfds:{name}: no such folder, and no such data set {where} ({type(e).__name__}: '
                        f'{str(e).splitlines()[0][:160]})') from None


def _hf_columns(dataset, name: str) -> Tuple[str, str, Optional[List[str]]]:
    """(image column, label column, class names from a ClassLabel or None)."""
    import datasets
    features = dataset.features
    image = next((c for c, f in features.items() if isinstance(f, datasets.Image)), None)
    label = next((c for c, f in features.items() if isinstance(f, datasets.ClassLabel)), None)
    label = label or next((c for c in ('label', 'labels') if c in features), None)
    if image is None or label is None:
        raise DataError(f'hfds:{name}: needs an Image column and a ClassLabel (or "label") column; it has '
                        f'{", ".join(f"{c} ({type(f).__name__})" for c, f in features.items())}')
    names = features[label].names if isinstance(features[label], datasets.ClassLabel) else None
    return image, label, names


def _hf_split(loaded, name: str, split: Optional[str], role: str):
    """The split to use from a Dataset or DatasetDict; for role 'val' also the default validation split."""
    import datasets
    if isinstance(loaded, datasets.Dataset):
        if split is not None:
            raise DataError(f'hfds:{name}: holds one split, not {split!r}')
        return loaded
    if split is None:
        wanted = VAL_SPLITS + ('train',) if role == 'val' else ('train',)
        split = next((s for s in wanted if s in loaded), None)
        if split is None:
            raise DataError(f'hfds:{name}: no train split; pick one of {", ".join(loaded)} as hfds:{name}:SPLIT')
    if split not in loaded:
        raise DataError(f'hfds:{name}: no split {split!r} (it has {", ".join(loaded)})')
    return loaded[split]


def _hf_samples(dataset, name: str):
    """((row, label) samples, image loader, class names) of one HF split."""
    image, label, names = _hf_columns(dataset, name)
    try:
        labels = [int(x) for x in dataset[label]]
    except (TypeError, ValueError):  # e.g. string labels in a plain column: no ClassLabel names to map them
        raise DataError(f'hfds:{name}: the {label!r} column holds non-integer labels; cast it to a ClassLabel '
                        f'(datasets: dataset.class_encode_column({label!r})) and save it again') from None
    if not labels:
        raise DataError(f'hfds:{name}: the split is empty')
    classes = list(names) if names is not None else [str(i) for i in range(max(labels) + 1)]
    return list(zip(range(len(labels)), labels)), HFImage(dataset, image), classes


# --- building ------------------------------------------------------------------------------------------------
def _training_part(data: str, has_val_data: bool, *, data_root, download, val_split, strict, seed,
                   hub_download=False):
    """(train dataset, val dataset or None, classes, skipped, typical image size)."""
    if data.startswith(WDS):
        index = index_shards(data[len(WDS):], strict)
        if not has_val_data:
            raise DataError(f'{data}: shards hold no validation split; pass --val-data (shards, a folder or hfds:)')
        stream = ShardStream(index, shuffle=True, seed=seed, strict=strict)
        return stream, None, index.classes, 0, typical_size([img for img, _ in stream.preview(16)])
    if data.startswith(HFDS):
        name, split = _parse_hf(data[len(HFDS):])
        loaded = _load_hf(name, hub_download)
        samples, load, classes = _hf_samples(_hf_split(loaded, name, split, 'train'), name)
        val = None
        if not has_val_data:
            import datasets
            splits = list(loaded) if isinstance(loaded, datasets.DatasetDict) else []
            val_name = next((s for s in VAL_SPLITS if s in splits and s != split), None)
            if val_name is not None:
                val_samples, val_load, val_classes = _hf_samples(loaded[val_name], name)
                check_same_classes(classes, val_classes, f'{data} ({val_name} split)')
                val = ImageDataset(val_samples, None, strict, load=val_load)
            else:
                train_idx, val_idx = _stratified_split([label for _, label in samples], val_split)
                val = ImageDataset([samples[i] for i in val_idx], None, strict, load=load)
                samples = [samples[i] for i in train_idx]
        size = typical_size([load(i) for i, _ in samples[:: max(1, len(samples) // 16)][:16]])
        return ImageDataset(samples, None, strict, seed, load=load), val, classes, 0, size
    train, val, classes, skipped = _local_samples(data, data_root, download, val_split, strict)
    if has_val_data:
        train, val = train + val, None
    return (ImageDataset(train, None, strict, seed), None if val is None else ImageDataset(val, None, strict),
            classes, skipped, typical_size([item for item, _ in train]))


def validation_part(data: str, *, data_root='~/.cache/cvtlab/data', download=True, strict=False,
                    hub_download=False):
    """(dataset, classes) of the whole of `data` for validation (a wds stream is read in order, unshuffled)."""
    if data.startswith(WDS):
        index = index_shards(data[len(WDS):], strict)
        return ShardStream(index, shuffle=False, strict=strict), index.classes
    if data.startswith(HFDS):
        name, split = _parse_hf(data[len(HFDS):])
        samples, load, classes = _hf_samples(_hf_split(_load_hf(name, hub_download), name, split, 'val'), name)
        return ImageDataset(samples, None, strict, load=load), classes
    train, val, classes, _ = _local_samples(data, data_root, download, 0.5, strict)
    return ImageDataset(train + val, None, strict), classes


def build_datasets(data: str, val_data: Optional[str], train_transform, eval_transform, *, data_root: str,
                   download: bool, val_split: float, strict: bool, seed: int, hub_download: bool = False) -> DataSplit:
    train, val, classes, skipped, size = _training_part(data, val_data is not None, data_root=data_root,
                                                        download=download, val_split=val_split, strict=strict,
                                                        seed=seed, hub_download=hub_download)
    if val_data is not None:
        val, val_classes = validation_part(val_data, data_root=data_root, download=download, strict=strict,
                                           hub_download=hub_download)
        check_same_classes(classes, val_classes, val_data)
    if len(train) == 0 or len(val) == 0:
        raise DataError(f'{data}: no images to train or validate on')
    train.transform, val.transform = train_transform, eval_transform
    return DataSplit(train, val, classes, data if val_data is None else f'{data} (val: {val_data})', skipped, size)


def _rank() -> int:
    import torch.distributed as dist
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
