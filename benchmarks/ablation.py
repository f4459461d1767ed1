"""What each CvT-13 inference change gained, measured side by side in one process (interleaved, medians).

Variants: `before` = CvT as of commit bf8470c (before the speed work), `layout` = the current model as
built (no inference transform), `fused` = + `cvtlab.fuse_for_inference` (BN folded, the CPU fast paths),
`fused_bf16` = + bf16 autocast, `fused_compiled` = + plain torch.compile, `fused_compiled_frozen` =
`cvtlab.compile_for_inference` (inductor freezing).

With --train: one SGD training step (forward, cross-entropy, backward) instead, variants `before`,
`before_mlp` (commit d3100cd: QuickGELU as three element-wise ops), `current` (QuickGELU as one SiLU on
rescaled weights) and `hf` (HF transformers' CvT, same weights, its exact GELU).
Usage: .venv/bin/python benchmarks/ablation.py [--batch-size 16] [--img-size 224] [--repeats 5] [--compile] [--no-bf16]
       .venv/bin/python benchmarks/ablation.py --train [--batch-size 32] [--repeats 4]
"""
import argparse
import json
import statistics
import sys

import timm
import torch

import cvtlab  # registers the models
from cvtlab.benchmark import time_interleaved
from vs_commit import package_at

BEFORE = 'bf8470c'
BEFORE_MLP = 'd3100cd'


def old_cvt_class(commit: str = BEFORE):
    """The CvT class from `commit`: that commit's whole package, imported under another name (build the
    current models first: its registration takes over timm's names)."""
    return package_at(commit).models.cvt.CvT


def main():
    p = argparse.ArgumentParser()
    p.add_argument('--batch-size', type=int, default=16)
    p.add_argument('--img-size', type=int, default=224)
    p.add_argument('--repeats', type=int, default=5)
    p.add_argument('--compile', action='store_true')
    p.add_argument('--train', action='store_true', help='time training steps instead of inference')
    p.add_argument('--no-bf16', action='store_true', help='skip the (slow on CPUs without bf16 GEMMs) bf16 variant')
    args = p.parse_args()
    if args.train:
        return train_ablation(args)
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
    fused = cvtlab.fuse_for_inference(new)
    variants = {'before': (before, False), 'layout': (new, False), 'fused': (fused, False)}
    if not args.no_bf16:
        variants['fused_bf16'] = (fused, True)
    if args.compile:
        variants['fused_compiled'] = (torch.compile(fused, fullgraph=True, dynamic=False), False)
        # inductor freezing: weights as constants, so GEMMs run pre-packed. Check the profile when comparing it
        # with 'fused_compiled' in one process: dynamo may reuse the unfrozen graph (cvtlab.FrozenCompiled)
        variants['fused_compiled_frozen'] = (cvtlab.compile_for_inference(new), False)
    x = torch.randn(args.batch_size, 3, args.img_size, args.img_size)

    def run(model, bf16):
        with torch.inference_mode(), torch.autocast('cpu', torch.bfloat16, enabled=bf16):
            return model(x)

    ref = run(before, False)
    diffs = {k: (run(m, bf16).float() - ref).abs().max().item() for k, (m, bf16) in variants.items()}
    # warm-up: the diff calls above
    times = time_interleaved({k: (lambda m=m, bf16=bf16: run(m, bf16)) for k, (m, bf16) in variants.items()},
                             warmup=0, repeats=args.repeats, device=torch.device('cpu'))
    base = statistics.median(times['before'])
    rows = [dict(variant=k, img_per_sec=args.batch_size / statistics.median(t), speedup_vs_before=base / statistics.median(t),
                 max_abs_diff_vs_before=diffs[k]) for k, t in times.items()]
    for r in rows:
        print(f"{r['variant']:15s} {r['img_per_sec']:7.2f} img/s  x{r['speedup_vs_before']:.3f}  "
              f"max|diff| {r['max_abs_diff_vs_before']:.1e}")
    print(json.dumps(dict(settings=vars(args), torch=torch.__version__, results=rows)), file=sys.stderr)


def train_ablation(args):
    from cvtlab.benchmark import hf_logits, hf_twin
    torch.manual_seed(0)
    current = timm.create_model('cvt_13', drop_path_rate=0.0).train()  # as the old defaults and HF: no stochastic depth
    hf = hf_twin(current).train()  # random HF weights, copied into `current`
    variants = {'before': old_cvt_class(BEFORE)(), 'before_mlp': old_cvt_class(BEFORE_MLP)(), 'current': current}
    for model in variants.values():
        model.load_state_dict(current.state_dict())
        model.train()
    variants['hf'] = hf
    x = torch.randn(args.batch_size, 3, args.img_size, args.img_size)
    target = torch.randint(0, 1000, (args.batch_size,))

    def step(name, model):
        logits = hf_logits(model, x) if name == 'hf' else model(x)
        loss = torch.nn.functional.cross_entropy(logits, target)
        loss.backward()
        grad = model.classifier.weight.grad if name == 'hf' else model.head.weight.grad
        model.zero_grad(set_to_none=True)
        return loss.item(), grad

    ref_loss, ref_grad = step('before', variants['before'])
    diffs = {}
    for name, model in variants.items():  # also the warm-up call
        loss, grad = step(name, model)
        diffs[name] = (abs(loss - ref_loss), (grad - ref_grad).abs().max().item())
    times = time_interleaved({k: (lambda k=k, m=m: step(k, m)) for k, m in variants.items()},
                             warmup=0, repeats=args.repeats, device=torch.device('cpu'))
    hf_time = statistics.median(times['hf'])
    rows = [dict(variant=k, img_per_sec=args.batch_size / statistics.median(t),
                 speedup_vs_before=statistics.median(times['before']) / statistics.median(t),
                 vs_hf=hf_time / statistics.median(t), loss_diff_vs_before=diffs[k][0],
                 head_grad_diff_vs_before=diffs[k][1]) for k, t in times.items()]
    print(f'CvT-13 training step, batch {args.batch_size}, {args.img_size}px, {torch.get_num_threads()} threads '
          f'(hf uses exact GELU, so its loss differs slightly)')
    for r in rows:
        print(f"{r['variant']:12s} {r['img_per_sec']:6.2f} img/s  x{r['speedup_vs_before']:.3f} vs before  "
              f"x{r['vs_hf']:.3f} vs hf  |loss diff| {r['loss_diff_vs_before']:.1e}  "
              f"max|head grad diff| {r['head_grad_diff_vs_before']:.1e}")
    print(json.dumps(dict(settings=vars(args), torch=torch.__version__, results=rows)), file=sys.stderr)


if __name__ == '__main__':
    main()
