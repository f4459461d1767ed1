"""Training past one process: launchers' environments, SyncBatchNorm, a real two-node job on localhost, and a
SIGTERM that reaches one rank of a DDP job (all stop at the same step, save once, resume)."""
import csv
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import cvtlab
from cvtlab import distributed
from cvtlab.errors import ConfigError
from cvtlab.trainer import check_resume_layout

# A BatchNorm-free model (LG) without drop path: its result can equal a one-process run with the same global
# batch. (CvT's projections hold BatchNorm, whose batch statistics are per process unless synced, and
# SyncBatchNorm does not run on CPU.)
COMMON = ['train', '--model', 'lg_nano', '--drop-path-rate', '0', '--epochs', '1', '--num-workers', '0',
          '--quiet', '--deterministic', '--seed', '5', '--log-interval', '1']
GLOBAL_BATCH = 64


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def _env(**extra):
    env = {k: v for k, v in os.environ.items() if not k.startswith(('SLURM_', 'OMPI_', 'PMI_', 'MASTER_'))}
    env.update(OMP_NUM_THREADS='1', **extra)
    return env


def _cvtlab(*args):
    return [sys.executable, '-m', 'cvtlab', *map(str, args)]


def _torchrun(*args):
    return [sys.executable, '-m', 'torch.distributed.run', *map(str, args), '-m', 'cvtlab']


def _rows(run: Path):
    return list(csv.DictReader(open(run / 'metrics.csv')))


def assert_same_result(a: Path, b: Path, atol=1e-4):
    """Same steps and, within float tolerance (gradients are summed in another order), the same losses, accuracy
    and weights."""
    ra, rb = _rows(a), _rows(b)
    assert [r['step'] for r in ra] == [r['step'] for r in rb]
    for x, y in zip(ra, rb):
        for key in ('train_loss', 'val_loss', 'val_top1'):
            assert float(x[key]) == pytest.approx(float(y[key]), abs=atol * 100 if key == 'val_top1' else atol), key
    wa, wb = (cvtlab.checkpoint.read_state_dict(run / 'last' / 'model.safetensors') for run in (a, b))
    assert wa.keys() == wb.keys()
    worst = max((wa[k].float() - wb[k].float()).abs().max().item() for k in wa)
    assert worst < atol, worst


@pytest.fixture(scope='module')
def one_process_run(tmp_path_factory):
    out = tmp_path_factory.mktemp('one') / 'run'
    result = subprocess.run(_cvtlab(*COMMON, '--batch-size', GLOBAL_BATCH, '--output', out), env=_env(),
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    return out


def test_world_info_from_torchrun_slurm_and_mpi():
    assert distributed.world_info({}) == ('none', 0, 1, 0)
    slurm = dict(SLURM_PROCID='3', SLURM_NTASKS='8', SLURM_LOCALID='1', SLURM_STEP_ID='0')  # as srun sets them
    assert distributed.world_info(slurm) == ('slurm', 3, 8, 1)
    # torchrun inside an sbatch allocation: torchrun's own variables win
    assert distributed.world_info({**slurm, 'RANK': '5', 'WORLD_SIZE': '16', 'LOCAL_RANK': '2'}) == ('torchrun', 5, 16, 2)
    ompi = dict(OMPI_COMM_WORLD_RANK='2', OMPI_COMM_WORLD_SIZE='4', OMPI_COMM_WORLD_LOCAL_RANK='0')
    assert distributed.world_info(ompi) == ('openmpi', 2, 4, 0)
    assert distributed.world_info(dict(PMI_RANK='1', PMI_SIZE='2', MPI_LOCALRANKID='1')) == ('mpich', 1, 2, 1)
    with pytest.raises(ConfigError, match='not integers'):
        distributed.world_info(dict(SLURM_PROCID='x', SLURM_NTASKS='2', SLURM_STEP_ID='0'))


# What an sbatch script's own process (the batch step) sees, as Slurm sets it: rank 0 of the job's tasks, the
# job's task count, no step id (srun sets SLURM_STEP_ID for the tasks it starts)
BATCH_STEP = dict(SLURM_JOB_ID='200505', SLURM_PROCID='0', SLURM_LOCALID='0', SLURM_NTASKS='4', SLURM_NPROCS='4',
                  SLURM_NODEID='0', SLURM_GTIDS='0')


def test_a_plain_run_in_an_sbatch_script_fails_fast_instead_of_waiting_for_peers():
    for batch in (BATCH_STEP, {**BATCH_STEP, 'SLURM_STEP_ID': '4294967291'}):  # or Slurm's batch step id
        with pytest.raises(ConfigError, match='the job has 4 tasks but srun did not start this process.*srun cvtlab'):
            distributed.world_info(batch)
        # before any rendezvous: no MASTER_ADDR is needed to hear it
        with pytest.raises(ConfigError, match='srun did not start this process'):
            distributed.setup('cpu', batch)
    # a job of one task: the script's process is the whole world
    assert distributed.world_info({**BATCH_STEP, 'SLURM_NTASKS': '1'}) == ('none', 0, 1, 0)
    # srun's tasks, in the same job (the older SLURM_STEPID counts too)
    assert distributed.world_info({**BATCH_STEP, 'SLURM_STEP_ID': '0'}) == ('slurm', 0, 4, 0)
    assert distributed.world_info({**BATCH_STEP, 'SLURM_STEPID': '2'}) == ('slurm', 0, 4, 0)
    # mpirun inside the script: its own variables win over the SLURM ones it inherits (from the batch step, or
    # from the one srun task per node that starts its daemons)
    mpirun = dict(OMPI_COMM_WORLD_RANK='5', OMPI_COMM_WORLD_SIZE='8', OMPI_COMM_WORLD_LOCAL_RANK='1')
    assert distributed.world_info({**BATCH_STEP, **mpirun}) == ('openmpi', 5, 8, 1)
    assert distributed.world_info({**BATCH_STEP, 'SLURM_STEP_ID': '0', 'SLURM_PROCID': '1', **mpirun}) == \
        ('openmpi', 5, 8, 1)
    # an MPI without a local rank of its own takes SLURM's only where SLURM started this very task (srun --mpi=pmi2)
    pmi = dict(PMI_RANK='5', PMI_SIZE='8')
    assert distributed.world_info({**BATCH_STEP, 'SLURM_LOCALID': '3', **pmi}) == ('mpich', 5, 8, 0)
    assert distributed.world_info({**BATCH_STEP, 'SLURM_STEP_ID': '0', 'SLURM_PROCID': '5', 'SLURM_LOCALID': '1',
                                   **pmi}) == ('mpich', 5, 8, 1)


def test_many_processes_without_a_rendezvous_address_is_a_clear_error():
    with pytest.raises(ConfigError, match='slurm started 4 processes but MASTER_ADDR and MASTER_PORT are not set'):
        distributed.setup('cpu', dict(SLURM_PROCID='0', SLURM_NTASKS='4', SLURM_STEP_ID='0'))


def test_sync_bn_converts_batchnorm_and_keeps_keys():
    model = cvtlab.create_model('cvt_tiny', num_classes=3)
    before = model.state_dict()
    synced = distributed.convert_sync_batchnorm(model, distributed.DistEnv())
    assert any(isinstance(m, torch.nn.SyncBatchNorm) for m in synced.modules())
    assert not any(type(m) is torch.nn.BatchNorm2d for m in synced.modules())
    after = synced.state_dict()
    assert after.keys() == before.keys() and all(torch.equal(after[k], before[k]) for k in before)
    # torch syncs CUDA tensors only: on CPU a distributed run says so before training
    with pytest.raises(ConfigError, match='--sync-bn needs CUDA'):
        distributed.convert_sync_batchnorm(model, distributed.DistEnv(rank=0, world_size=2))


def test_torch_syncbatchnorm_still_refuses_cpu_tensors():
    """Why --sync-bn is CUDA-only: in a process group (here a gloo world of one, enough to reach the check),
    SyncBatchNorm's forward refuses CPU input. If a torch release lifts this, this test says to revisit
    `distributed.check_sync_bn`."""
    import torch.distributed as dist
    store = dist.HashStore()
    dist.init_process_group('gloo', store=store, rank=0, world_size=1)
    try:
        bn = torch.nn.SyncBatchNorm(3).train()
        with pytest.raises(ValueError, match='SyncBatchNorm expected input tensor to be on GPU'):
            bn(torch.randn(4, 3, 2, 2))
    finally:
        dist.destroy_process_group()


def test_sync_bn_on_two_cpu_processes_is_one_line_on_every_rank(tmp_path):
    """A real two-process gloo job (as srun starts it) with --sync-bn on CPU: every rank stops with the one-line
    error before reading data, rather than failing (or hanging) at the first step."""
    port = _free_port()
    procs = [subprocess.Popen(_cvtlab('train', '--model', 'cvt_tiny', '--sync-bn', '--device', 'cpu', '--epochs', 1,
                                      '--num-workers', 0, '--quiet', '--output', tmp_path / 'run'),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env=_env(SLURM_PROCID=str(r), SLURM_NTASKS='2', SLURM_LOCALID=str(r),
                                       SLURM_STEP_ID='0', MASTER_ADDR='127.0.0.1', MASTER_PORT=str(port)))
             for r in range(2)]
    results = [p.communicate(timeout=300) for p in procs]
    for p, (_, err) in zip(procs, results):
        assert p.returncode == 2 and 'Traceback' not in err, err[-2000:]
        assert [line for line in err.splitlines() if line.startswith('cvtlab: error:')] == \
            ['cvtlab: error: --sync-bn needs CUDA devices: torch.nn.SyncBatchNorm does not run on CPU (gloo)'], err
    assert not (tmp_path / 'run' / 'train_state.pt').exists()


def test_two_node_job_equals_one_process_with_the_same_global_batch(one_process_run, tmp_path):
    """Two torchrun launchers (`--nnodes 2`, one process each) meet through the c10d rendezvous on localhost;
    gloo. Same seed, --deterministic, half the batch each: the result equals the one-process run's."""
    out, port = tmp_path / 'two', _free_port()
    node = _torchrun('--nnodes', 2, '--nproc-per-node', 1, '--rdzv-backend', 'c10d', '--rdzv-endpoint',
                     f'127.0.0.1:{port}', '--rdzv-id', 'cvtlab-two-node')
    args = [*COMMON, '--batch-size', GLOBAL_BATCH // 2, '--output', out]
    nodes = [subprocess.Popen(node + list(map(str, args)), env=_env(), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [p.communicate(timeout=900) for p in nodes]
    assert [p.returncode for p in nodes] == [0, 0], [err[-2000:] for _, err in results]
    log = (out / 'train.log').read_text()
    assert '2 process(es)' in log and '(global batch 64)' in log
    assert_same_result(one_process_run, out)


def _rank_pid(launcher: subprocess.Popen, rank: int, timeout=300) -> int:
    """The pid of the worker that torchrun started for `rank` (read from its environment)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        for child in Path(f'/proc/{launcher.pid}/task/{launcher.pid}/children').read_text().split():
            try:
                env = Path(f'/proc/{child}/environ').read_bytes().split(b'\0')
            except OSError:
                continue
            if f'RANK={rank}'.encode() in env:
                return int(child)
        time.sleep(0.1)
    raise TimeoutError(f'no rank {rank} worker')


def test_sigterm_on_one_rank_stops_all_at_one_step_and_resume_under_slurm_finishes(one_process_run, tmp_path):
    """SIGTERM reaches rank 1 only: every rank stops after the same update, rank 0 saves once, all exit 0. The
    run then resumes as a SLURM job would start it (srun's variables, no torchrun) and ends with the result of
    the uninterrupted one-process run."""
    out = tmp_path / 'cut'
    args = [*COMMON, '--batch-size', GLOBAL_BATCH // 2, '--output', out]
    launcher = subprocess.Popen(_torchrun('--standalone', '--nproc-per-node', 2) + list(map(str, args)),
                                env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    rank1 = _rank_pid(launcher, 1)
    deadline = time.time() + 600
    while time.time() < deadline and ('[3/22]' not in _read(out / 'train.log')) and launcher.poll() is None:
        time.sleep(0.05)
    assert '[3/22]' in _read(out / 'train.log'), 'the run ended before it could be interrupted'
    os.kill(rank1, signal.SIGTERM)
    _, stderr = launcher.communicate(timeout=600)
    assert launcher.returncode == 0, stderr[-3000:]
    log = _read(out / 'train.log')
    assert 'a stop request on another process: stopped at epoch 1, batch' in log  # rank 0 got no signal itself
    assert log.count('state saved in') == 1  # saved once, by rank 0
    state = torch.load(out / 'train_state.pt', weights_only=True)
    assert 3 <= state['run']['batch_in_epoch'] < 22 and state['run']['step'] == state['run']['batch_in_epoch']

    port = _free_port()
    procs = [subprocess.Popen(_cvtlab('train', '--output', out, '--resume'), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True,
                              env=_env(SLURM_PROCID=str(r), SLURM_NTASKS='2', SLURM_LOCALID=str(r), SLURM_STEP_ID='0',
                                       MASTER_ADDR='127.0.0.1', MASTER_PORT=str(port)))
             for r in range(2)]
    results = [p.communicate(timeout=900) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [err[-2000:] for _, err in results]
    assert 'resumed at epoch 1, batch' in _read(out / 'train.log')
    assert_same_result(one_process_run, out)


def _read(path: Path) -> str:
    return path.read_text() if path.exists() else ''


def _layout(world, batch, workers=0, accum=1, streamed=False):
    return dict(world_size=world, batch_size=batch, grad_accum=accum, num_workers=workers, streamed=streamed,
                loader_workers=max(1, workers) if streamed else None)


def test_resume_layout_decides_what_carries_over():
    """Resume under another world size: the step size (world x batch) and --grad-accum must stay (the step count,
    schedule and place in the epoch count those steps); map-style data then continues even inside an epoch;
    streamed shards inside an epoch need the same processes and loader workers."""
    same = _layout(2, 32, workers=2)
    assert check_resume_layout(same, dict(same), mid_epoch=True) is None
    assert check_resume_layout(None, same, mid_epoch=True) is None  # a state from before layouts were recorded
    # map-style: 2 x 32 -> 4 x 16 continues, even inside an epoch, and says so; workers do not matter
    note = check_resume_layout(same, _layout(4, 16, workers=8), mid_epoch=True)
    assert note == ('written by 2 process(es) x --batch-size 32, continued by 4 process(es) x --batch-size 16: '
                    'the same 64 images a step, the rest of this epoch exactly')
    with pytest.raises(ConfigError, match=r'steps of 64 images \(2 process\(es\) x --batch-size 32\), this job 128 '
                                          r'.*: resume with --batch-size 16$'):
        check_resume_layout(same, _layout(4, 32), mid_epoch=False)
    with pytest.raises(ConfigError, match=r'resume with 2 process\(es\) and --batch-size 32$'):
        check_resume_layout(same, _layout(3, 32), mid_epoch=False)
    with pytest.raises(ConfigError, match=r'resume with --grad-accum 2$'):
        check_resume_layout(_layout(2, 32, accum=2), same, mid_epoch=False)
    # streamed shards: each rank and loader worker reads its own range of the epoch
    shards = _layout(2, 32, workers=2, streamed=True)
    for other in (_layout(2, 32, workers=4, streamed=True), _layout(4, 16, workers=2, streamed=True)):
        with pytest.raises(ConfigError, match=r'inside an epoch of streamed shards read by 2 process\(es\) x 2 loader '
                                              r'worker\(s\).*resume with 2 process\(es\) and --num-workers 2$'):
            check_resume_layout(shards, other, mid_epoch=True)
        check_resume_layout(shards, other, mid_epoch=False)  # the next epoch is planned for the new layout
    # 0 and 1 loader workers read alike (one reader per process)
    assert check_resume_layout(_layout(1, 8, 0, streamed=True), _layout(1, 8, 1, streamed=True), mid_epoch=True) is None


def test_resume_refuses_or_continues_by_the_recorded_layout(tmp_path, capsys):
    """Through `cvtlab train --resume` on shards: the state records its layout; a mid-epoch state resumed with
    other loader workers, or steps of another size, is a one-line error; another world size with the same step
    size continues and the log says so."""
    from test_streaming import write_shards
    from test_train import assert_one_line_error, run_in_process
    train = write_shards(tmp_path / 'train', sizes=(20, 20, 24))
    val = write_shards(tmp_path / 'val', sizes=(9,))
    out = tmp_path / 'run'
    args = ['train', '--data', f'wds:{train}', '--val-data', f'wds:{val}', '--model', 'lg_nano', '--img-size', 32,
            '--batch-size', 8, '--num-workers', 0, '--quiet', '--output', out]
    assert run_in_process(capsys, *args, '--epochs', 1).returncode == 0
    path = out / 'train_state.pt'
    state = torch.load(path, weights_only=True)
    assert state['layout'] == _layout(1, 8, 0, streamed=True)

    def resume(layout, batch_in_epoch, *flags):
        torch.save({**state, 'layout': layout, 'run': {**state['run'], 'batch_in_epoch': batch_in_epoch}}, path)
        return run_in_process(capsys, 'train', '--output', out, '--resume', '--epochs', 2, *flags)

    assert_one_line_error(resume(_layout(1, 8, 0, streamed=True), 3, '--num-workers', 2),
                          'inside an epoch of streamed shards read by 1 process(es) x 1 loader worker(s)')
    assert_one_line_error(resume(_layout(2, 8, 0, streamed=True), 0), 'resume with --batch-size 16')
    # written by 2 processes x 4 at the end of an epoch: one process x 8 continues, and says so
    assert resume(_layout(2, 4, 0, streamed=True), 0).returncode == 0
    assert ('resumed at epoch 2, batch 0 (written by 2 process(es) x --batch-size 4, continued by 1 process(es) x '
            '--batch-size 8: the same 8 images a step, from the next epoch)') in (out / 'train.log').read_text()
