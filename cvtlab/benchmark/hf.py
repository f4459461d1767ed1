"""cvtlab's CvT against the same CvT in HF transformers (same weights), timed side by side (`--compare hf`)."""
import copy
from dataclasses import replace
from typing import List, Optional, Tuple

import torch
import torch.nn as nn

from ..errors import ConfigError
from ..flops import count_macs
from .measure import default_img_size, gmacs, matmul_rate
from .subjects import DTYPES, BenchSettings, check_settings, finish_row, measure_subjects, prepare, settings_fields, Subject


def hf_twin(model: nn.Module) -> nn.Module:
    """HF transformers' CvtForImageClassification with `model`'s config, weights copied from HF into `model`.

    The HF model is built randomly and its weights loaded into ours through `cvtlab.convert.to_cvtlab`
    (same weights either way). HF keeps its exact GELU, so its logits differ from ours by ~0.03 (the
    official model uses QuickGELU); `hf_max_abs_diff` checks equality with QuickGELU swapped in.
    """
    try:
        import transformers
    except ImportError:
        raise ConfigError('--compare hf needs HF transformers: pip install transformers') from None
    from ..convert import to_cvtlab
    from ..models.cvt import CvT
    if not isinstance(model, CvT):
        raise ConfigError('--compare hf works for the CvT family (cvt_*) only')
    stages = model.stages
    if any(len(s.blocks) <= i for i, s in enumerate(stages)):
        raise ConfigError('HF transformers cannot build this CvT: its stage i needs more than i blocks '
                          '(it indexes drop-path rates by stage)')
    config = transformers.CvtConfig(
        embed_dim=[s.patch_embed.proj.out_channels for s in stages], depth=[len(s.blocks) for s in stages],
        num_heads=[s.blocks[0].attn.num_heads for s in stages], num_labels=max(model.num_classes, 1),
        cls_token=[s.cls_token is not None for s in stages],
        drop_path_rate=[0.0] * len(stages))  # HF indexes its rates by stage (breaks when depth <= stage index)
    hf = transformers.CvtForImageClassification(config).eval()
    model.load_state_dict(to_cvtlab(hf.state_dict()))
    return hf


def hf_logits(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """An HF image classifier's logits for images `x` (HF models take keyword inputs, return an output object)."""
    return model(pixel_values=x).logits


def hf_max_abs_diff(model: nn.Module, hf: nn.Module, img_size: Tuple[int, int]) -> float:
    """Largest logit difference on a random batch of 2, HF's GELU temporarily swapped for QuickGELU."""
    from timm.layers import QuickGELU
    swapped = [(m, m.activation) for m in hf.modules() if isinstance(getattr(m, 'activation', None), nn.GELU)]
    x = torch.randn(2, 3, *img_size)
    try:
        for m, _ in swapped:
            m.activation = QuickGELU()
        with torch.no_grad():
            return (model.eval()(x) - hf_logits(hf.eval(), x)).abs().max().item()
    finally:
        for m, act in swapped:
            m.activation = act


def compare_hf(name: str, settings: BenchSettings = BenchSettings(), model_args: Optional[dict] = None,
               hf_dtype: Optional[str] = None, hf_eager: bool = False) -> List[dict]:
    """cvtlab's `name` and the same CvT in HF transformers, same weights, interleaved in one run.

    `model_args` overrides the variant's architecture (e.g. a tiny config in tests); `hf_dtype` runs HF
    in another dtype than ours (e.g. ours bf16 against HF fp32); `hf_eager` leaves HF uncompiled when
    `settings.compile` compiles ours (what an HF user runs today).
    Returns [ours, hf]; ours carries the ratios `*_vs_hf` (speed: ours / HF; memory: ours / HF).
    """
    s = settings
    check_settings(name, s)
    res = s.img_size or default_img_size(name)
    img_size = (res, res)
    import timm
    # as the HF twin: no stochastic depth
    model = timm.create_model(name, **{**(model_args or {}), 'drop_path_rate': 0.0}).eval()
    hf = hf_twin(model)
    diff = hf_max_abs_diff(model, hf, img_size)
    params = sum(p.numel() for p in model.parameters())
    macs = gmacs(name, img_size, model) if not model_args else count_macs(model, (3, *img_size)) / 1e9
    hf_label = f'hf:{name}'
    hf_settings = replace(s, fuse=False, grad_checkpointing=False, dtype=hf_dtype or s.dtype,  # HF has neither
                          compile=s.compile and not hf_eager)
    subjects = [
        Subject(name, prepare(copy.deepcopy(model), s, False),
                 prepare(copy.deepcopy(model), s, True) if s.train else None),
        Subject(hf_label, prepare(copy.deepcopy(hf), hf_settings, False),
                 prepare(copy.deepcopy(hf), hf_settings, True) if s.train else None, hf_logits,
                 hf_settings.dtype),
    ]
    del model, hf
    rows, limits = measure_subjects(subjects, s, img_size)
    ours = finish_row(dict(model=name, **settings_fields(s), **rows[name]), macs, limits, params)
    if hf_settings.dtype != s.dtype:  # HF in another dtype: its own torch.matmul rate, measured apart
        limits = {f'{hf_settings.dtype} torch.matmul': matmul_rate(DTYPES[hf_settings.dtype], s.device)}
    theirs = finish_row(dict(model=hf_label, **settings_fields(hf_settings), **rows[hf_label]), macs, limits, params)
    ours['hf_max_abs_diff'] = diff
    for key, ratio in [('infer_samples_per_sec', 'infer_vs_hf'), ('train_samples_per_sec', 'train_vs_hf'),
                       ('infer_latency_ms', 'latency_vs_hf'), ('infer_peak_mem_mb', 'infer_mem_vs_hf'),
                       ('train_peak_mem_mb', 'train_mem_vs_hf')]:
        if ours.get(key) is not None and theirs.get(key):
            ours[ratio] = ours[key] / theirs[key]
    return [ours, theirs]
