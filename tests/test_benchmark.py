"""`cvtlab benchmark` end to end on tiny configs, and the inference speed paths against the plain model.

Timings are never asserted: the machines are small and shared. Only fields, exactness and wiring are.
"""
import json
from dataclasses import replace

import pytest
import timm
import torch

import cvtlab
from cvtlab.benchmark import BenchSettings, benchmark_model, compare_hf, sweep_resolution, plot_sweep
from cvtlab.cli import main
from cvtlab.deploy import fuse_for_inference
from contract import random_bn

TINY = BenchSettings(batch_size=2, img_size=32, warmup=1, repeats=1, latency_repeats=2)
SMALL_CVT = dict(embed_dims=(16, 32, 48), depths=(1, 2, 3), num_heads=(1, 2, 3))
FIELDS = ['infer_samples_per_sec', 'infer_step_time', 'infer_batch_size', 'infer_img_size', 'infer_latency_ms',
          'infer_latency_p90_ms', 'infer_peak_mem_mb', 'train_samples_per_sec', 'train_step_time',
          'train_peak_mem_mb', 'param_count', 'infer_gmacs', 'infer_gflops_per_sec', 'infer_matmul_fraction',
          'matmul_gflops_per_sec']



@pytest.fixture(autouse=True)
def small_gemm_probes(monkeypatch):
    """In-process runs probe the GEMM limits on 256^3 products once (the real size costs ~0.5 s per run);
    what these tests check is the bookkeeping, not the rates."""
    import cvtlab.benchmark.subjects as subjects
    real = subjects.gemm_probes
    monkeypatch.setattr(subjects, 'gemm_probes', lambda dtype, device='cpu': real(dtype, device, n=256, calls=1))

def test_benchmark_model_returns_every_field():
    row = benchmark_model('cvt_tiny', TINY)
    for field in FIELDS:
        assert row[field] is not None, field
    assert row['infer_img_size'] == [32, 32] and row['param_count'] == pytest.approx(0.75, abs=0.01)


def test_cli_json(capsys):
    assert main(['benchmark', 'cvt_tiny', '-b', '2', '--repeats', '1', '--latency-repeats', '2', '--no-train',
                 '--json']) == 0
    out = json.loads(capsys.readouterr().out)
    assert out['results'][0]['model'] == 'cvt_tiny' and out['results'][0]['infer_samples_per_sec'] > 0


def test_cli_bad_model_is_one_line_error(capsys):
    assert main(['benchmark', 'no_such_model']) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith('cvtlab: error:') and 'unknown model' in err[0]


@pytest.mark.parametrize('flags, message', [(['--hf-eager'], '--hf-eager and --hf-dtype only apply'),
                                            (['--hf-dtype', 'fp32'], '--hf-eager and --hf-dtype only apply'),
                                            (['--compare', 'hf', '--hf-eager'], 'only applies with --compile'),
                                            (['--sweep-res', '32', '--compare', 'onnxruntime'], 'do not combine')])
def test_cli_hf_flags_need_their_context(capsys, flags, message):
    assert main(['benchmark', 'cvt_tiny', *flags]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]


def test_compare_hf_same_weights():
    pytest.importorskip('transformers')
    ours, hf = compare_hf('cvt_13', TINY, model_args=SMALL_CVT)
    assert hf['model'] == 'hf:cvt_13'
    assert ours['hf_max_abs_diff'] < 1e-4  # same weights, HF's GELU swapped for QuickGELU for the check
    for ratio in ('infer_vs_hf', 'train_vs_hf', 'train_mem_vs_hf'):
        assert ours[ratio] > 0


def test_compile_wiring_freezes_inference_and_can_leave_hf_eager(monkeypatch):
    """--compile: every copy compiled, inference copies through compile_for_inference (inductor freezing);
    --hf-eager leaves HF alone. torch.compile and compile_for_inference are replaced by recorders (a real
    compile of four copies would take minutes)."""
    pytest.importorskip('transformers')
    import cvtlab.benchmark.subjects
    calls = []

    def recorder(how):
        def fake_compile(model, **kwargs):
            calls.append((type(model).__name__, model.training, how, kwargs.get('dynamic')))
            return model
        return fake_compile
    monkeypatch.setattr(torch, 'compile', recorder('plain'))
    monkeypatch.setattr(cvtlab.benchmark.subjects, 'compile_for_inference', recorder('frozen'))
    ours, hf = compare_hf('cvt_13', replace(TINY, compile=True, latency=False), model_args=SMALL_CVT,
                          hf_eager=True)
    assert sorted(calls, key=str) == [('CvT', False, 'frozen', False), ('CvT', True, 'plain', False)]
    assert ours['compiled'] and not hf['compiled']
    calls.clear()
    compare_hf('cvt_13', replace(TINY, compile=True, latency=False, train=False), model_args=SMALL_CVT)
    assert [c[0] for c in calls] == ['CvT', 'CvtForImageClassification']


def test_sweep_and_plot(tmp_path):
    rows = sweep_resolution(['cvt_tiny', 'lg_nano'], [32, 64], TINY)
    assert [r['model'] for r in rows] == ['cvt_tiny', 'lg_nano'] * 2
    assert rows[0]['pixel_rate_vs_first'] == 1.0
    assert plot_sweep(rows, tmp_path / 'sweep.png') and (tmp_path / 'sweep.png').stat().st_size > 0


# --- inference speed paths --------------------------------------------------------------------------------
def test_compile_fullgraph_matches_eager(monkeypatch):
    """One small inductor compile (~30 s cold on 2 cores) through cvtlab.compile_for_inference, with token
    blocks small enough to unroll: no graph breaks (fullgraph), inductor freezing in effect (packed GEMMs in
    the profile), same outputs."""
    from cvtlab.deploy import blocks
    monkeypatch.setattr(blocks, 'CHUNK_BYTES_COMPILED', 64 * 64 * 4)  # stage 1: 128 rows, hidden 64 -> 2 blocks
    monkeypatch.setattr(torch._inductor.config.cpp, 'enable_kernel_profile', True)  # the C++ wrapper's calls, profiled
    model = random_bn(timm.create_model('cvt_13', **SMALL_CVT))
    torch._dynamo.reset()  # no earlier compile of a CvT in this process to reuse (cvtlab.FrozenCompiled)
    compiled = cvtlab.compile_for_inference(model)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert (compiled(x) - fuse_for_inference(model)(x)).abs().max() <= 1e-4
        with torch.profiler.profile() as prof:
            compiled(x)
    ops = {e.key for e in prof.key_averages()}  # extern kernels as the C++ wrapper calls them: aoti_torch_cpu_*
    assert any(op.startswith('aoti_torch_cpu_') for op in ops), sorted(ops)  # the C++ wrapper, on CPU
    if torch.backends.mkl.is_available():  # frozen: the Linears run as pre-packed MKL GEMMs, the convs fused
        assert 'aoti_torch_cpu__mkl_linear' in ops and not any(op.endswith('_addmm') for op in ops), sorted(ops)
        assert 'aoti_torch_cpu_mkldnn__convolution_pointwise' in ops, sorted(ops)
    assert compiled.num_classes == model.num_classes  # attributes reach the model
    torch._dynamo.reset()


def test_cpu_info_reads_the_flags_that_decide_dtypes(tmp_path):
    from cvtlab.benchmark.limits import cpu_info, describe_cpu, dtype_notes
    cpuinfo = tmp_path / 'cpuinfo'
    cpuinfo.write_text('processor\t: 0\nmodel name\t: Some CPU\nflags\t\t: fpu sse avx2 fma avx512f avx512_vnni\n\n'
                       'processor\t: 1\nmodel name\t: Some CPU\nflags\t\t: fpu\n')
    info = cpu_info(str(cpuinfo))
    assert info['model'] == 'Some CPU' and info['flags'] == ['avx2', 'fma', 'avx512f', 'avx512_vnni']
    assert not info['bf16'] and info['int8'] and 'avx512_bf16' in info['missing']
    assert 'no avx512_bf16' in describe_cpu(info).replace(',', '')
    assert 'keep fp32' in dtype_notes('bf16', info)[0] and dtype_notes('fp32', info) == []
    assert cpu_info(str(tmp_path / 'absent'))['model'] == 'unknown CPU'  # not Linux: no crash


def test_gemm_probes_compute_the_product_through_each_library():
    from cvtlab.benchmark.limits import gemm_probes
    probes = gemm_probes(torch.float32, n=64, calls=1)
    assert any('torch.matmul' in k for k in probes)
    if torch.backends.mkldnn.is_available():
        assert 'fp32 oneDNN' in probes
    assert 'fp32 onnxruntime' in probes  # onnxruntime comes with the test extras
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(64, 64, generator=g), torch.randn(64, 64, generator=g)
    for name, (step, gflop) in probes.items():
        out = step()
        out = torch.as_tensor(out)
        torch.testing.assert_close(out, a @ b, rtol=1e-4, atol=1e-4, msg=name)
        assert gflop == 2 * 64 ** 3 / 1e9
    bf16 = gemm_probes(torch.bfloat16, n=8, calls=1)
    assert next(iter(bf16)).startswith('bf16 torch.matmul') and 'fp32 onnxruntime' not in bf16
    from cvtlab.deploy.kernels import onednn_supports
    assert ('bf16 oneDNN' in bf16) == onednn_supports(torch.bfloat16)  # only where oneDNN has bf16 GEMMs
    assert list(gemm_probes(torch.float16, n=8, calls=1)) == [next(iter(gemm_probes(torch.float16, n=8, calls=1)))]


def test_onnxruntime_probe_sessions_do_not_spin_into_the_next_step(monkeypatch):
    # onnxruntime's pool threads spin ~40 ms after a run by default: the probe's session must not, or the step
    # timed after it (cvtlab's model, taking turns) loses a core for that long
    import onnxruntime as ort
    from cvtlab.benchmark.limits import gemm_probes, int8_gemm_probes
    made = []

    class Recording(ort.InferenceSession):
        def __init__(self, model, options=None, **kwargs):
            made.append(options)
            super().__init__(model, options, **kwargs)
    monkeypatch.setattr(ort, 'InferenceSession', Recording)
    gemm_probes(torch.float32, n=16, calls=1)
    int8_gemm_probes(n=16, calls=1)
    assert len(made) >= 2
    assert all(o.get_session_config_entry('session.intra_op.allow_spinning') == '0' for o in made)


def test_time_interleaved_lets_each_step_start_on_idle_threads(monkeypatch):
    # a fake clock: sleeping advances it, a step takes exactly 1 ms of it
    import cvtlab.benchmark.measure as measure
    clock = {'now': 0.0}
    events = []

    class FakeTime:
        @staticmethod
        def perf_counter():
            return clock['now']

        @staticmethod
        def sleep(seconds):
            events.append(('sleep', seconds))
            clock['now'] += seconds
    monkeypatch.setattr(measure, 'time', FakeTime)

    def step(name):
        events.append(('run', name))
        clock['now'] += 0.001
    times = measure.time_interleaved({'a': lambda: step('a'), 'b': lambda: step('b')}, warmup=1, repeats=3,
                                     device=torch.device('cpu'), settle_s=0.1)
    assert events[:2] == [('run', 'a'), ('run', 'b')]  # warm-up: no pauses
    # then every timed call after a pause, taking turns
    assert events[2:] == [e for _ in range(3) for name in 'ab' for e in (('sleep', 0.1), ('run', name))]
    assert times == {'a': [pytest.approx(0.001)] * 3, 'b': [pytest.approx(0.001)] * 3}  # pauses outside the times
    events.clear()
    measure.time_interleaved({'a': lambda: step('a')}, warmup=0, repeats=2, device=torch.device('cpu'))
    assert events == [('run', 'a')] * 2  # no pause unless asked


def test_fraction_of_the_limit_is_against_the_best_library():
    r = benchmark_model('cvt_tiny', BenchSettings(batch_size=2, train=True, latency=False, memory=False, repeats=1))
    limits = r['gemm_limits']
    assert len(limits) >= 2 and r['limit_kernel'] == max(limits, key=limits.get)
    assert r['limit_gflops_per_sec'] == max(limits.values())
    assert r['matmul_gflops_per_sec'] == next(iter(limits.values()))  # torch.matmul first
    assert r['infer_limit_fraction'] == pytest.approx(r['infer_gflops_per_sec'] / r['limit_gflops_per_sec'])
    # a training step counts 3x the forward's FLOPs per image
    per_image = r['infer_gflops_per_sec'] / r['infer_samples_per_sec']  # forward GFLOP of one image
    assert r['train_gflops_per_sec'] == pytest.approx(3 * per_image * r['train_samples_per_sec'])
    assert r['train_limit_fraction'] == pytest.approx(r['train_gflops_per_sec'] / r['limit_gflops_per_sec'])


def test_compare_onnxruntime_times_cvtlabs_own_export(capsys):
    from cvtlab.benchmark import compare_peers
    s = BenchSettings(batch_size=2, train=True, latency=False, memory=False, repeats=1)
    ours, ort_row = compare_peers('cvt_tiny', ['onnxruntime'], s)
    assert ort_row['model'] == 'onnxruntime' and 'train_samples_per_sec' not in ours  # inference only
    assert ours['infer_vs_onnxruntime'] == pytest.approx(ours['infer_samples_per_sec'] / ort_row['infer_samples_per_sec'])
    assert ours['onnxruntime_max_abs_diff'] <= 1e-4  # the same model
    assert ours['gemm_limits'] == ort_row['gemm_limits']  # one run, one limit
    with pytest.raises(cvtlab.CvtlabError, match='--compare takes'):
        compare_peers('cvt_tiny', ['tensorrt'], s)
    assert main(['benchmark', 'cvt_tiny', '-b', '2', '--repeats', '1', '--no-latency', '--compare', 'onnxruntime']) == 0
    assert 'vs onnxruntime' in capsys.readouterr().out


def test_compare_hf_onnxruntime_and_compile_in_one_run(monkeypatch, capsys):
    """Every peer at once: one run, one limit, every ratio against ours; the training step for ours and HF only.
    compile_for_inference is replaced by a recorder (a real compile takes minutes)."""
    pytest.importorskip('transformers')
    import cvtlab.benchmark.peers as peers
    compiled = []
    monkeypatch.setattr(peers, 'compile_for_inference',
                        lambda model: compiled.append(model) or fuse_for_inference(model))
    s = BenchSettings(batch_size=2, img_size=32, train=True, latency=False, memory=False, repeats=1)
    ours, hf, ort_row, comp = peers.compare_peers('cvt_13', ['hf', 'onnxruntime', 'compile', 'hf'], s,
                                                  model_args=SMALL_CVT)
    assert [r['model'] for r in (ours, hf, ort_row, comp)] == ['cvt_13', 'hf:cvt_13', 'onnxruntime', 'compile']
    assert len(compiled) == 1
    assert ours['hf_max_abs_diff'] < 1e-4 and ours['onnxruntime_max_abs_diff'] < 1e-4  # the same weights
    assert ours['compile_max_abs_diff'] < 1e-4
    for peer, row in [('hf', hf), ('onnxruntime', ort_row), ('compile', comp)]:
        assert ours[f'infer_vs_{peer}'] == pytest.approx(ours['infer_samples_per_sec'] / row['infer_samples_per_sec'])
        assert row['gemm_limits'] == ours['gemm_limits']  # one run, one limit
    assert ours['train_vs_hf'] == pytest.approx(ours['train_samples_per_sec'] / hf['train_samples_per_sec'])
    assert 'train_samples_per_sec' not in ort_row and 'train_samples_per_sec' not in comp
    assert hf['backend'] == 'torch' and ort_row['backend'] == 'onnxruntime'
    with pytest.raises(cvtlab.CvtlabError, match='only apply with --compare hf'):
        peers.compare_peers('cvt_tiny', ['onnxruntime'], s, hf_eager=True)
    # ours in onnxruntime, HF in torch: no RSS figure for ours (onnxruntime's arena), so no memory ratio either
    ours, hf = peers.compare_hf('cvt_13', replace(s, backend='onnxruntime', train=False, memory=True),
                                model_args=SMALL_CVT)
    assert ours['backend'].startswith('onnxruntime') and hf['backend'] == 'torch'
    assert 'infer_peak_mem_mb' not in ours and 'infer_mem_vs_hf' not in ours and hf['infer_peak_mem_mb'] > 0
    assert main(['benchmark', 'cvt_13', '-b', '1', '--img-size', '32', '--repeats', '1', '--no-latency', '--no-train',
                 '--compare', 'hf,onnxruntime']) == 0  # cvt_tiny's stages are too shallow for HF
    out = capsys.readouterr().out
    assert 'infer vs HF' in out and 'vs onnxruntime' in out


def test_compare_int8_and_backend_rows(capsys):
    """The int8 peer is timed against the int8 GEMM limit; `--backend` runs the inference copy where asked."""
    from cvtlab.benchmark import compare_peers
    from cvtlab.benchmark.limits import int8_gemm_probes
    s = BenchSettings(batch_size=2, train=False, latency=False, memory=False, repeats=1)
    ours, int8 = compare_peers('cvt_tiny', ['onnxruntime-int8'], s)
    assert int8['dtype'] == 'int8' and list(int8['gemm_limits']) == ['int8 onnxruntime']
    assert 'int8 onnxruntime' not in ours['gemm_limits'] and ours['backend'] == 'torch'
    assert int8['infer_limit_fraction'] == pytest.approx(int8['infer_gflops_per_sec'] / int8['limit_gflops_per_sec'])
    assert ours['onnxruntime-int8_max_abs_diff'] > 0  # quantized: not the same numbers
    (step, gop), = int8_gemm_probes(n=32, calls=1).values()
    assert step().shape == (32, 32) and step().dtype.name == 'int32' and gop == 2 * 32 ** 3 / 1e9
    row = benchmark_model('cvt_tiny', replace(s, backend='onnxruntime'))
    assert row['backend'] == 'onnxruntime' and 'infer_peak_mem_mb' not in row
    with pytest.raises(cvtlab.CvtlabError, match='--backend'):
        benchmark_model('cvt_tiny', replace(s, backend='onnxruntime', dtype='bf16'))
    assert main(['benchmark', 'cvt_tiny', '-b', '2', '--repeats', '1', '--no-latency', '--no-train',
                 '--backend', 'auto']) == 0
    assert 'auto:' in capsys.readouterr().out
