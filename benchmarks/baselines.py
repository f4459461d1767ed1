"""Baselines on real offline data: cvtlab's small models against timm baselines and a plain small CNN.

Every model trains through one command, `cvtlab train --data DATA --model MODEL --epochs E` with the default
recipe and nothing else (timm models too, at the data's size); the plain CNN (two convs, Adam, no
augmentation, the same epochs and batch) is the reference a default should at least match. Data: `digits`
(built in) and the image folders of `offline_datasets.py`.

    python benchmarks/baselines.py --epochs 3 10 --out benchmarks/results/baselines.jsonl
    python benchmarks/baselines.py --report benchmarks/results/baselines.jsonl   # the table of a results file

prints one markdown row per (data, model, epochs): final val top-1, best top-1, training wall time (the
training loops, evaluation excluded) and training images/s. The machine is shared: img/s and wall times
drift between runs; accuracies repeat exactly for a fixed seed on one machine.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))
from offline_datasets import LOADERS, export_folder  # noqa: E402

MODELS = ['cvt_tiny_stem', 'cvt_tiny_kv1', 'cvt_tiny', 'lg_nano', 'resnet18', 'vit_tiny_patch16_224', 'plain_cnn']
DATASETS = ['digits', 'mnist5k', 'animals10k']


class PlainCNN(nn.Module):
    """Two 3x3 convs (32, 64 channels) with ReLU and 2x2 max-pooling, then a 128-unit hidden layer."""

    def __init__(self, in_chans: int, num_classes: int, img_size: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_chans, 32, 3, padding=1)
        self.conv2 = nn.Conv2d(32, 64, 3, padding=1)
        self.fc1 = nn.Linear(64 * (img_size // 4) ** 2, 128)
        self.fc2 = nn.Linear(128, num_classes)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)  # b 64 h/4 w/4
        return self.fc2(F.relu(self.fc1(x.flatten(1))))


def _tensors(samples, classes_dir=None):
    """Greyscale images in [0, 1] (B x 1 x H x W) and labels, from (image or path, label) samples."""
    images = [np.asarray((s if isinstance(s, Image.Image) else Image.open(s)).convert('L'), dtype=np.float32) / 255
              for s, _ in samples]
    return torch.from_numpy(np.stack(images))[:, None], torch.tensor([label for _, label in samples])


def plain_cnn(data: str, epochs: int, batch_size: int = 64, seed: int = 0) -> dict:
    """Train the plain CNN with Adam (lr 1e-3), no augmentation; final val top-1 on the same split as cvtlab's."""
    from cvtlab.data import build_datasets
    split = build_datasets(data, None, None)
    x_train, y_train = _tensors(split.train.samples)
    x_val, y_val = _tensors(split.val.samples)
    torch.manual_seed(seed)
    model = PlainCNN(1, len(split.classes), x_train.shape[-1])
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    generator = torch.Generator().manual_seed(seed)
    train_seconds, images = 0.0, 0
    for _ in range(epochs):
        model.train()
        t0 = time.perf_counter()
        order = torch.randperm(len(y_train), generator=generator)
        for i in range(0, len(order) - batch_size + 1, batch_size):  # full batches, as cvtlab's loader
            idx = order[i:i + batch_size]
            loss = F.cross_entropy(model(x_train[idx]), y_train[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            images += len(idx)
        train_seconds += time.perf_counter() - t0
    model.eval()
    with torch.no_grad():
        top1 = (model(x_val).argmax(1) == y_val).float().mean().item() * 100
    return dict(final_top1=top1, best_top1=top1, wall_time_s=train_seconds, images_per_sec=images / train_seconds)


def cvtlab_train(data: str, model: str, epochs: int, workdir: Path, extra=()) -> dict:
    """`cvtlab train --data DATA --model MODEL --epochs E` in a fresh process; its summary.json."""
    out = workdir / f'{Path(data).name}-{model}-{epochs}'
    cmd = [sys.executable, '-m', 'cvtlab', 'train', '--data', data, '--model', model, '--epochs', str(epochs),
           '--output', str(out), '--quiet', *extra]
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f'{" ".join(cmd)} failed:\n{result.stderr[-2000:]}')
    return json.loads((out / 'summary.json').read_text())


def report(path: str) -> str:
    """The markdown table of a results file (JSON lines), grouped by data set and epochs."""
    rows = [json.loads(line) for line in open(path) if line.strip()]
    data_order = {d: i for i, d in enumerate(DATASETS)}
    model_order = {m: i for i, m in enumerate(MODELS)}
    rows.sort(key=lambda r: (data_order.get(r['data'], 99), r['epochs'], model_order.get(r['model'], 99)))
    lines = ['| data | model | epochs | val top-1 (final) | best epoch | train wall s | train img/s |',
             '|---|---|---:|---:|---:|---:|---:|']
    for r in rows:
        name = 'plain CNN (reference)' if r['model'] == 'plain_cnn' else f"`{r['model']}`"
        lines.append(f"| {r['data']} | {name} | {r['epochs']} | {r['final_top1']:.2f} | {r['best_top1']:.2f} | "
                     f"{r['wall_time_s']:.0f} | {r['images_per_sec']:.0f} |")
    return '\n'.join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--data', nargs='+', default=DATASETS, help=f'data sets ({", ".join(DATASETS)})')
    parser.add_argument('--models', nargs='+', default=MODELS, help='timm / cvtlab models, or plain_cnn')
    parser.add_argument('--epochs', nargs='+', type=int, default=[3, 10])
    parser.add_argument('--data-root', default='~/.cache/cvtlab/bench', help='where the image folders are written')
    parser.add_argument('--out', help='append the results as JSON lines to this file')
    parser.add_argument('--extra', default='', help='more `cvtlab train` flags, e.g. "--num-workers 2"')
    parser.add_argument('--report', metavar='FILE', help='only print the table of a results file (--out) and exit')
    args = parser.parse_args(argv)
    if args.report:
        print(report(args.report))
        return
    print('| data | model | epochs | final top-1 | best top-1 | train wall s | img/s |')
    print('|---|---|---:|---:|---:|---:|---:|')
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.data:
            data = name if name not in LOADERS else str(export_folder(name, args.data_root))
            for epochs in args.epochs:
                for model in args.models:
                    if model == 'plain_cnn':
                        r = plain_cnn(data, epochs)
                    else:
                        r = cvtlab_train(data, model, epochs, Path(tmp), args.extra.split())
                    row = dict(data=name, model=model, epochs=epochs, **{k: r[k] for k in (
                        'final_top1', 'best_top1', 'wall_time_s', 'images_per_sec')})
                    print(f"| {name} | {model} | {epochs} | {row['final_top1']:.2f} | {row['best_top1']:.2f} | "
                          f"{row['wall_time_s']:.0f} | {row['images_per_sec']:.0f} |", flush=True)
                    if args.out:
                        with open(args.out, 'a') as f:
                            f.write(json.dumps(row) + '\n')


if __name__ == '__main__':
    main()
