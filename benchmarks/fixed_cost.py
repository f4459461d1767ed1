"""Where cvtlab's fp32 inference loses to onnxruntime on its own export: per image, or per call.

One thread, batches of 1, 2 and 4 images (a two-thread batch of 8 is two one-thread workers of 4 images
each). cvtlab's `fuse_for_inference` and onnxruntime's session on `cvtlab export`'s graph take turns (who
goes first alternates by round), each call `deploy.backends.SETTLE_S` after the previous one. A
least-squares line through the medians, time = fixed + per_image x batch, splits each library's time into
a cost per call (Python, dispatch, anything paid once whatever the batch) and a cost per image (mostly the
kernels). With three points and one run, read both to a few ms: per-op costs that grow with the batch (more
token blocks) land in the slope.

Usage: .venv/bin/python benchmarks/fixed_cost.py [--model cvt_13] [--img-size 224] [--batches 1 2 4]
           [--rounds 8] [--json FILE]
"""
import argparse
import json
import statistics
import tempfile
import warnings
from pathlib import Path

import numpy as np
import timm
import torch

import cvtlab
from cvtlab.benchmark import time_interleaved
from cvtlab.deploy.backends import SETTLE_S
from cvtlab.export import export_onnx


def session(path: Path):
    import onnxruntime as ort
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.add_session_config_entry('session.intra_op.allow_spinning', '0')
    return ort.InferenceSession(str(path), options, providers=['CPUExecutionProvider'])


def main():
    p = argparse.ArgumentParser(description='per-call and per-image cost, cvtlab against onnxruntime, one thread')
    p.add_argument('--model', default='cvt_13')
    p.add_argument('--img-size', type=int, default=224)
    p.add_argument('--batches', type=int, nargs='+', default=[1, 2, 4])
    p.add_argument('--rounds', type=int, default=8)
    p.add_argument('--json', help='write the results here')
    args = p.parse_args()
    if len(set(args.batches)) < 2:
        p.error('--batches needs at least two different batch sizes to fit a line')
    torch.set_num_threads(1)
    model = timm.create_model(args.model).eval()
    fused = cvtlab.fuse_for_inference(model)
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter('ignore')  # the exporter's tracer warnings
        path = Path(tmp) / 'model.onnx'
        export_onnx(model, path, check_sizes=[(args.img_size, args.img_size)])
        ort_session = session(path)
    input_name = ort_session.get_inputs()[0].name
    medians = {}
    with torch.inference_mode():
        for batch in args.batches:
            x = torch.randn(batch, 3, args.img_size, args.img_size)
            calls = {'cvtlab': lambda: fused(x), 'onnxruntime': lambda: ort_session.run(None, {input_name: x.numpy()})}
            # warm-up: packed weights, oneDNN primitives, onnxruntime's arena
            time_interleaved(calls, warmup=2, repeats=0, device=torch.device('cpu'))
            times = {name: [] for name in calls}
            for round_ in range(args.rounds):  # one round at a time, who goes first alternating
                order = list(calls) if round_ % 2 == 0 else list(calls)[::-1]
                one = time_interleaved({n: calls[n] for n in order}, warmup=0, repeats=1,
                                       device=torch.device('cpu'), settle_s=SETTLE_S)
                for name, t in one.items():
                    times[name] += t
            medians[batch] = {name: 1e3 * statistics.median(t) for name, t in times.items()}
            print(f'batch {batch}: ' + ', '.join(f'{n} {ms:.1f} ms' for n, ms in medians[batch].items()), flush=True)
    fits = {}
    for name in ('cvtlab', 'onnxruntime'):
        per_image, fixed = np.polyfit(args.batches, [medians[b][name] for b in args.batches], 1)
        fits[name] = {'per_image_ms': round(float(per_image), 2), 'fixed_ms': round(float(fixed), 2)}
        print(f'{name}: {per_image:.1f} ms per image + {fixed:.1f} ms per call')
    largest = max(args.batches)
    ratio = medians[largest]['onnxruntime'] / medians[largest]['cvtlab']
    print(f'onnxruntime / cvtlab at batch {largest}: {ratio:.3f}x')
    if args.json:
        Path(args.json).write_text(json.dumps({
            'command': 'benchmarks/fixed_cost.py', 'args': vars(args), 'threads': 1,
            'torch': torch.__version__, 'medians_ms': medians, 'fit': fits}, indent=1))


if __name__ == '__main__':
    main()
