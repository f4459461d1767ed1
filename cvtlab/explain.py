"""What a model looks at: attention maps as PNG overlays (`cvtlab explain`, or the functions below).

- CvT: the cls token's attention in the last block of the last stage, per head, and attention rollout
  (Abnar & Zuidema, 2020) over the last stage's blocks. CvT's keys are strided by 2, so each key token
  summarises a 2x2 cell of query positions; for rollout its weight is spread evenly over that cell.
- LG-Transformer: for the last block of the first stage, how much each path (local windows, pooled by 2,
  4, 8) contributes at every position: the L2 norm of that path's output, before they are summed.

Attention probabilities are recomputed in fp32 from the q, k and scale that reach
`F.scaled_dot_product_attention`, so the model code keeps its fused kernel.
"""
import contextlib
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from .errors import ConfigError


@contextlib.contextmanager
def record_attention():
    """Within the block, every SDPA call also appends its softmax probabilities (B, heads, Nq, Nk)."""
    records: List[torch.Tensor] = []
    original = F.scaled_dot_product_attention

    def recording(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, **kwargs):
        logits = (q.float() @ k.float().transpose(-2, -1)) * (scale if scale is not None else q.shape[-1] ** -0.5)
        if attn_mask is not None:
            logits = logits.masked_fill(~attn_mask, float('-inf')) if attn_mask.dtype == torch.bool \
                else logits + attn_mask.float()
        records.append(logits.softmax(dim=-1).detach())
        return original(q, k, v, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal, scale=scale,
                        **kwargs)

    F.scaled_dot_product_attention = recording
    try:
        yield records
    finally:
        F.scaled_dot_product_attention = original


@torch.no_grad()
def cvt_attention_maps(model: nn.Module, image: torch.Tensor) -> Dict[str, torch.Tensor]:
    """For a CvT and one preprocessed image (1, 3, H, W): 'heads' (h, Hk, Wk) cls attention of the last
    block over its key grid, and 'rollout' (Hq, Wq) over the last stage's query grid."""
    stage = model.stages[-1]
    if stage.cls_token is None:
        raise ConfigError('attention maps need a cls token in the last stage')
    grid = {}
    hook = stage.register_forward_hook(lambda m, i, out: grid.update(hw=out[0].shape[-2:]))  # (map, cls)
    with record_attention() as records:
        model.eval()(image)
    hook.remove()
    Hq, Wq = grid['hw']
    Hk, Wk = -(-Hq // 2), -(-Wq // 2)
    probs = [p[0] for p in records[-len(stage.blocks):]]  # each (h, 1 + Hq Wq, 1 + Hk Wk)
    heads = probs[-1][:, 0, 1:].reshape(-1, Hk, Wk)
    # key token (kh, kw) summarises query cell rows 2kh..2kh+1, cols 2kw..2kw+1 (clipped to the grid)
    rows, cols = torch.arange(Hq) // 2, torch.arange(Wq) // 2
    cell_size = torch.zeros(Hk, Wk).index_put_((rows[:, None].expand(Hq, Wq), cols[None, :].expand(Hq, Wq)),
                                               torch.ones(Hq, Wq), accumulate=True)
    rollout = torch.eye(1 + Hq * Wq)
    for p in probs:
        a = p.mean(dim=0)  # average heads: (1 + Nq, 1 + Nk)
        keys = a[:, 1:].reshape(-1, Hk, Wk)
        spread = keys[:, rows][:, :, cols] / cell_size[rows][:, cols]  # (1 + Nq, Hq, Wq)
        square = torch.cat([a[:, :1], spread.flatten(1)], dim=1)  # (1 + Nq, 1 + Nq), rows still sum to 1
        rollout = (0.5 * square + 0.5 * torch.eye(square.shape[0])) @ rollout  # 0.5 I: the residual path
    return dict(heads=heads, rollout=rollout[0, 1:].reshape(Hq, Wq))


@torch.no_grad()
def lg_path_maps(model: nn.Module, image: torch.Tensor, stage_index: int = 0) -> Dict[str, torch.Tensor]:
    """For an LG-Transformer: {'rate r': (H, W)} L2 norm of each path's output in a stage's last block."""
    attn = model.stages[stage_index].blocks[-1].attn
    outputs = {}
    hooks = [path.register_forward_hook(lambda m, i, out: outputs.update({f'rate {m.rate}': out[0].norm(dim=-1)}))
             for path in attn.paths]
    try:
        model.eval()(image)
    finally:
        for h in hooks:
            h.remove()
    return outputs


def _overlay_png(image: np.ndarray, maps: Dict[str, torch.Tensor], path: Path, title: str) -> Path:
    from .plots import plt
    n = len(maps) + 1
    cols = min(n, 4)
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 3.4 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis('off')
    axes.flat[0].imshow(image)
    axes.flat[0].set_title('input (preprocessed)')
    h, w = image.shape[:2]
    for ax, (name, m) in zip(list(axes.flat)[1:], maps.items()):
        m = F.interpolate(m[None, None].float(), size=(h, w), mode='bilinear', align_corners=False)[0, 0]
        span = float(m.max() - m.min())
        m = (m - m.min()) / span if span > 1e-8 else torch.zeros_like(m)  # a constant map shows as flat
        ax.imshow(image)
        ax.imshow(m.numpy(), cmap='jet', alpha=0.5)
        ax.set_title(name)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def explain(image_path: str, checkpoint: Optional[str] = None, model: Optional[str] = None,
            pretrained: bool = False, output: str = '.') -> dict:
    """Attention (CvT) or path-contribution (LG) maps for one image, written as a PNG overlay."""
    from .data import load_image
    from .inference import load_classifier
    clf = load_classifier(checkpoint, model, pretrained, fuse=False)  # the hooks read the model's own modules
    net, cfg = clf.model, clf.data_config
    x = clf.transform(load_image(image_path))[None]
    shown = (x[0].permute(1, 2, 0) * torch.tensor(cfg['std']) + torch.tensor(cfg['mean'])).clamp(0, 1).numpy()
    probs = clf.probabilities(x)[0]
    top = int(probs.argmax())
    label = clf.label(top)
    if hasattr(net, 'stages') and hasattr(net.stages[-1], 'cls_token'):
        raw = cvt_attention_maps(net, x)
        maps = {f'cls attention, head {i}': m for i, m in enumerate(raw['heads'])}
        maps['attention rollout (last stage)'] = raw['rollout']
        kind = 'cvt'
    elif hasattr(net, 'set_global_paths'):
        raw = lg_path_maps(net, x)
        maps = {f'path contribution, {k}': v for k, v in raw.items()}
        kind = 'lg'
    else:
        raise ConfigError(f'explain supports CvT and LG-Transformer models, not {type(net).__name__}')
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    png = _overlay_png(shown, maps, out / f'explain_{Path(image_path).stem}.png',
                       f'{Path(image_path).name}: predicted {label} ({float(probs[top]):.2f})')
    return dict(kind=kind, png=str(png), predicted=label, prob=float(probs[top]),
                maps={k: v.numpy() for k, v in maps.items()})
