"""Evaluate a checkpoint on a data set, and predict labels for image files: the library side of
`cvtlab eval` and `cvtlab predict`."""
import glob
import json
import os
from pathlib import Path
from typing import Iterable, List, Optional, Sequence, Tuple

import torch

from .checkpoint import RUN_WEIGHT_FILES, resolve_weights_file
from .data import build_datasets, folder_samples, ImageDataset, list_images, load_image, resolve_data_config
from .engine import evaluate_loader, predict_batch
from .errors import ConfigError, DataError
from .sources import eval_loader


def load_classifier(checkpoint: Optional[str] = None, model: Optional[str] = None, pretrained: bool = False,
                    fuse: bool = False, dtype: str = 'fp32', backend: str = 'torch', batch_size: int = 32):
    """(model in eval mode, class names or None) from a checkpoint, or from a timm model name.

    With `fuse` the model comes back as `cvtlab.fuse_for_inference(model)` (same outputs within 1e-5,
    faster on CPU, eval only), as `evaluate` and `predict` ask by default; without it, the model as built
    (what `explain` needs: its hooks read the model's own modules). `backend` 'onnxruntime' runs cvtlab's
    ONNX export of that model in onnxruntime, 'auto' whichever a short probe at `batch_size` measures faster;
    the model then carries `backend` (what runs, and for 'auto' why).
    """
    from .registry import create_model, load_model
    if (checkpoint is None) == (model is None):
        raise ConfigError('give exactly one of --checkpoint or --model')
    if checkpoint is not None:
        net = load_model(resolve_weights_file(checkpoint, RUN_WEIGHT_FILES))
    else:
        net = create_model(model, pretrained=pretrained)
    names = net.pretrained_cfg.get('label_names')
    if names is None and net.num_classes == 1000:
        from timm.data import ImageNetInfo
        names = ImageNetInfo().label_descriptions(as_dict=False)
    labels = list(names) if names is not None else None
    if dtype not in ('fp32', 'bf16'):
        raise ConfigError(f"dtype must be 'fp32' or 'bf16', not {dtype!r}")
    if dtype == 'bf16' and not fuse:
        raise ConfigError('bf16 inference goes through the inference transform: drop --no-fuse')
    if dtype == 'bf16' and backend == 'onnxruntime':
        raise ConfigError('the onnxruntime backend runs fp32: drop --dtype bf16, or use --backend torch')
    if fuse:
        import torch
        from .deploy import fuse_for_inference
        torch_dtype = torch.bfloat16 if dtype == 'bf16' else torch.float32
        net = fuse_for_inference(net, inplace=True, dtype=torch_dtype)
    from .deploy.backends import choose_backend
    net, note = choose_backend(net.eval(), backend, batch_size)
    net.backend = note
    return net, labels


def _eval_split(data: str, transform, data_root: str, download: bool):
    """The data to evaluate on: digits' val split, cifar's test set, a folder's val/ (else the whole folder),
    all of a wds: stream, an hfds: data set's validation split (else its train split, or the one named)."""
    from .streaming import is_streaming, validation_part
    if is_streaming(data):
        dataset, classes = validation_part(data)
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
             backend: str = 'torch') -> dict:
    """Top-1 / top-5, per-class accuracy and the confusion matrix (PNG and JSON written to `output`).

    `fuse`: run `cvtlab.fuse_for_inference(model)` (the default), else the model as built; `dtype` 'bf16':
    in bf16 (CPUs with bf16 instructions; elsewhere fp32, with a warning); `backend` as in `load_classifier`.
    """
    from timm.data import create_transform
    net, names = load_classifier(checkpoint, model, pretrained, fuse, dtype, backend, batch_size)
    transform = create_transform(**resolve_data_config(net), is_training=False)
    dataset, classes = _eval_split(data, transform, data_root, download)
    if net.num_classes != len(classes):
        raise DataError(f'the data has {len(classes)} classes, the model {net.num_classes}')
    if names is not None and len(names) == len(classes) and list(names) != list(classes):
        raise DataError(f'the data classes {classes[:4]}... differ from the checkpoint classes {list(names)[:4]}...')
    metrics = evaluate_loader(net, eval_loader(dataset, batch_size), torch.device('cpu'), len(classes))
    confusion = metrics.pop('confusion')
    result = dict(checkpoint=str(checkpoint) if checkpoint else None, model=model, data=data, backend=net.backend,
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


def predict(images: Sequence[str], checkpoint: Optional[str] = None, model: Optional[str] = None,
            pretrained: bool = False, top_k: int = 5, batch_size: int = 32,
            fuse: bool = True, dtype: str = 'fp32', backend: str = 'torch') -> Tuple[List[dict], List[str]]:
    """Top-k labels with probabilities per image, with the model's own preprocessing.

    Returns (results, errors): unreadable images are reported, not fatal for the others. `fuse`: run
    `cvtlab.fuse_for_inference(model)` (the default), else the model as built; `dtype` as in `evaluate`;
    `backend` as in `load_classifier` (each result names the backend that produced it).
    """
    from timm.data import create_transform
    net, names = load_classifier(checkpoint, model, pretrained, fuse, dtype, backend, batch_size)
    transform = create_transform(**resolve_data_config(net), is_training=False)
    results, errors, batch, paths = [], [], [], []

    def flush():
        if not batch:
            return
        probs, idx = predict_batch(net, torch.stack(batch), top_k)
        for path, p, i in zip(paths, probs.tolist(), idx.tolist()):
            labels = [names[j] if names is not None else str(j) for j in i]
            results.append(dict(image=str(path), top=[dict(label=lb, index=j, prob=pr)
                                                      for lb, j, pr in zip(labels, i, p)], backend=net.backend))
        batch.clear()
        paths.clear()

    for path in expand_images(images):
        try:
            batch.append(transform(load_image(path)))
            paths.append(path)
        except DataError as e:
            errors.append(str(e))
        if len(batch) >= batch_size:
            flush()
    flush()
    return results, errors
