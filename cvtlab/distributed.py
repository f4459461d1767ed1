"""Multi-process training: process-group set-up from any launcher, rank helpers, agreement, metric reduction.

Rank and world size come from torchrun (`RANK`, `WORLD_SIZE`, `LOCAL_RANK`), else MPI (Open MPI's
`OMPI_COMM_WORLD_*`, MPICH / Intel MPI's `PMI_RANK`, `PMI_SIZE`, `MPI_LOCALRANKID`), else SLURM (tasks that `srun`
started: `SLURM_PROCID`, `SLURM_NTASKS`, `SLURM_LOCALID`; an sbatch script's own process in a job of several
tasks is refused, as it would wait for peers forever), the same variables timm reads. Without a launcher
everything runs as a world of one. The rendezvous is `env://`: torchrun sets `MASTER_ADDR` / `MASTER_PORT`; under SLURM
or MPI the job script exports them (README: an sbatch example). gloo on CPU, NCCL on GPUs.
"""
import os
from dataclasses import dataclass
from typing import Mapping, Optional, Tuple

import torch
import torch.distributed as dist

from .errors import ConfigError

# (variable for the global rank, world size, local rank): one launcher per row, tried in this order. MPI before
# SLURM: `mpirun` inside an sbatch script starts its ranks through one srun task per node, so they inherit
# SLURM variables that describe those tasks, not the MPI ranks (under `srun --mpi=pmi2` both agree).
_LAUNCHERS = (
    ('torchrun', 'RANK', 'WORLD_SIZE', 'LOCAL_RANK'),
    ('openmpi', 'OMPI_COMM_WORLD_RANK', 'OMPI_COMM_WORLD_SIZE', 'OMPI_COMM_WORLD_LOCAL_RANK'),
    ('mpich', 'PMI_RANK', 'PMI_SIZE', 'MPI_LOCALRANKID'),
    ('slurm', 'SLURM_PROCID', 'SLURM_NTASKS', 'SLURM_LOCALID'),
)


@dataclass
class DistEnv:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device('cpu')
    launcher: str = 'none'

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def slurm_task(environ: Mapping[str, str]) -> bool:
    """Whether this process is a task that `srun` started. An sbatch script's own process (the batch step) also
    has SLURM_PROCID=0 and the job's SLURM_NTASKS, but no step id: srun sets SLURM_STEP_ID (SLURM_STEPID, its
    older name) to the number of the step it launches; salloc's shell has none either. Slurm's own steps
    (batch, extern, interactive) have ids from 0xFFFFFFF0 up, in case a site exports them."""
    step = environ.get('SLURM_STEP_ID', environ.get('SLURM_STEPID', ''))
    return step.isdigit() and int(step) < 0xFFFFFFF0


def world_info(environ: Mapping[str, str]) -> Tuple[str, int, int, int]:
    """(launcher, rank, world size, local rank) from the environment of one process."""
    batch_tasks = None  # SLURM_NTASKS seen in a batch script's own process: the job's tasks, not this world
    for launcher, rank, size, local in _LAUNCHERS:
        if rank in environ and size in environ:
            if launcher == 'slurm' and not slurm_task(environ):
                batch_tasks = environ[size]
                continue
            try:
                # MPI under SLURM's pmi2 sets no local rank of its own: SLURM's when SLURM started this very
                # task (its SLURM_PROCID is this rank; mpirun inside an sbatch script inherits the launcher's), else 0
                slurm_local = environ.get('SLURM_LOCALID', 0) if environ.get('SLURM_PROCID') == environ[rank] else 0
                local_rank = environ.get(local, slurm_local)
                return launcher, int(environ[rank]), int(environ[size]), int(local_rank)
            except ValueError:
                raise ConfigError(f'{launcher}: {rank}={environ[rank]!r} / {size}={environ[size]!r} are not '
                                  f'integers') from None
    if batch_tasks not in (None, '1', '0'):
        # without this, the script's one process would take rank 0 of SLURM_NTASKS and wait for peers forever
        raise ConfigError(f'SLURM: the job has {batch_tasks} tasks but srun did not start this process (no '
                          f'SLURM_STEP_ID: the sbatch script or salloc shell itself); start one process per task '
                          f'with `srun cvtlab train ...` (README, "Distributed")')
    return 'none', 0, 1, 0


def setup(device: str = 'auto', environ: Optional[Mapping[str, str]] = None) -> DistEnv:
    environ = os.environ if environ is None else environ
    launcher, rank, world_size, local_rank = world_info(environ)
    use_cuda = torch.cuda.is_available() if device == 'auto' else device == 'cuda'
    if use_cuda and not torch.cuda.is_available():
        raise ConfigError('--device cuda: no CUDA device is available')
    dev = torch.device(f'cuda:{local_rank}' if use_cuda else 'cpu')
    if use_cuda:
        torch.cuda.set_device(dev)
    if world_size > 1 and not dist.is_initialized():
        missing = [v for v in ('MASTER_ADDR', 'MASTER_PORT') if v not in environ]
        if missing:  # torchrun always sets them; srun / mpirun leave them to the job script
            raise ConfigError(f'{launcher} started {world_size} processes but {" and ".join(missing)} '
                              f'{"is" if len(missing) == 1 else "are"} not set: export the first node\'s address '
                              f'and a free port (README, "Distributed")')
        # with CUDA, gloo still serves the CPU tensors (stop votes, metric sums): NCCL takes CUDA tensors only
        dist.init_process_group(backend='cpu:gloo,cuda:nccl' if use_cuda else 'gloo', init_method='env://',
                                rank=rank, world_size=world_size)
    return DistEnv(rank, world_size, local_rank, dev, launcher)


def teardown():
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def check_sync_bn(env: DistEnv):
    """torch's SyncBatchNorm syncs CUDA (and XPU / HPU) tensors only: in a process group its forward raises
    ValueError on CPU input (tested, so a torch that lifts this is noticed). Say so before any data is read,
    not at the first step. In a world of one there is nothing to sync and it runs as BatchNorm."""
    if env.distributed and env.device.type != 'cuda':
        raise ConfigError('--sync-bn needs CUDA devices: torch.nn.SyncBatchNorm does not run on CPU (gloo)')


def convert_sync_batchnorm(model: torch.nn.Module, env: DistEnv) -> torch.nn.Module:
    """BatchNorm -> SyncBatchNorm (statistics over the global batch). Same state_dict keys, so checkpoints
    load into models with either."""
    check_sync_bn(env)
    return torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)


def all_reduce_sum(values: torch.Tensor) -> torch.Tensor:
    """Sum a float64 tensor over ranks (no-op in a world of one)."""
    if dist.is_available() and dist.is_initialized():
        values = values.clone()
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values


def any_rank(flag: bool) -> bool:
    """True on every rank when it is True on any: one collective, so all ranks decide alike (a stop request
    reaches one rank, or all of them at different steps)."""
    return all_reduce_sum(torch.tensor([float(flag)], dtype=torch.float64)).item() > 0


def broadcast_object(obj, src: int = 0):
    """`obj` from rank `src` on every rank (pickled by torch.distributed; used for small metadata only)."""
    if not (dist.is_available() and dist.is_initialized()):
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def barrier():
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
