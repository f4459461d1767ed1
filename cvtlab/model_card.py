"""The README.md (HF model card) that `cvtlab push` uploads beside a model folder: what the model is, the paper,
the data, the metrics of its training run, its preprocessing, the command that trained it, and how to load it."""
import math
from pathlib import Path
from typing import Optional

import torch.nn as nn

# model class -> (paper, arXiv id)
PAPERS = {
    'CvT': ('CvT: Introducing Convolutions to Vision Transformers (Wu et al., 2021)', '2103.15808'),
    'LGTransformer': ('Local-to-Global Self-Attention in Vision Transformers (Li et al., 2021); cvtlab implements a '
                      'clean-room reconstruction, no official code exists', '2107.04735'),
}
HUB_DATASETS = {'cifar10': 'cifar10', 'cifar100': 'cifar100'}  # cvtlab data names that are HF Hub data sets


def _front_matter(model: nn.Module, data: Optional[str]) -> str:
    lines = ['---', 'library_name: timm', 'pipeline_tag: image-classification',
             f"license: {model.pretrained_cfg.get('license') or 'other'}", 'tags:',
             '- image-classification', '- timm', '- cvtlab']
    if data in HUB_DATASETS:
        lines += ['datasets:', f'- {HUB_DATASETS[data]}']
    return '\n'.join(lines + ['---'])


def _preprocessing(cfg: dict) -> str:
    """timm's eval transform in words (`transforms_imagenet_eval`: scale = floor(size / crop_pct))."""
    _, h, w = cfg['input_size']
    crop, mode = cfg['crop_pct'], cfg.get('crop_mode', 'center')
    if mode == 'squash':
        resize = f'resize to {math.floor(h / crop)} x {math.floor(w / crop)}' + (
            f', centre crop {h} x {w}' if crop < 1 else '')
    elif mode == 'border':
        resize = f'resize the long side to {h}, pad to {h} x {w}'
    else:
        resize = f'resize the short side to {math.floor(h / crop)}, centre crop {h} x {w}'
    mean, std = (', '.join(f'{v:.3f}' for v in cfg[k]) for k in ('mean', 'std'))
    return f"{resize}, {cfg['interpolation']}; RGB in [0, 1], normalised with mean ({mean}) and std ({std})"


def _training(summary: Optional[dict], command: Optional[str]) -> list:
    """The run's accuracy and command; a local data path in the command shows as its last part only, as on
    the Data line (the card is public; a path names a user's machine)."""
    if summary is None:
        return ['- **Training run:** not recorded (pushed from a model folder, not a cvtlab training run)']
    top5 = f", top-5 {summary['best_top5']:.2f}%" if summary.get('best_top5') is not None else ''
    lines = [f"- **Validation accuracy:** top-1 {summary['best_top1']:.2f}%{top5} (best of {summary['epochs']} "
             f"epochs, epoch {summary['best_epoch']}; final epoch top-1 {summary['final_top1']:.2f}%)"]
    data = summary.get('data')
    if command and data and Path(data).name and Path(data).name != data:
        command = command.replace(str(data), Path(data).name)
    if command:
        lines.append(f'- **Trained with:** `{command}`')
    return lines


def model_card(repo_id: str, model: nn.Module, summary: Optional[dict] = None, command: Optional[str] = None) -> str:
    """Markdown with YAML front matter. `summary` is a run's summary.json, `command` the `cvtlab train` command
    that made it (`cvtlab.config.command_line`); without them the card says no run was recorded."""
    from timm.data import resolve_data_config
    paper, arxiv = PAPERS.get(type(model).__name__, (None, None))
    arch = model.pretrained_cfg.get('architecture', type(model).__name__)
    labels = list(model.pretrained_cfg.get('label_names') or [])
    data = (summary or {}).get('data')
    shown = ', '.join(f'`{n}`' for n in labels[:10]) + (f', ... ({len(labels)} in all)' if len(labels) > 10 else '')
    details = [
        f'- **Architecture:** `{arch}`, {sum(p.numel() for p in model.parameters()):,} parameters'
        + (f'; paper: {paper}, [arXiv {arxiv}](https://arxiv.org/abs/{arxiv})' if paper else ''),
        f'- **Classes:** {model.num_classes}' + (f' ({shown})' if labels else ''),
        f"- **Data:** {Path(data).name or data}" if data else '- **Data:** not recorded',
        f'- **Preprocessing:** {_preprocessing(resolve_data_config({}, model=model))}',
        *_training(summary, command),
    ]
    usage = (
        'Load it after `import cvtlab`, which registers its architecture with timm:\n\n'
        '```python\nimport cvtlab, timm\n'
        f"model = timm.create_model('hf-hub:{repo_id}', pretrained=True).eval()\n```\n\n"
        '```python\nimport cvtlab\nfrom transformers import pipeline\n'
        f"classify = pipeline('image-classification', model='{repo_id}')\n```\n\n"
        '```python\nimport cvtlab\n'
        f"classifier = cvtlab.Classifier.from_pretrained('hf-hub:{repo_id}')  # paths, PIL images, arrays, tensors\n"
        '```\n')
    return '\n'.join([_front_matter(model, data), f'# {repo_id.split("/")[-1]}', '',
                      f'An image classifier trained with cvtlab on {Path(data).name or data}.'
                      if data else 'An image classifier saved with cvtlab.', '', '## Model details', *details, '',
                      '## Usage', usage])
