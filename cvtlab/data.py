"""Data: the embedded digits set, CIFAR, image folders; robust image loading; timm transforms; loaders.

Augmentation randomness is a function of (seed, epoch, sample index) and nothing else, so a run gives the
same batches whatever the worker count, and a resumed run continues exactly where it stopped.
"""
import logging
import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, List, Optional, Sequence, Tuple

import numpy as np
import torch
from PIL import Image, ImageFile
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

from .errors import DataError

_logger = logging.getLogger('cvtlab')

IMG_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.ppm', '.bmp', '.pgm', '.tif', '.tiff', '.webp', '.gif')
TRAIN_DIRS = ('train', 'training')
VAL_DIRS = ('val', 'valid', 'validation', 'eval', 'evaluation')
ImageFile.LOAD_TRUNCATED_IMAGES = False  # a truncated file is an error, not a half-grey image


# --- images --------------------------------------------------------------------------------------------
def to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL mode -> RGB: alpha composited on white, palettes expanded, 16/32-bit rescaled, CMYK converted."""
    if img.mode in ('I;16', 'I;16B', 'I;16L', 'I', 'F'):
        arr = np.asarray(img, dtype=np.float64)
        hi = 65535.0 if img.mode.startswith('I;16') or arr.max() > 255 else 255.0
        img = Image.fromarray(np.clip(arr / hi * 255.0 + 0.5, 0, 255).astype(np.uint8), 'L')
    if img.mode == 'P':
        img = img.convert('RGBA' if 'transparency' in img.info else 'RGB')
    if img.mode in ('RGBA', 'LA', 'La', 'RGBa', 'PA'):
        img = img.convert('RGBA')
        background = Image.new('RGBA', img.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, img)
    return img.convert('RGB') if img.mode != 'RGB' else img


def load_image(path, name: Optional[str] = None) -> Image.Image:
    """Open and fully decode an image (a path or a file object, called `name` in errors) as RGB, first frame
    of animations; DataError if impossible."""
    try:
        with Image.open(path) as img:
            img.seek(0)
            img.load()
            return to_rgb(img)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError, EOFError) as e:
        raise DataError(f'{name or path}: not a readable image ({type(e).__name__}: {str(e)[:120]})') from None


def check_image(path) -> Optional[str]:
    """Cheap validity check (header + structure, no full decode): None if fine, else the reason."""
    try:
        if os.path.getsize(path) == 0:
            return 'empty file'
        with Image.open(path) as img:
            img.verify()
        return None
    except Exception as e:  # PIL raises many types for broken files
        return f'{type(e).__name__}: {str(e)[:120]}'


def list_images(root) -> List[Path]:
    """Image files under root (recursively, symlinks followed, loops broken), sorted."""
    found, seen = [], set()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen:  # a symlink loop or a second link to the same folder
            dirnames[:] = []
            continue
        seen.add(real)
        dirnames.sort()
        found += [Path(dirpath) / f for f in sorted(filenames) if f.lower().endswith(IMG_EXTENSIONS)]
    return found


# --- datasets --------------------------------------------------------------------------------------------
def seed_sample(seed: int, epoch: int, index: int):
    """Seed the RNGs transforms draw from, as a function of (seed, epoch, sample index) only."""
    s = (seed * 1_000_003 + epoch * 10_007 + index) % (2 ** 31)
    random.seed(s)
    np.random.seed(s)
    # the CPU generator only, which is all transforms draw from: torch.manual_seed also queues a CUDA
    # seeding with a formatted stack trace on every call (0.24 ms against 2 us, per sample)
    torch.default_generator.manual_seed(s)


class ImageDataset(Dataset):
    """(image, label) samples; seeded per-sample transforms; unreadable files skipped or fatal.

    An item is a PIL image, a path, or anything `load` turns into an RGB image (an HF dataset's row index)."""

    def __init__(self, samples: Sequence[Tuple[object, int]], transform: Optional[Callable] = None,
                 strict: bool = False, seed: int = 0, load: Optional[Callable] = None):
        self.samples = list(samples)
        self.transform = transform
        self.strict = strict
        self.seed = seed
        self.load = load
        self.epoch = 0  # set by the trainer before each epoch's iterator is created

    def __len__(self):
        return len(self.samples)

    def _load(self, item) -> Image.Image:
        if self.load is not None:
            return self.load(item)
        return item if isinstance(item, Image.Image) else load_image(item)

    def __getitem__(self, index: int):
        for attempt in range(len(self.samples)):
            item, label = self.samples[(index + attempt) % len(self.samples)]
            try:
                img = self._load(item)
                break
            except DataError as e:
                if self.strict:
                    raise
                _logger.warning(f'skipped unreadable image: {e}')
        else:
            raise DataError('no readable image in the data set')
        if self.transform is not None:
            seed_sample(self.seed, self.epoch, index)
            img = self.transform(img)
        return img, label

    def preview(self, count: int):
        """`count` (image, label) pairs spread over the data, untransformed (for the run's samples/ folder)."""
        picked = [self.samples[(i * 7919) % len(self.samples)] for i in range(min(count, len(self.samples)))]
        return [(self._load(item), label) for item, label in picked]


@dataclass
class DataSplit:
    train: Dataset
    val: Dataset
    classes: List[str]
    source: str
    skipped: int = 0
    image_size: Optional[int] = None  # typical shorter side of the training images (px), when known


def typical_size(images: Sequence[object], limit: int = 64) -> Optional[int]:
    """Median shorter side of up to `limit` images spread over the list (PIL images or paths; headers only)."""
    picked = [images[i * len(images) // limit] for i in range(limit)] if len(images) > limit else list(images)
    sides = []
    for item in picked:
        try:
            if isinstance(item, Image.Image):
                sides.append(min(item.size))
            else:
                with Image.open(item) as img:
                    sides.append(min(img.size))
        except (OSError, ValueError, SyntaxError):
            continue
    return int(np.median(sides)) if sides else None


def _stratified_split(labels: Sequence[int], val_fraction: float, seed: int = 0):
    from sklearn.model_selection import train_test_split
    idx = np.arange(len(labels))
    try:
        return train_test_split(idx, test_size=val_fraction, stratify=labels, random_state=seed)
    except ValueError as e:
        raise DataError(f'cannot split {len(labels)} images into train/val: {e}') from None


def digits_samples(val_fraction: float = 0.2):
    """scikit-learn's 1,797 real 8x8 handwritten digits as 32x32 RGB images, fixed stratified split."""
    from sklearn.datasets import load_digits
    digits = load_digits()
    images = [Image.fromarray((img * (255.0 / 16.0)).astype(np.uint8), 'L').resize((32, 32), Image.BICUBIC)
              .convert('RGB') for img in digits.images]
    labels = digits.target.tolist()
    train_idx, val_idx = _stratified_split(labels, val_fraction, seed=0)
    pick = lambda ids: [(images[i], labels[i]) for i in ids]  # noqa: E731
    return pick(train_idx), pick(val_idx), [str(d) for d in range(10)]


def cifar_samples(name: str, root: str, download: bool):
    import torchvision
    cls = {'cifar10': torchvision.datasets.CIFAR10, 'cifar100': torchvision.datasets.CIFAR100}[name]
    root = os.path.expanduser(root)
    try:
        train = cls(root, train=True, download=download)
        val = cls(root, train=False, download=download)
    except RuntimeError as e:
        raise DataError(f'{name} is not in {root} ({str(e).splitlines()[0]}); '
                        f'run once with network access or pass --download') from None
    except OSError as e:
        raise DataError(f'{name} is not in {root} and cannot be downloaded (offline?): {e}') from None
    as_samples = lambda ds: [(Image.fromarray(img), int(t)) for img, t in zip(ds.data, ds.targets)]  # noqa: E731
    return as_samples(train), as_samples(val), list(train.classes)


def _class_dirs(root: Path) -> List[Path]:
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith('.'))


def _scan_classes(root: Path, classes: List[str], strict: bool):
    """(path, label) samples of root/<class>/..., and how many unreadable files were skipped."""
    samples, bad = [], []
    for label, name in enumerate(classes):
        folder = root / name
        files = list_images(folder) if folder.is_dir() else []
        if not files:
            raise DataError(f'class folder {folder} has no images')
        for f in files:
            reason = check_image(f)
            if reason:
                bad.append(f'{f}: {reason}')
            else:
                samples.append((f, label))
    if bad and strict:
        raise DataError(f'{len(bad)} unreadable images (--strict-data), first: {bad[0]}')
    if bad:
        _logger.warning(f'skipped {len(bad)} unreadable files in {root} (first: {bad[0]})')
    return samples, len(bad)


def folder_samples(root: str, val_fraction: float, strict: bool):
    """root/{train,val}/<class>/*, or root/<class>/* split into train/val (stratified, fixed seed)."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataError(f'{root}: no such data folder (expected digits, cifar10, cifar100 or a folder)')
    train_dir = next((root / d for d in TRAIN_DIRS if (root / d).is_dir()), None)
    val_dir = next((root / d for d in VAL_DIRS if (root / d).is_dir()), None)
    base = train_dir or root
    classes = [p.name for p in _class_dirs(base)]
    if not classes:
        raise DataError(f'{base}: no class folders (expected {base}/<class>/<image files>)')
    train, skipped = _scan_classes(base, classes, strict)
    if train_dir is not None and val_dir is not None:
        val_classes = [p.name for p in _class_dirs(val_dir)]
        if val_classes != classes:
            raise DataError(f'{val_dir} classes {val_classes[:5]} differ from {train_dir} classes {classes[:5]}')
        val, more = _scan_classes(val_dir, classes, strict)
        return train, val, classes, skipped + more
    train_idx, val_idx = _stratified_split([label for _, label in train], val_fraction)
    return [train[i] for i in train_idx], [train[i] for i in val_idx], classes, skipped


def _local_samples(data: str, data_root: str, download: bool, val_split: float, strict: bool):
    """(train, val, classes, skipped) of digits, cifar or an image folder."""
    if data == 'digits':
        return (*digits_samples(val_split), 0)
    if data in ('cifar10', 'cifar100'):
        return (*cifar_samples(data, data_root, download), 0)
    return folder_samples(data, val_split, strict)


def build_datasets(data: str, train_transform, eval_transform, *, data_root: str = '~/.cache/cvtlab/data',
                   download: bool = True, val_split: float = 0.2, strict: bool = False, seed: int = 0,
                   val_data: Optional[str] = None) -> DataSplit:
    """Training and validation data. `data` / `val_data`: 'digits', 'cifar10', 'cifar100' or an image folder
    (`cvtlab.datasources` adds streamed data); `val_data` replaces the validation part of `data` (its val/ folder,
    else a stratified `val_split` of it)."""
    train, val, classes, skipped = _local_samples(data, data_root, download, val_split, strict)
    if val_data is not None:
        # the whole of `data` trains; `val_data` must name the same classes
        train, (val_train, val, val_classes, more) = train + val, _local_samples(val_data, data_root, download,
                                                                                 val_split, strict)
        val, skipped = val_train + val, skipped + more
        check_same_classes(classes, val_classes, val_data)
    if not train or not val:
        raise DataError(f'{data}: no images to train or validate on')
    return DataSplit(ImageDataset(train, train_transform, strict, seed), ImageDataset(val, eval_transform, strict),
                     classes, data if val_data is None else f'{data} (val: {val_data})', skipped,
                     typical_size([item for item, _ in train]))


def check_same_classes(classes: List[str], val_classes: List[str], val_data: str):
    if list(val_classes) != list(classes):
        raise DataError(f'--val-data {val_data}: its classes {list(val_classes)[:5]} differ from the training '
                        f'classes {list(classes)[:5]}')


# --- transforms ----------------------------------------------------------------------------------------
def resolve_data_config(model, img_size: Optional[int] = None) -> dict:
    """The model's own preprocessing (size, interpolation, mean/std, crop) from its pretrained cfg."""
    from timm.data import resolve_data_config as timm_resolve
    args = {'input_size': (3, img_size, img_size)} if img_size else {}
    return timm_resolve(args, model=model)


def choose_img_size(model_size: int, data_size: Optional[int], pretrained: bool) -> int:
    """Input size when --img-size is not given: pretrained weights keep their own size; from scratch, the data's
    own size rounded up to a multiple of 16 (CvT's total stride), at least 32 and at most the model's cfg, so a
    224 px timm model trains on 28 px digits at 32 px, not blown up 8x."""
    if pretrained or data_size is None:
        return model_size
    return int(min(model_size, max(32, -(-data_size // 16) * 16)))


def build_transforms(data_config: dict, *, scale=(0.08, 1.0), hflip=0.5, auto_augment=None, color_jitter=None,
                     reprob=0.0):
    from timm.data import create_transform
    train = create_transform(
        data_config['input_size'], is_training=True, scale=tuple(scale), hflip=hflip, auto_augment=auto_augment,
        color_jitter=color_jitter, re_prob=reprob, re_mode='pixel', interpolation=data_config['interpolation'],
        mean=data_config['mean'], std=data_config['std'])
    return train, create_transform(**data_config, is_training=False)


# --- loaders -------------------------------------------------------------------------------------------
class ResumableSampler(Sampler):
    """A DistributedSampler (any world size, 1 included) that can start an epoch part-way through."""

    def __init__(self, dataset, world_size: int, rank: int, seed: int, batch_size: int):
        self.inner = DistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=True, seed=seed,
                                        drop_last=True)
        self.batch_size = batch_size
        self.skip_batches = 0

    def set_epoch(self, epoch: int, skip_batches: int = 0):
        self.inner.set_epoch(epoch)
        self.skip_batches = skip_batches

    def __iter__(self):
        indices = list(self.inner)
        return iter(indices[self.skip_batches * self.batch_size:])

    def __len__(self):
        return max(0, len(self.inner) - self.skip_batches * self.batch_size)


class EpochLoader:
    """What the trainer iterates: a loader that starts an epoch at a given batch and knows its full length.
    `cvtlab.streaming.StreamLoader` gives streamed data the same interface."""

    def __init__(self, loader: DataLoader, sampler: ResumableSampler, dataset, batches_per_epoch: int):
        self.loader, self.sampler, self.dataset = loader, sampler, dataset
        self.batches_per_epoch = batches_per_epoch

    def set_epoch(self, epoch: int, skip_batches: int = 0):
        self.sampler.set_epoch(epoch, skip_batches)
        self.dataset.epoch = epoch  # seeds the augmentation (dataset copies in workers are made per iterator)

    def __iter__(self):
        return iter(self.loader)

    def __len__(self):  # batches left in the epoch
        return len(self.loader)


def train_loader(dataset, batch_size: int, world_size: int, rank: int, seed: int, num_workers: int, pin: bool):
    sampler = ResumableSampler(dataset, world_size, rank, seed, batch_size)
    if len(sampler.inner) < batch_size:
        raise DataError(f'{len(dataset)} training images are fewer than one batch of {batch_size} per process; '
                        f'lower --batch-size')
    # drop_last: every batch full (Mixup needs an even batch; the step count is fixed for resume)
    loader = DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=num_workers, drop_last=True,
                        pin_memory=pin)
    return EpochLoader(loader, sampler, dataset, len(sampler.inner) // batch_size)


def eval_loader(dataset, batch_size: int, world_size: int = 1, rank: int = 0, num_workers: int = 0,
                pin: bool = False):
    """Each rank takes every world_size-th sample: no padding, so reduced metrics are exact."""
    subset = torch.utils.data.Subset(dataset, list(range(rank, len(dataset), world_size)))
    return DataLoader(subset, batch_size=batch_size, shuffle=False, num_workers=num_workers, pin_memory=pin)
