"""Multi-process training: process-group set-up from any launcher, rank helpers, agreement, metric reduction.

Rank and world size come from torchrun (`RANK`, `WORLD_SIZE`, `LOCAL_RANK`), else SLURM (`srun`:
`SLURM_PROCID`, `SLURM_NTASKS`, `SLURM_LOCALID`), else MPI (Open MPI's `OMPI_COMM_WORLD_*`, MPICH / Intel
MPI's `PMI_RANK`, `PMI_SIZE`, `MPI_LOCALRANKID`), the same variables timm reads. Without a launcher everything
runs as a world of one. The rendezvous is `env://`: torchrun sets `MASTER_ADDR` / `MASTER_PORT`; under SLURM
or MPI the job script exports them (README: an sbatch example). gloo on CPU, NCCL on GPUs.
"""
import os
from dataclasses import dataclass
from typing import Mapping, Optional, Tuple

import torch
import torch.distributed as dist

from .errors import ConfigError

# (variable for the global rank, world size, local rank): one launcher per row, tried in this order
_LAUNCHERS = (
    ('torchrun', 'RANK', 'WORLD_SIZE', 'LOCAL_RANK'),
    ('slurm', 'SLURM_PROCID', 'SLURM_NTASKS', 'SLURM_LOCALID'),
    ('openmpi', 'OMPI_COMM_WORLD_RANK', 'OMPI_COMM_WORLD_SIZE', 'OMPI_COMM_WORLD_LOCAL_RANK'),
    ('mpich', 'PMI_RANK', 'PMI_SIZE', 'MPI_LOCALRANKID'),
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


def world_info(environ: Mapping[str, str]) -> Tuple[str, int, int, int]:
    """(launcher, rank, world size, local rank) from the environment of one process."""
    for launcher, rank, size, local in _LAUNCHERS:
        if rank in environ and size in environ:
            try:
                # MPI under SLURM's pmi2 sets no local rank of its own: SLURM's, else 0
                local_rank = environ.get(local, environ.get('SLURM_LOCALID', 0))
                return launcher, int(environ[rank]), int(environ[size]), int(local_rank)
            except ValueError:
                raise ConfigError(f'{launcher}: {rank}={environ[rank]!r} / {size}={environ[size]!r} are not '
                                  f'integers') from None
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


def convert_sync_batchnorm(model: torch.nn.Module, env: DistEnv) -> torch.nn.Module:
    """BatchNorm -> SyncBatchNorm (statistics over the global batch). Same state_dict keys, so checkpoints
    load into models with either. torch syncs only CUDA tensors: on CPU it refuses to run, so say so now."""
    if env.distributed and env.device.type != 'cuda':
        raise ConfigError('--sync-bn needs CUDA devices: torch.nn.SyncBatchNorm does not run on CPU (gloo)')
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
