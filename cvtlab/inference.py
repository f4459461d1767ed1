"""Evaluate a model on a data set, and predict labels for image files: the library side of `cvtlab eval` and
`cvtlab predict`, both on `cvtlab.Classifier`."""
import csv
import glob
import json
import os
from pathlib import Path
from typing import Iterable, List, Optional, Sequence, Tuple

import torch

from .checkpoint import atomic_write
from .classifier import Classifier, Prediction
from .data import build_datasets, folder_samples, ImageDataset, list_images
from .datasources import eval_loader
from .engine import evaluate_loader
from .errors import ConfigError, DataError


def load_classifier(checkpoint: Optional[str] = None, model: Optional[str] = None, pretrained: bool = False,
                    **options) -> Classifier:
    """`Classifier.from_pretrained` of exactly one of `checkpoint` (any source: a run, a folder, a file,
    `hf-hub:ID`) or `model` (a timm model name; random weights unless `pretrained`)."""
    if (checkpoint is None) == (model is None):
        raise ConfigError('give exactly one of --checkpoint or --model')
    if checkpoint is not None:
        return Classifier.from_pretrained(checkpoint, **options)
    return Classifier.from_pretrained(model, pretrained=pretrained, **options)


def _eval_split(data: str, transform, data_root: str, download: bool, hub_download: bool = False):
    """The data to evaluate on: digits' val split, cifar's test set, a folder's val/ (else the whole folder),
    all of a wds: stream, an hfds: data set's validation split (else its train split, or the one named)."""
    from .streaming import is_streaming, validation_part
    if is_streaming(data):
        dataset, classes = validation_part(data, hub_download=hub_download)
        dataset.transform = transform
        return dataset, classes
    if data in ('digits', 'cifar10', 'cifar100'):
        split = build_datasets(data, None, transform, data_root=data_root, download=download)
        return split.val, split.classes
    root = Path(data).expanduser()
    val = next((root / d for d in ('val', 'valid', 'validation', 'test') if (root / d).is_dir()), None)
    if val is None and not root.is_dir():
        raise DataError(f'{root}: no such data folder')
    target = val or root
    train, held_out, classes, _ = folder_samples(str(target), 0.5, strict=False)
    return ImageDataset(train + held_out, transform), classes


def evaluate(checkpoint: Optional[str] = None, data: str = 'digits', model: Optional[str] = None,
             pretrained: bool = False, batch_size: int = 64, data_root: str = '~/.cache/cvtlab/data',
             download: bool = True, output: Optional[str] = None, fuse: bool = True, dtype: str = 'fp32',
             backend: str = 'torch', hub_download: bool = False) -> dict:
    """Top-1 / top-5, per-class accuracy and the confusion matrix (PNG and JSON written to `output`).
    `hub_download`: an `hfds:` Hub name may be fetched (otherwise the HF cache only).

    `fuse`, `dtype` ('bf16': CPUs with bf16 instructions; elsewhere fp32, with a warning) and `backend` as in
    `cvtlab.Classifier`, whose model and preprocessing this runs.
    """
    clf = load_classifier(checkpoint, model, pretrained, fuse=fuse, dtype=dtype, backend=backend,
                          batch_size=batch_size)
    dataset, classes = _eval_split(data, clf.transform, data_root, download, hub_download)
    if clf.num_classes != len(classes):
        raise DataError(f'the data has {len(classes)} classes, the model {clf.num_classes}')
    names = clf.label_names
    if names is not None and len(names) == len(classes) and list(names) != list(classes):
        raise DataError(f'the data classes {classes[:4]}... differ from the checkpoint classes {list(names)[:4]}...')
    metrics = evaluate_loader(clf.model, eval_loader(dataset, batch_size), torch.device('cpu'), len(classes))
    confusion = metrics.pop('confusion')
    result = dict(checkpoint=str(checkpoint) if checkpoint else None, model=model, data=data, backend=clf.backend,
                  **metrics,
                  classes=classes, confusion=confusion.tolist())
    if output is not None:
        from .plots import plot_confusion
        out = Path(output)
        out.mkdir(parents=True, exist_ok=True)
        plot_confusion(confusion, classes, out / 'confusion.png',
                       title=f"confusion matrix: top-1 {metrics['top1']:.2f}% on {metrics['count']} images")
        (out / 'eval.json').write_text(json.dumps(result, indent=2))
        result['files'] = [str(out / 'confusion.png'), str(out / 'eval.json')]
    return result


def expand_images(inputs: Iterable[str]) -> List[Path]:
    """Files, folders (recursively) and globs -> image paths, in the order given. Missing ones: DataError."""
    paths = []
    for item in inputs:
        p = Path(item).expanduser()
        if p.is_dir():
            paths += list_images(p)
        elif p.exists():
            paths.append(p)
        elif any(ch in item for ch in '*?['):
            paths += sorted(Path(x) for x in glob.glob(os.path.expanduser(item), recursive=True))
        else:
            raise DataError(f'{item}: no such file or folder')
    if not paths:
        raise DataError('no images found in ' + ', '.join(inputs))
    return paths


PREDICTION_FORMATS = ('.csv', '.json')


def write_predictions(predictions: Sequence[Prediction], path) -> Path:
    """Predictions as CSV (columns as timm's inference.py: filename, index_i, label_i, prob_i, then error) or
    JSON (a list of `Prediction.to_dict()`), chosen by the suffix; written atomically."""
    path = Path(path)
    if path.suffix not in PREDICTION_FORMATS:
        raise ConfigError(f'{path}: predictions are written as {" or ".join(PREDICTION_FORMATS)}')
    if path.suffix == '.json':
        text = json.dumps([p.to_dict() for p in predictions], indent=2) + '\n'
        atomic_write(path, lambda tmp: Path(tmp).write_text(text))
        return path
    k = max((len(p.top) for p in predictions), default=0)
    header = ['filename'] + [f'{kind}_{i}' for kind in ('index', 'label', 'prob') for i in range(k)] + ['error']

    def write(tmp):
        with open(tmp, 'w', newline='') as f:
            rows = csv.writer(f)
            rows.writerow(header)
            for p in predictions:
                cells = [[t.index for t in p.top], [t.label for t in p.top], [f'{t.prob:.6g}' for t in p.top]]
                rows.writerow([p.source] + [c for col in cells for c in col + [''] * (k - len(col))]
                              + [p.error or ''])
    atomic_write(path, write)
    return path


def predict(images: Sequence[str], checkpoint: Optional[str] = None, model: Optional[str] = None,
            pretrained: bool = False, top_k: int = 5, batch_size: int = 32, fuse: bool = True, dtype: str = 'fp32',
            backend: str = 'torch', tta: Optional[str] = None, out: Optional[str] = None
            ) -> Tuple[List[dict], List[str]]:
    """Top-k labels with probabilities for image files, folders and globs, through `cvtlab.Classifier`.

    Returns (results, errors): unreadable images are reported, not fatal for the others; each result names the
    backend that produced it. `fuse`, `dtype`, `backend`, `tta` as in `Classifier`; `out`: also write every
    prediction, errors included, to this .csv or .json file.
    """
    if out is not None and Path(out).suffix not in PREDICTION_FORMATS:  # before any work
        raise ConfigError(f'{out}: predictions are written as {" or ".join(PREDICTION_FORMATS)}')
    paths = expand_images(images)
    clf = load_classifier(checkpoint, model, pretrained, fuse=fuse, dtype=dtype, backend=backend,
                          batch_size=batch_size, top_k=top_k, tta=tta)
    predictions = clf([str(p) for p in paths])
    if out is not None:
        write_predictions(predictions, out)
    results = [dict(image=p.source, top=[t._asdict() for t in p.top], backend=clf.backend)
               for p in predictions if p.ok]
    return results, [p.error for p in predictions if not p.ok]
