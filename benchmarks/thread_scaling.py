"""How CvT-13 inference scales from one thread to two on this CPU, op category by category, against the
matmul probe; and whether two single-threaded streams of image groups beat one two-threaded stream.

Part 1 (always): one image group (batch 8, 224 px, fused eager), profiled at 1 and 2 threads in turns, with
the probe at each thread count, so the model's fraction of the matmul rate is known per thread count.
Part 2 (--parallel-groups G): a batch of 32 as one two-threaded call (what cvtlab does) against two Python
threads that each take the next group of G images from a queue and run it with one intra-op thread
(scratch only: it sets the process-wide thread count, which a library must not do inside `forward`).

Usage: .venv/bin/python benchmarks/thread_scaling.py [--repeats 4] [--parallel-groups 8 --batch-size 32]
"""
import argparse
import statistics
import threading
import time

import timm
import torch
from torch.profiler import profile

import cvtlab  # registers the models
from cvtlab.benchmark import matmul_probe, time_interleaved
from cvtlab.flops import count_macs
from profile_cvt13 import CATEGORIES, categorised_ms


def scaling(model, gflop_per_image: float, repeats: int):
    x = torch.randn(8, 3, 224, 224)
    probe, probe_gflop = matmul_probe()
    ops, wall, probe_s = ({1: [], 2: []} for _ in range(3))
    for threads in (1, 2):  # warm-up at each count
        torch.set_num_threads(threads)
        model(x)
    for _ in range(repeats):
        for threads in (1, 2):
            torch.set_num_threads(threads)
            start = time.perf_counter()
            model(x)
            wall[threads].append(time.perf_counter() - start)
            with profile() as prof:
                model(x)
            ops[threads].append(categorised_ms(prof))
            start = time.perf_counter()
            probe()
            probe_s[threads].append(time.perf_counter() - start)
    torch.set_num_threads(2)
    print(f'CvT-13 fused inference, batch 8, 224 px: op self time in ms, median of {repeats} profiled calls')
    print(f'{"category":36s} {"1 thread":>9s} {"2 threads":>9s} {"scaling":>8s}')
    for cat in [c for c, _ in CATEGORIES] + ['other']:
        one, two = (statistics.median(r[cat] for r in ops[t]) for t in (1, 2))
        print(f'{cat:36s} {one:9.1f} {two:9.1f} {one / two if two else float("nan"):7.2f}x')
    for threads in (1, 2):
        rate = probe_gflop / statistics.median(probe_s[threads])
        model_rate = 8 * gflop_per_image / statistics.median(wall[threads])
        print(f'{threads} thread(s): probe {rate:.0f} GFLOP/s, model {model_rate:.0f} GFLOP/s = '
              f'{model_rate / rate:.1%} of the probe (unprofiled calls)')
    print(f'scaling 1 -> 2 threads: probe {statistics.median(probe_s[1]) / statistics.median(probe_s[2]):.2f}x, '
          f'model {statistics.median(wall[1]) / statistics.median(wall[2]):.2f}x')


def parallel_groups(model, group: int, batch_size: int, repeats: int):
    x = torch.randn(batch_size, 3, 224, 224)

    def one_stream():
        return model(x)

    def two_streams():
        torch.set_num_threads(1)
        groups = list(x.split(group))
        outs, queue, lock = [None] * len(groups), iter(range(len(groups))), threading.Lock()

        def work():
            while True:
                with lock:
                    i = next(queue, None)
                if i is None:
                    return
                outs[i] = model(groups[i])  # a group small enough that the fused model runs it whole
        workers = [threading.Thread(target=work) for _ in range(2)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        torch.set_num_threads(2)
        return torch.cat(outs)

    print(f'max |diff| two streams vs one: {(one_stream() - two_streams()).abs().max().item():.1e}')
    times = time_interleaved({'one': one_stream, 'two': two_streams}, warmup=0, repeats=repeats,
                             device=torch.device('cpu'))
    one, two = (statistics.median(times[k]) for k in ('one', 'two'))
    print(f'batch {batch_size}: one two-threaded stream {batch_size / one:.2f} img/s, two one-threaded streams of '
          f'{group}-image groups {batch_size / two:.2f} img/s: {one / two:.3f}x')


def main():
    p = argparse.ArgumentParser()
    p.add_argument('--repeats', type=int, default=4)
    p.add_argument('--parallel-groups', type=int, default=0, metavar='G')
    p.add_argument('--batch-size', type=int, default=32)
    args = p.parse_args()
    torch.manual_seed(0)
    plain = timm.create_model('cvt_13')
    gflop = 2 * count_macs(plain) / 1e9  # counted on the model as built (the fused one may be a wrapper)
    model = cvtlab.fuse_for_inference(plain)
    with torch.inference_mode():
        scaling(model, gflop, args.repeats)
        if args.parallel_groups:
            parallel_groups(model, args.parallel_groups, args.batch_size, 2 * args.repeats)


if __name__ == '__main__':
    main()
