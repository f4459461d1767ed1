"""The picture beside a prediction on the web page: where a CvT's class token looked (attention rollout of
its last stage), or, for an LG-Transformer, where its first stage's paths contributed most (the sum of the
paths' output norms), as a heat map over the preprocessed image, PNG-encoded."""
import io

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image

__all__ = ['explainable', 'overlay_png']


def explainable(model: nn.Module) -> bool:
    """CvTs whose last stage has a class token (every registered one), and LG-Transformers."""
    from ..models.cvt import CvT
    from ..models.lg import LGTransformer
    return (isinstance(model, CvT) and model.stages[-1].cls_token is not None) or isinstance(model, LGTransformer)


def _heat_map(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """(h, w) map for one preprocessed image x (1 3 H W), from the model as built (explain hooks its modules)."""
    from ..explain import cvt_attention_maps, lg_path_maps
    from ..models.cvt import CvT
    if isinstance(model, CvT):
        return cvt_attention_maps(model, x)['rollout']
    return torch.stack(list(lg_path_maps(model, x).values())).sum(0)


def overlay_png(model: nn.Module, x: torch.Tensor, mean, std, size: int = 224) -> bytes:
    """The heat map over the image `x` (1 3 H W, normalised), `size` px on its longer side, as PNG bytes."""
    with torch.no_grad():
        heat = _heat_map(model, x).float()
    image = (x[0] * torch.tensor(std)[:, None, None] + torch.tensor(mean)[:, None, None]).clamp(0, 1)  # 3 H W
    h, w = image.shape[1:]
    scale = size / max(h, w)
    out_h, out_w = max(1, round(h * scale)), max(1, round(w * scale))
    image = F.interpolate(image[None], size=(out_h, out_w), mode='bilinear', align_corners=False)[0]
    heat = F.interpolate(heat[None, None], size=(out_h, out_w), mode='bilinear', align_corners=False)[0, 0]
    span = float(heat.max() - heat.min())
    # a map flat up to rounding (tiny models' last stage can be 2 x 2 and uniform) shows as flat, not as noise
    flat = span <= 1e-4 * float(heat.abs().max()) + 1e-12
    heat = torch.zeros_like(heat) if flat else (heat - heat.min()) / span
    from matplotlib import colormaps
    colored = torch.from_numpy(colormaps['jet'](heat.numpy())[..., :3]).permute(2, 0, 1).float()  # 3 h w
    blended = (0.55 * image + 0.45 * colored).permute(1, 2, 0).numpy()
    buffer = io.BytesIO()
    Image.fromarray((blended * 255).round().astype(np.uint8)).save(buffer, format='PNG')
    return buffer.getvalue()
