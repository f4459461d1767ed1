"""PNG plots of a run: loss, accuracy and learning rate per epoch; confusion matrices."""
from pathlib import Path
from typing import List, Sequence

import matplotlib

matplotlib.use('Agg')  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def plot_history(history: List[dict], path) -> Path:
    epochs = [h['epoch'] for h in history]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    axes[0].plot(epochs, [h['train_loss'] for h in history], label='train')
    axes[0].plot(epochs, [h['val_loss'] for h in history], label='val')
    axes[0].set(title='loss', xlabel='epoch')
    axes[1].plot(epochs, [h['val_top1'] for h in history], label='top-1')
    axes[1].plot(epochs, [h['val_top5'] for h in history], label='top-5')
    axes[1].set(title='validation accuracy (%)', xlabel='epoch')
    axes[2].plot(epochs, [h['lr'] for h in history])
    axes[2].set(title='learning rate (end of epoch)', xlabel='epoch')
    for ax in axes[:2]:
        ax.legend()
    for ax in axes:
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)


def plot_confusion(matrix: np.ndarray, classes: Sequence[str], path, title: str = 'confusion matrix') -> Path:
    n = len(classes)
    size = min(20, max(5, 0.5 * n))
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(matrix, cmap='Blues')
    if n <= 40:
        ax.set_xticks(range(n), classes, rotation=90)
        ax.set_yticks(range(n), classes)
        for (i, j), v in np.ndenumerate(matrix):
            if v:
                ax.text(j, i, str(v), ha='center', va='center', fontsize=8,
                        color='white' if v > matrix.max() / 2 else 'black')
    ax.set(xlabel='predicted', ylabel='true', title=title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)
