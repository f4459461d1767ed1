"""`cvtlab serve` under load: requests/s and latency from concurrent clients, with and without batching.

Usage: .venv/bin/python benchmarks/serve_load.py SOURCE [--clients 16] [--requests 480] [--max-batch 16]
           [--max-wait-ms 10] [--image-size 224] [--json FILE]

Starts the real server twice in a subprocess on 127.0.0.1 (`--max-batch 1`: every request alone; then
`--max-batch N`), sends the same generated PNG images from `--clients` threads (one keep-alive connection
each) after a warm-up, and reports requests/s, p50 / p90 / p99 latency and the server's batch sizes.
"""
import argparse
import io
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

from cvtlab.benchmark import cpu_info


def free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def start(source: str, max_batch: int, max_wait_ms: float, max_queue: int):
    port = free_port()
    log = tempfile.NamedTemporaryFile('w', prefix='serve_load_', suffix='.log', delete=False)
    proc = subprocess.Popen([sys.executable, '-m', 'cvtlab', 'serve', source, '--port', str(port), '--max-batch',
                             str(max_batch), '--max-wait-ms', str(max_wait_ms), '--max-queue', str(max_queue),
                             '--random-weights'],
                            stdout=subprocess.DEVNULL, stderr=log)  # a file: a pipe nobody reads would fill
    url = f'http://127.0.0.1:{port}'
    for _ in range(600):
        if proc.poll() is not None:
            raise SystemExit(f'the server exited: {Path(log.name).read_text()[-2000:]}')
        try:
            if httpx.get(url + '/health', timeout=2).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            time.sleep(0.3)
    proc.kill()
    raise SystemExit('the server did not start')


def load(url: str, bodies, clients: int, requests: int):
    """(latencies in s, wall time, failures) of `requests` POSTs from `clients` threads."""
    per_client = requests // clients

    def client(k: int):
        times, failures = [], 0
        with httpx.Client(base_url=url, timeout=300) as c:
            for i in range(per_client):
                start_time = time.perf_counter()
                r = c.post('/predict', content=bodies[(k + i) % len(bodies)], headers={'content-type': 'image/png'})
                times.append(time.perf_counter() - start_time)
                failures += r.status_code != 200
        return times, failures

    start_time = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        results = list(pool.map(client, range(clients)))
    wall = time.perf_counter() - start_time
    return [t for ts, _ in results for t in ts], wall, sum(f for _, f in results)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('source', help='what `cvtlab serve` takes (a model name runs with random weights)')
    p.add_argument('--clients', type=int, default=16)
    p.add_argument('--requests', type=int, default=480)
    p.add_argument('--max-batch', type=int, default=16)
    p.add_argument('--max-wait-ms', type=float, default=10)
    p.add_argument('--image-size', type=int, default=224, help='side of the generated images')
    p.add_argument('--json', help='also write the result here')
    args = p.parse_args()
    rng = np.random.default_rng(0)
    bodies = []
    for _ in range(8):
        buffer = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (args.image_size, args.image_size, 3), dtype=np.uint8)).save(buffer, 'PNG')
        bodies.append(buffer.getvalue())
    rows = {}
    for label, batch in (('no batching (--max-batch 1)', 1), (f'batching (--max-batch {args.max_batch})', args.max_batch)):
        proc, url = start(args.source, batch, args.max_wait_ms, max(256, 4 * args.clients))
        try:
            load(url, bodies, args.clients, 2 * args.clients)  # warm-up
            warm = httpx.get(url + '/info').json()['stats']
            latencies, wall, failures = load(url, bodies, args.clients, args.requests)
            done = httpx.get(url + '/info').json()['stats']
            stats = dict(mean_batch=(done['images'] - warm['images']) / max(1, done['batches'] - warm['batches']),
                         largest_batch=done['largest_batch'])
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(60)
        q = statistics.quantiles(latencies, n=100)
        rows[label] = dict(requests=len(latencies), failures=failures, requests_per_sec=len(latencies) / wall,
                           p50_ms=1e3 * statistics.median(latencies), p90_ms=1e3 * q[89], p99_ms=1e3 * q[98],
                           mean_batch=stats['mean_batch'], largest_batch=stats['largest_batch'])
        r = rows[label]
        print(f"{label}: {r['requests_per_sec']:.1f} req/s, p50 {r['p50_ms']:.0f} ms, p90 {r['p90_ms']:.0f} ms, "
              f"p99 {r['p99_ms']:.0f} ms, mean batch {r['mean_batch']:.1f}, {failures} failed", flush=True)
    first, second = rows.values()
    print(f"batching / no batching: {second['requests_per_sec'] / first['requests_per_sec']:.2f}x requests/s")
    if args.json:
        Path(args.json).write_text(json.dumps(dict(source=args.source, clients=args.clients, image_size=args.image_size,
                                                   max_wait_ms=args.max_wait_ms, cpu=cpu_info(),
                                                   threads=os.cpu_count(), results=rows), indent=1) + '\n')


if __name__ == '__main__':
    main()
