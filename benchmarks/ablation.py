"""What each CvT-13 inference change gained, measured side by side in one process (interleaved, medians).

Variants: `before` = cvt.py as of commit bf8470c (before the speed work), `layout` = current code without
fusing (channels_last token<->map views, no cat without a cls token), `fused` = + `fuse_for_inference`
(BN folded, QuickGELU as one SiLU), `fused_bf16` = + bf16 autocast, `fused_compiled` = + torch.compile.
Usage: .venv/bin/python benchmarks/ablation.py [--batch-size 16] [--img-size 224] [--repeats 5] [--compile]
"""
import argparse
import importlib.util
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import timm
import torch

import cvtlab  # noqa: F401  (registers the models)
from cvtlab.models.cvt import fuse_for_inference

BEFORE = 'bf8470c'


def old_cvt_class():
    """The CvT class from the `BEFORE` commit, imported under another name (its registration stripped)."""
    root = Path(__file__).resolve().parents[1]
    src = subprocess.run(['git', 'show', f'{BEFORE}:cvtlab/models/cvt.py'], cwd=root, check=True,
                         capture_output=True, text=True).stdout
    src = src.replace('from ..layers', 'from cvtlab.layers').replace('@register_model\n', '')
    path = Path(tempfile.mkdtemp()) / 'cvt_before.py'
    path.write_text(src)
    spec = importlib.util.spec_from_file_location('cvt_before', path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.CvT


def main():
    p = argparse.ArgumentParser()
    p.add_argument('--batch-size', type=int, default=16)
    p.add_argument('--img-size', type=int, default=224)
    p.add_argument('--repeats', type=int, default=5)
    p.add_argument('--compile', action='store_true')
    args = p.parse_args()
    torch.manual_seed(0)
    new = timm.create_model('cvt_13').eval()
    with torch.no_grad():  # non-trivial BN statistics, so that folding them is exercised
        for name, b in new.named_buffers():
            if name.endswith('running_var'):
                b.uniform_(0.5, 1.5)
            elif name.endswith('running_mean'):
                b.normal_(0, 0.1)
    before = old_cvt_class()().eval()
    before.load_state_dict(new.state_dict())
    fused = fuse_for_inference(new)
    variants = {'before': (before, False), 'layout': (new, False), 'fused': (fused, False),
                'fused_bf16': (fused, True)}
    if args.compile:
        variants['fused_compiled'] = (torch.compile(fused, fullgraph=True, dynamic=False), False)
    x = torch.randn(args.batch_size, 3, args.img_size, args.img_size)

    def run(model, bf16):
        with torch.inference_mode(), torch.autocast('cpu', torch.bfloat16, enabled=bf16):
            return model(x)

    ref = run(before, False)
    diffs = {k: (run(m, bf16).float() - ref).abs().max().item() for k, (m, bf16) in variants.items()}
    times = {k: [] for k in variants}
    for _ in range(args.repeats):
        for k, (m, bf16) in variants.items():
            start = time.perf_counter()
            run(m, bf16)
            times[k].append(time.perf_counter() - start)
    base = statistics.median(times['before'])
    rows = [dict(variant=k, img_per_sec=args.batch_size / statistics.median(t), speedup_vs_before=base / statistics.median(t),
                 max_abs_diff_vs_before=diffs[k]) for k, t in times.items()]
    for r in rows:
        print(f"{r['variant']:15s} {r['img_per_sec']:7.2f} img/s  x{r['speedup_vs_before']:.3f}  "
              f"max|diff| {r['max_abs_diff_vs_before']:.1e}")
    print(json.dumps(dict(settings=vars(args), torch=torch.__version__, results=rows)), file=sys.stderr)


if __name__ == '__main__':
    main()
