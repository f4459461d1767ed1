"""What a change gained: cvtlab as checked out against cvtlab at an earlier commit, side by side in one process.

The earlier package comes out of git (`git archive`) and is imported under another name, so both versions
run interleaved (A B A B ..., medians) on the same weights and the same input. Inference runs each
version's `fuse_for_inference`: the checked-out one for every family; an earlier one with the old API
(`compile_for_inference` without `fuse=`) for CvT models only, LG models as they are, in eval mode, as it
was used then. `--train` times one forward + backward instead; `--compile` compiles both (static shapes;
inference through each version's own `compile_for_inference`, or, for versions before it, `FrozenCompiled`
of the whole model). `--bf16` fuses both in bf16 (`fuse_for_inference(dtype=torch.bfloat16)`; earlier versions
that have that argument). `--compare-hf` (CvT models) adds HF transformers' CvT with the same weights as a third
subject in the same interleaving, so both versions' ratios against HF come from one run.

Usage: .venv/bin/python benchmarks/vs_commit.py COMMIT [--model cvt_13] [--batch-size 32] [--img-size 224]
           [--repeats 8] [--train] [--compile] [--bf16] [--compare-hf] [--json FILE]
"""
import argparse
import importlib
import inspect
import json
import pkgutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import warnings
from pathlib import Path

import timm
import torch

import cvtlab  # registers the models
from cvtlab.benchmark import hf_logits, hf_twin, time_interleaved

ROOT = Path(__file__).resolve().parents[1]


def package_at(commit: str):
    """cvtlab as of `commit`, imported as `cvtlab_<commit>` (its package-relative imports follow it)."""
    name = f'cvtlab_{commit}'
    where = Path(tempfile.mkdtemp())
    archive = where / 'src.tar'
    subprocess.run(['git', 'archive', '-o', str(archive), commit, 'cvtlab'], cwd=ROOT, check=True)
    with tarfile.open(archive) as tar:
        tar.extractall(where, filter='data')
    (where / 'cvtlab').rename(where / name)
    sys.path.insert(0, str(where))
    with warnings.catch_warnings():  # its models re-register the same names with timm; we never look them up
        warnings.simplefilter('ignore')
        return importlib.import_module(name)


def build_in(pkg, model_name: str, **kwargs) -> torch.nn.Module:
    """`model_name` built by `pkg`'s own registered function (whichever family module defines it)."""
    for info in pkgutil.iter_modules(pkg.models.__path__):
        module = importlib.import_module(f'{pkg.models.__name__}.{info.name}')
        if callable(getattr(module, model_name, None)):
            return getattr(module, model_name)(**kwargs)
    raise SystemExit(f'{pkg.__name__} has no model {model_name!r}')


def fuses_every_family(pkg) -> bool:
    """Whether `pkg`'s `fuse_for_inference` is the transform meant for every model (the API whose
    `compile_for_inference` takes `fuse=`); before it, only CvT models were fused for timing."""
    compile_fn = getattr(pkg, 'compile_for_inference', None)
    return compile_fn is not None and 'fuse' in inspect.signature(compile_fn).parameters


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('commit')
    p.add_argument('--model', default='cvt_13')
    p.add_argument('--batch-size', type=int, default=32)
    p.add_argument('--img-size', type=int, default=224)
    p.add_argument('--repeats', type=int, default=8)
    p.add_argument('--train', action='store_true', help='time forward + backward instead of inference')
    p.add_argument('--compile', action='store_true', help='torch.compile both (inference: each version\'s compile_for_inference)')
    p.add_argument('--bf16', action='store_true', help='inference: both fused in bf16')
    p.add_argument('--compare-hf', action='store_true', help='also time HF transformers\' CvT, same weights')
    p.add_argument('--json', help='also write the result here')
    args = p.parse_args()
    if args.bf16 and (args.train or args.compile):
        p.error('--bf16 times fused inference only: drop --train / --compile')

    torch.manual_seed(0)
    # before the old package takes over the registry names; as the HF twin, no stochastic depth with HF
    overrides = dict(drop_path_rate=0.0) if args.compare_hf else {}
    current = timm.create_model(args.model, **overrides)
    hf = hf_twin(current).train(args.train) if args.compare_hf else None  # its weights copied into `current`
    old_pkg = package_at(args.commit)
    family = 'cvt' if args.model.startswith('cvt') else 'lg'
    earlier = build_in(old_pkg, args.model, **overrides)  # the same architecture, stochastic depth included
    earlier.load_state_dict(current.state_dict())
    models = {'current': current, args.commit: earlier}
    # the earlier version prepared as it was used then (see the module docstring)
    old_fuse = getattr(old_pkg, 'fuse_for_inference', None)
    fuse_earlier = old_fuse is not None and (family == 'cvt' or fuses_every_family(old_pkg))
    if args.train:
        for m in models.values():
            m.train()
    elif args.compile and fuses_every_family(old_pkg):  # both compile_for_inference fuse by themselves
        models = {'current': cvtlab.compile_for_inference(current),
                  args.commit: old_pkg.compile_for_inference(earlier)}
    elif args.compile:  # the earlier version's compile_for_inference or, before there was one, frozen whole
        def frozen_whole(m):
            return getattr(old_pkg, 'FrozenCompiled', cvtlab.FrozenCompiled)(m, fullgraph=True, dynamic=False)
        prepared = old_fuse(earlier) if fuse_earlier else earlier.eval()
        models = {'current': cvtlab.compile_for_inference(current),
                  args.commit: getattr(old_pkg, 'compile_for_inference', frozen_whole)(prepared)}
    elif args.bf16:
        if not fuse_earlier or 'dtype' not in inspect.signature(old_fuse).parameters:
            raise SystemExit(f'{args.commit} has no bf16 inference transform')
        models = {'current': cvtlab.fuse_for_inference(current, dtype=torch.bfloat16),
                  args.commit: old_fuse(earlier, dtype=torch.bfloat16)}
    else:
        models = {'current': cvtlab.fuse_for_inference(current),
                  args.commit: old_fuse(earlier) if fuse_earlier else earlier.eval()}
    if args.compile and args.train:
        models = {k: torch.compile(m, fullgraph=True, dynamic=False) for k, m in models.items()}
    if hf is not None:  # as an HF user runs it: eager
        models['hf'] = hf
    x = torch.randn(args.batch_size, 3, args.img_size, args.img_size)

    def step(model):
        if args.train:
            torch.manual_seed(1)  # the same drop-path draws in both
            out = hf_logits(model, x) if model is hf else model(x)
            out.logsumexp(-1).mean().backward()
            model.zero_grad(set_to_none=True)
            return out.detach()
        with torch.inference_mode():
            return hf_logits(model, x) if model is hf else model(x)

    diff = (step(models['current']) - step(models[args.commit])).abs().max().item()  # also the warm-up
    times = time_interleaved({k: (lambda m=m: step(m)) for k, m in models.items()}, warmup=0,
                             repeats=args.repeats, device=torch.device('cpu'))
    med = {k: statistics.median(t) for k, t in times.items()}
    result = dict(model=args.model, commit=args.commit, mode='train' if args.train else 'inference', compiled=args.compile,
                  dtype='bf16' if args.bf16 else 'fp32',
                  batch_size=args.batch_size, img_size=args.img_size, repeats=args.repeats,
                  threads=torch.get_num_threads(), torch=torch.__version__,
                  img_per_sec={k: args.batch_size / t for k, t in med.items()},
                  speedup=med[args.commit] / med['current'], max_abs_diff=diff)
    if hf is not None:  # HF keeps its exact GELU (the official weights use QuickGELU): logits differ by ~0.03
        result.update(current_vs_hf=med['hf'] / med['current'], earlier_vs_hf=med['hf'] / med[args.commit])
    print(f"{args.model} {result['mode']}{' compiled' if args.compile else ''} {result['dtype']}, batch {args.batch_size}, {args.img_size} px, {result['threads']} threads: "
          f"current {result['img_per_sec']['current']:.2f} img/s, {args.commit} "
          f"{result['img_per_sec'][args.commit]:.2f} img/s, x{result['speedup']:.3f}, max|diff| {diff:.1e}"
          + (f"; vs HF: current x{result['current_vs_hf']:.3f}, {args.commit} x{result['earlier_vs_hf']:.3f}"
             if hf is not None else ''))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + '\n')


if __name__ == '__main__':
    main()
