"""Whether onnxruntime's spinning pool threads disturb the step timed after them in `cvtlab benchmark
--compare onnxruntime`: runs made as before (every onnxruntime session spin-waits after a run, its default,
and each timed call follows the previous one at once) against runs as cvtlab makes them now (the GEMM
probe's session does not spin, and each timed call starts `deploy.backends.SETTLE_S` after the previous
one), in alternating processes. (Before `d54237a` the second kind had only the first change.)

Every step takes turns with the others (ours, onnxruntime on the export, the GEMM probes); ours came right
after the onnxruntime GEMM probe, whose pool thread kept spinning into it; at batch 1 (`--latency`) ours
comes right after onnxruntime's own two-thread session.

Usage: .venv/bin/python benchmarks/ort_probe_spin.py [--model lg_tiny] [--batch-size 8] [--rounds 2]
           [--latency] [--json FILE]
Threads: torch's default (set OMP_NUM_THREADS to change it).
"""
import argparse
import json
import subprocess
import sys

ROW_KEYS = ('infer_samples_per_sec', 'infer_vs_onnxruntime', 'infer_limit_fraction', 'infer_latency_ms', 'gemm_limits')


def one_run(model: str, batch_size: int, spin: bool, with_latency: bool) -> dict:
    """`cvtlab benchmark MODEL --compare onnxruntime` in this process; with `spin`, as before: every
    onnxruntime session made here spin-waits (onnxruntime's default) and timed calls follow at once."""
    import onnxruntime as ort
    from cvtlab.benchmark import BenchSettings, compare_peers, subjects
    if spin:
        subjects.SETTLE_S = 0.0  # the name `measure_subjects` reads the pause from
        class Spinning(ort.SessionOptions):
            def add_session_config_entry(self, key, value):
                if key != 'session.intra_op.allow_spinning':
                    super().add_session_config_entry(key, value)
        ort.SessionOptions = Spinning
    settings = BenchSettings(batch_size=batch_size, train=False, latency=with_latency, memory=False, repeats=6)
    ours, theirs = compare_peers(model, ['onnxruntime'], settings)
    return {'ours': {k: ours.get(k) for k in ROW_KEYS}, 'onnxruntime_img_s': theirs['infer_samples_per_sec'],
            'onnxruntime_latency_ms': theirs.get('infer_latency_ms')}


def main():
    p = argparse.ArgumentParser(description='onnxruntime spinning into the next timed step: before and after')
    p.add_argument('--model', default='lg_tiny')
    p.add_argument('--batch-size', type=int, default=8)
    p.add_argument('--rounds', type=int, default=2)
    p.add_argument('--latency', action='store_true', help='also batch-1 latency')
    p.add_argument('--json', help='write the results here')
    p.add_argument('--child', choices=['spin', 'quiet'], help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(one_run(args.model, args.batch_size, args.child == 'spin', args.latency)))
        return
    results = {'spin': [], 'quiet': []}
    for _ in range(args.rounds):
        for mode in results:
            command = [sys.executable, __file__, '--model', args.model, '--batch-size', str(args.batch_size),
                       '--child', mode] + (['--latency'] if args.latency else [])
            out = subprocess.run(command, capture_output=True, text=True)
            if out.returncode:
                sys.exit(f'{mode} run failed:\n{out.stderr}')
            row = json.loads(out.stdout.strip().splitlines()[-1])
            results[mode].append(row)
            print(f"{mode:5s}: cvtlab {row['ours']['infer_samples_per_sec']:.2f} img/s, onnxruntime "
                  f"{row['onnxruntime_img_s']:.2f}, cvtlab / onnxruntime {row['ours']['infer_vs_onnxruntime']:.3f}"
                  + (f"; batch-1 latency cvtlab {row['ours']['infer_latency_ms']:.1f} ms, onnxruntime "
                     f"{row['onnxruntime_latency_ms']:.1f} ms" if args.latency else ''), flush=True)
    if args.json:
        with open(args.json, 'w') as f:
            json.dump(dict(model=args.model, batch_size=args.batch_size, latency=args.latency, **results), f, indent=1)


if __name__ == '__main__':
    main()
