"""torchrun + DistributedDataParallel: process-group set-up, rank helpers, metric reduction.

`torchrun --nproc_per_node=N -m cvtlab train ...` sets RANK / WORLD_SIZE / LOCAL_RANK; gloo on CPU,
NCCL on GPUs. Without torchrun everything runs as a world of one.
"""
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class DistEnv:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device('cpu')

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def setup(device: str = 'auto') -> DistEnv:
    world_size = int(os.environ.get('WORLD_SIZE', 1))
    rank = int(os.environ.get('RANK', 0))
    local_rank = int(os.environ.get('LOCAL_RANK', 0))
    use_cuda = torch.cuda.is_available() if device == 'auto' else device == 'cuda'
    if use_cuda and not torch.cuda.is_available():
        from .errors import ConfigError
        raise ConfigError('--device cuda: no CUDA device is available')
    dev = torch.device(f'cuda:{local_rank}' if use_cuda else 'cpu')
    if use_cuda:
        torch.cuda.set_device(dev)
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend='nccl' if use_cuda else 'gloo')
    return DistEnv(rank, world_size, local_rank, dev)


def teardown():
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(values: torch.Tensor) -> torch.Tensor:
    """Sum a float64 tensor over ranks (no-op in a world of one)."""
    if dist.is_available() and dist.is_initialized():
        values = values.clone()
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values


def barrier():
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
