"""Throughput, latency, memory and FLOP measurements for any timm-registered model (`cvtlab benchmark`).

`measure` holds one function per measurement (`time_interleaved`, `latency`, `peak_memory`,
`matmul_rate`, `gmacs`), `limits` the machine's (CPU flags, the best GEMM rate of every library at hand);
`subjects.benchmark_model`, `peers.compare_peers` (HF transformers' CvT, onnxruntime on cvtlab's export, the
compiled model, any of them in one run; `compare_hf` for HF alone) and `sweep.sweep_resolution` combine
them and return plain dicts whose field names follow timm's `benchmark.py` (`infer_samples_per_sec`,
`train_step_time`, `param_count`, ...). The command itself lives in `benchmark/cli.py`.

Timing rules, because the machines this runs on are small and shared:
- every model under comparison is timed in the same process, its repetitions interleaved with the
  others' (A B A B ...), and medians are reported, so ratios are fair even when absolute times drift;
- the GEMM rates (torch.matmul, oneDNN, onnxruntime) are measured in the same run, as more steps
  interleaved with the models' inference steps (so they see the same contention, where a probe taken once
  before the run drifts with the neighbours' load): "fraction of the limit" (the best of them) and of
  torch.matmul's rate need no other number;
- on CPU each timed call starts `deploy.backends.SETTLE_S` (0.1 s) after the one before ended: threads a
  step leaves spinning (onnxruntime's for ~40 ms after a run, by default) would otherwise take a core from
  the next step (BENCHMARKS.md, issue 16), and the GEMM probes' onnxruntime sessions do not spin at all;
- CPU memory is the growth of the process RSS during one step (sampled every 0.5 ms, after handing
  freed heap back with `malloc_trim`); on CUDA it is `max_memory_allocated` above the step's start.
"""
from .hf import hf_logits, hf_max_abs_diff, hf_twin
from .limits import cpu_info, gemm_probes
from .measure import default_img_size, gmacs, latency, matmul_probe, matmul_rate, peak_memory, time_interleaved
from .peers import compare_hf, compare_peers
from .subjects import DTYPES, BenchSettings, benchmark_model, benchmark_models
from .sweep import SWEEP_MODELS, plot_sweep, sweep_resolution

__all__ = [
    'BenchSettings', 'DTYPES', 'SWEEP_MODELS', 'benchmark_model', 'benchmark_models', 'compare_hf', 'compare_peers',
    'cpu_info', 'default_img_size', 'gemm_probes',
    'gmacs', 'hf_logits', 'hf_max_abs_diff', 'hf_twin', 'latency', 'matmul_probe', 'matmul_rate', 'peak_memory',
    'plot_sweep', 'sweep_resolution', 'time_interleaved',
]
