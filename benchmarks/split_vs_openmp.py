"""A batch split across the threads by images (cvtlab's default on CPU) against OpenMP splitting every op,
for the torch path and for onnxruntime on cvtlab's export, interleaved in one process.

Usage: .venv/bin/python benchmarks/split_vs_openmp.py [--model cvt_13] [--batch-size 8] [--img-size 224]
           [--repeats 6] [--neighbour] [--json FILE]
`--neighbour` runs a busy process on the last core for the whole measurement (one single-threaded GEMM loop),
as another job on a shared machine would. Threads: torch's default (set OMP_NUM_THREADS to change it).
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import timm
import torch

import cvtlab
from cvtlab.benchmark import cpu_info, time_interleaved
from cvtlab.deploy.backends import SessionRunner, onnxruntime_session
from cvtlab.export import export_onnx

NEIGHBOUR = ('import torch, time\ntorch.set_num_threads(1)\na = torch.randn(1024, 1024)\n'
             'while True:\n    a @ a\n')


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--model', default='cvt_13')
    p.add_argument('--batch-size', type=int, default=8)
    p.add_argument('--img-size', type=int, default=224)
    p.add_argument('--repeats', type=int, default=6)
    p.add_argument('--neighbour', action='store_true', help='a busy process on the last core meanwhile')
    p.add_argument('--json', help='also write the result here')
    args = p.parse_args()
    torch.manual_seed(0)
    model = timm.create_model(args.model).eval()
    split = cvtlab.fuse_for_inference(model)
    openmp = cvtlab.fuse_for_inference(model)
    openmp.sample_parallel = False
    x = torch.randn(args.batch_size, 3, args.img_size, args.img_size)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / 'model.onnx'
        export_onnx(split, path, fuse=False)
        ort_split, ort_session = SessionRunner(path), onnxruntime_session(path)
    steps = {'torch, split by images': lambda: split(x), 'torch, OpenMP per op': lambda: openmp(x),
             'onnxruntime, split by images': lambda: ort_split(x),
             'onnxruntime, its thread pool per op': lambda: ort_session.run(None, {'image': x.numpy()})}
    neighbour = None
    if args.neighbour:
        last = str((os.cpu_count() or 1) - 1)
        neighbour = subprocess.Popen(['taskset', '-c', last, sys.executable, '-c', NEIGHBOUR])
    try:
        with torch.inference_mode():
            times = time_interleaved(steps, warmup=1, repeats=args.repeats, device=torch.device('cpu'))
    finally:
        if neighbour is not None:
            neighbour.kill()
    ips = {k: args.batch_size / statistics.median(t) for k, t in times.items()}
    for k, v in ips.items():
        print(f'{args.model}, batch {args.batch_size}, {args.img_size} px, {torch.get_num_threads()} threads'
              f'{", a busy neighbour" if args.neighbour else ""}: {k}: {v:.2f} img/s')
    result = dict(model=args.model, batch_size=args.batch_size, img_size=args.img_size, repeats=args.repeats,
                  threads=torch.get_num_threads(), neighbour=args.neighbour, cpu=cpu_info(), img_per_sec=ips,
                  torch_split_vs_openmp=ips['torch, split by images'] / ips['torch, OpenMP per op'],
                  ort_split_vs_pool=ips['onnxruntime, split by images'] / ips['onnxruntime, its thread pool per op'])
    print(f"split / per-op: torch {result['torch_split_vs_openmp']:.2f}x, onnxruntime {result['ort_split_vs_pool']:.2f}x")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + '\n')


if __name__ == '__main__':
    main()
