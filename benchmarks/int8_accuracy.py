"""int8 against fp32 on a trained model: accuracy on held-out data, and speed, in one process.

Usage: .venv/bin/python benchmarks/int8_accuracy.py RUN_DIR [--data digits] [--calibration-images 256]
           [--batch-size 64] [--repeats 8] [--json FILE]

RUN_DIR is a `cvtlab train` output (`make demo` writes runs/demo). The run's model is exported twice, as
`cvtlab export` writes it (fp32) and with `--int8` (calibrated on the training split); both files and the
fused PyTorch model are evaluated on the validation split (top-1, and how often int8's top-1 equals
fp32's), then timed on one batch of that split, taking turns.
"""
import argparse
import json
import statistics
import tempfile
from pathlib import Path

import numpy as np
import torch
from timm.data import create_transform

from cvtlab.benchmark import cpu_info, time_interleaved
from cvtlab.data import build_datasets, resolve_data_config
from cvtlab.deploy.backends import OnnxFileModel
from cvtlab.export import calibration_batches, export_onnx
import cvtlab


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('run')
    p.add_argument('--data', default='digits')
    p.add_argument('--calibration-images', type=int, default=256)
    p.add_argument('--batch-size', type=int, default=64)
    p.add_argument('--repeats', type=int, default=8)
    p.add_argument('--json', help='also write the result here')
    args = p.parse_args()
    model = cvtlab.load_model(args.run).eval()  # as built: the exports fuse their own copies
    transform = create_transform(**resolve_data_config(model), is_training=False)
    val = build_datasets(args.data, transform, transform).val
    images = torch.stack([val[i][0] for i in range(len(val))])  # N 3 H W
    labels = np.array([val[i][1] for i in range(len(val))])
    with tempfile.TemporaryDirectory() as folder:
        export_onnx(model, Path(folder) / 'fp32.onnx')
        report = export_onnx(model, Path(folder) / 'int8.onnx', int8=True,
                             calibration=calibration_batches(model, args.data, args.calibration_images))
        paths = {'torch fp32 (fused)': cvtlab.fuse_for_inference(model),
                 'onnxruntime fp32': OnnxFileModel(Path(folder) / 'fp32.onnx'),
                 'onnxruntime int8': OnnxFileModel(Path(folder) / 'int8.onnx')}
        with torch.inference_mode():
            top1 = {k: m(images).argmax(-1).numpy() for k, m in paths.items()}
            x = images[:args.batch_size]
            times = time_interleaved({k: (lambda m=m: m(x)) for k, m in paths.items()}, warmup=1,
                                     repeats=args.repeats, device=torch.device('cpu'))
    ips = {k: len(x) / statistics.median(t) for k, t in times.items()}
    fp32 = 'torch fp32 (fused)'
    result = dict(run=args.run, data=args.data, val_images=len(labels), batch_size=len(x), repeats=args.repeats,
                  threads=torch.get_num_threads(), cpu=cpu_info(),
                  top1={k: float(100 * (v == labels).mean()) for k, v in top1.items()},
                  int8_agrees_with_fp32=float((top1['onnxruntime int8'] == top1[fp32]).mean()),
                  img_per_sec=ips, vs_torch_fp32={k: v / ips[fp32] for k, v in ips.items()},
                  int8_size_mb=report['size_mb'], fp32_size_mb=report['fp32_size_mb'],
                  calibration_images=report['calibration_images'])
    for k in paths:
        print(f"{k}: top-1 {result['top1'][k]:.2f}% of {len(labels)}, {ips[k]:.1f} img/s "
              f"({result['vs_torch_fp32'][k]:.2f}x torch fp32)")
    print(f"int8 top-1 agrees with fp32 on {100 * result['int8_agrees_with_fp32']:.2f}% of the validation images")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + '\n')


if __name__ == '__main__':
    main()
