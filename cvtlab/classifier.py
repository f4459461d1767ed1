"""`Classifier`: a model with its preprocessing and label names, called on what a user holds.

The one inference path of cvtlab: `cvtlab predict`, `cvtlab eval` and the HTTP server use it.

    clf = cvtlab.Classifier.from_pretrained('runs/mine')            # a run, a folder, a file, an arch.tag, hf-hub:ID
    clf(['cat.jpg', pil_image, uint8_array, float_tensor])           # -> [Prediction(source, top, error), ...]

Items are converted to RGB images and preprocessed exactly as image files are (the model's own resize,
crop and normalisation, from its pretrained cfg): paths, PIL images of any mode, H x W x C (or H x W)
uint8 numpy arrays, and C x H x W float tensors with values in [0, 1] (taken as 8-bit images). An item
that cannot be used (None, an empty image, a wrong dtype or shape, NaN) gets an `error` saying why; the
others are still classified, in batches of `batch_size`.
"""
from dataclasses import dataclass
from pathlib import Path
from typing import List, NamedTuple, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn as nn
from PIL import Image

from .data import load_image, resolve_data_config, to_rgb
from .errors import ConfigError, DataError

__all__ = ['Classifier', 'Prediction', 'TopClass']
TTA_MODES = (None, 'flip')


class TopClass(NamedTuple):
    label: str
    index: int
    prob: float


@dataclass(frozen=True)
class Prediction:
    """One item's result: its top-k classes, most probable first, or the reason it could not be classified."""
    index: int  # position in the list given
    source: str  # the path, or what the in-memory item was ('PIL.Image RGB 64x48', 'numpy uint8 (48, 64, 3)', ...)
    top: Tuple[TopClass, ...] = ()
    error: Optional[str] = None

    @property
    def ok(self) -> bool:
        return self.error is None

    def to_dict(self) -> dict:
        return dict(index=self.index, source=self.source, top=[t._asdict() for t in self.top], error=self.error)


def describe(item) -> str:
    if item is None or isinstance(item, (str, Path)):
        return str(item)
    if isinstance(item, Image.Image):
        return f'PIL.Image {item.mode} {item.width}x{item.height}'
    if isinstance(item, np.ndarray):
        return f'numpy {item.dtype} {item.shape}'
    if isinstance(item, torch.Tensor):
        return f'tensor {str(item.dtype).removeprefix("torch.")} {tuple(item.shape)}'
    return type(item).__name__


def _from_array(arr: np.ndarray) -> Image.Image:
    if arr.dtype != np.uint8:
        raise DataError(f'numpy array of {arr.dtype}: expected uint8 pixels, H x W x C (or H x W)')
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    if not (arr.ndim == 2 or (arr.ndim == 3 and arr.shape[2] in (3, 4))):
        raise DataError(f'numpy array of shape {arr.shape}: expected H x W x C with C = 1, 3 or 4, or H x W')
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise DataError(f'empty image ({arr.shape[1]}x{arr.shape[0]} pixels)')
    return Image.fromarray(np.ascontiguousarray(arr))  # uint8 H W -> L, H W 3 -> RGB, H W 4 -> RGBA


def _from_tensor(t: torch.Tensor) -> Image.Image:
    if not t.is_floating_point():
        raise DataError(f'tensor of {t.dtype}: expected float pixels in [0, 1], C x H x W (divide uint8 by 255)')
    if t.ndim != 3 or t.shape[0] not in (1, 3):
        raise DataError(f'tensor of shape {tuple(t.shape)}: expected C x H x W with C = 1 or 3')
    if t.shape[1] == 0 or t.shape[2] == 0:
        raise DataError(f'empty image ({t.shape[2]}x{t.shape[1]} pixels)')
    t = t.detach().float().cpu()
    if not torch.isfinite(t).all():
        raise DataError('tensor holds NaN or infinite values')
    low, high = t.min().item(), t.max().item()
    if low < 0 or high > 1:
        raise DataError(f'tensor values outside [0, 1] (min {low:.3g}, max {high:.3g}): pass pixels in [0, 1], '
                        f'not normalised ones')
    pixels = (t * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()  # C H W -> H W C, 8-bit like a file
    return Image.fromarray(pixels[:, :, 0] if t.shape[0] == 1 else pixels)  # L or RGB


def to_image(item) -> Image.Image:
    """An RGB PIL image of one item, or a DataError that says why it cannot be one."""
    if item is None:
        raise DataError('None is not an image')
    if isinstance(item, (str, Path)):
        return load_image(item)
    if isinstance(item, Image.Image):
        if item.width == 0 or item.height == 0:
            raise DataError(f'empty image ({item.width}x{item.height} pixels)')
        return to_rgb(item)
    if isinstance(item, np.ndarray):
        return to_rgb(_from_array(item))
    if isinstance(item, torch.Tensor):
        return to_rgb(_from_tensor(item))
    raise DataError(f'unsupported item of type {type(item).__name__}: expected a path, a PIL image, '
                    f'an H x W x C uint8 numpy array or a C x H x W float tensor')


def label_names_of(model: nn.Module) -> Optional[List[str]]:
    """The model's class names (its pretrained cfg's), ImageNet's for 1000 classes without names, else None."""
    names = model.pretrained_cfg.get('label_names')
    if names is None and model.num_classes == 1000:
        from timm.data import ImageNetInfo
        names = ImageNetInfo().label_descriptions(as_dict=False)
    return list(names) if names is not None else None


def _check_options(fuse: bool, dtype: str, backend: str, tta: Optional[str], batch_size: int, top_k: int):
    if dtype not in ('fp32', 'bf16'):
        raise ConfigError(f"dtype must be 'fp32' or 'bf16', not {dtype!r}")
    if dtype == 'bf16' and not fuse:
        raise ConfigError('bf16 inference goes through the inference transform: drop --no-fuse')
    if dtype == 'bf16' and backend == 'onnxruntime':
        raise ConfigError('the onnxruntime backend runs fp32: drop --dtype bf16, or use --backend torch')
    if tta not in TTA_MODES:
        raise ConfigError(f"tta must be None or 'flip', not {tta!r}")
    if batch_size < 1 or top_k < 1:
        raise ConfigError('batch_size and top_k must be >= 1')


def _inference_model(model: nn.Module, fuse: bool, dtype: str, inplace: bool) -> nn.Module:
    """`fuse_for_inference(model)`, or the model as built (a copy unless `inplace`), in eval mode."""
    import copy
    from .deploy import fuse_for_inference
    if fuse:
        return fuse_for_inference(model, inplace=inplace, dtype=torch.bfloat16 if dtype == 'bf16' else torch.float32)
    return (model if inplace else copy.deepcopy(model)).eval()


class Classifier:
    """A model ready for inference (by default `fuse_for_inference`), its preprocessing and label names.

    Args:
        model: a timm classifier (cvtlab's or any); it is copied unless `inplace`.
        label_names: one per class (default: the model's own, `label_names_of`).
        data_config: preprocessing, as timm's `resolve_data_config` gives it (default: the model's).
        fuse: run `cvtlab.fuse_for_inference(model)` (same outputs within 1e-5, faster); else the model as built.
        dtype: 'fp32' or 'bf16' (through the inference transform, on CPUs with bf16 instructions).
        backend: 'torch', 'onnxruntime' (cvtlab's checked ONNX export) or 'auto' (whichever a probe at
            `batch_size` measures faster).
        batch_size: items per forward pass.
        top_k: classes per prediction (at most the number of classes).
        tta: None, or 'flip': the mean of the probabilities of each image and its mirror image.
        inplace: transform `model` itself (it can no longer train) rather than a copy.
    """

    def __init__(self, model: nn.Module, *, label_names: Optional[Sequence[str]] = None,
                 data_config: Optional[dict] = None, fuse: bool = True, dtype: str = 'fp32', backend: str = 'torch',
                 batch_size: int = 32, top_k: int = 5, tta: Optional[str] = None, inplace: bool = False):
        from timm.data import create_transform
        from .deploy.backends import choose_backend
        _check_options(fuse, dtype, backend, tta, batch_size, top_k)
        self.model_name = model.pretrained_cfg.get('architecture') or type(model).__name__
        self.num_classes = model.num_classes
        self.label_names = list(label_names) if label_names is not None else label_names_of(model)
        if self.label_names is not None and len(self.label_names) != self.num_classes:
            raise ConfigError(f'{len(self.label_names)} label names for {self.num_classes} classes')
        self.data_config = dict(data_config or resolve_data_config(model))
        self.transform = create_transform(**self.data_config, is_training=False)
        self.model, self.backend = choose_backend(_inference_model(model, fuse, dtype, inplace), backend, batch_size)
        self.dtype = 'bf16' if getattr(self.model, 'dtype', torch.float32) == torch.bfloat16 else 'fp32'
        self.batch_size, self.top_k, self.tta = batch_size, top_k, tta

    @classmethod
    def from_pretrained(cls, source, *, pretrained: bool = True, **options) -> 'Classifier':
        """A Classifier of a run directory, a model folder, a weights file, `hf-hub:ID`, a timm model name
        (`cvt_13.ms_in1k`: with its weights; random ones with `pretrained=False`), or a file written by
        `cvtlab export` (`.onnx`, fp32 or int8); `options` as in the class."""
        if str(source).endswith('.onnx'):
            return cls._from_onnx(source, **options)
        from .registry import model_from_source
        return cls(model_from_source(source, pretrained), inplace=True, **options)

    @classmethod
    def _from_onnx(cls, path, dtype: str = 'fp32', fuse: bool = True, backend: str = 'torch',
                   **options) -> 'Classifier':
        """An exported file runs in onnxruntime as exported, with the preprocessing and label names of its
        `.preprocess.json` (`fuse` and `backend` do not apply)."""
        from .deploy.backends import OnnxFileModel
        if dtype != 'fp32':
            raise ConfigError(f'{path}: an ONNX file runs as exported; --dtype {dtype} does not apply')
        model = OnnxFileModel(path)
        model.pretrained_cfg.setdefault('architecture', Path(path).stem)
        classifier = cls(model, fuse=False, inplace=True, **options)
        classifier.backend = f'onnxruntime ({model.onnx_dtype} ONNX file)'
        return classifier

    def label(self, index: int) -> str:
        return self.label_names[index] if self.label_names is not None else str(index)

    @torch.no_grad()
    def probabilities(self, images: torch.Tensor) -> torch.Tensor:
        """Softmax over the classes (B x num_classes, fp32) of a batch of preprocessed images (B x 3 x H x W)."""
        probs = self.model(images).float().softmax(-1)
        if self.tta == 'flip':
            probs = (probs + self.model(images.flip(-1)).float().softmax(-1)) / 2
        return probs

    def preprocess(self, item) -> torch.Tensor:
        """One item as the model's input (3 x H x W); DataError with the reason when it cannot be used."""
        image = to_image(item)
        try:
            return self.transform(image)
        except Exception as e:  # PIL and torchvision raise many types; one bad item must not stop the others
            raise DataError(f'cannot preprocess {describe(item)}: {type(e).__name__}: {str(e)[:120]}') from None

    def __call__(self, items: Sequence, top_k: Optional[int] = None) -> List[Prediction]:
        """A Prediction per item, in order: top-k labels and probabilities, or the error that kept it out."""
        if not isinstance(items, (list, tuple)):
            raise ConfigError(f'a Classifier is called on a list of items, not {describe(items)}: wrap one as [item]')
        k = min(top_k or self.top_k, self.num_classes)
        results: List[Optional[Prediction]] = [None] * len(items)
        for start in range(0, len(items), self.batch_size):
            ready = []  # (index, 3 H W tensor) of this batch's usable items
            for i in range(start, min(start + self.batch_size, len(items))):
                try:
                    ready.append((i, self.preprocess(items[i])))
                except DataError as e:
                    results[i] = Prediction(i, describe(items[i]), error=str(e))
            if not ready:
                continue
            probs, indices = self.probabilities(torch.stack([x for _, x in ready])).topk(k, dim=-1)
            for (i, _), p, idx in zip(ready, probs.tolist(), indices.tolist()):
                results[i] = Prediction(i, describe(items[i]), tuple(TopClass(self.label(j), j, pj)
                                                                    for j, pj in zip(idx, p)))
        return results
