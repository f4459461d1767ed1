"""Every data source behind one call: image folders, digits and CIFAR (`cvtlab.data`), WebDataset shards and HF
datasets (`cvtlab.streaming`), each kind with its own loader behind the trainer's one interface."""
from typing import Optional

from . import data, streaming
from .data import DataSplit


def build_datasets(data_spec: str, train_transform, eval_transform, *, data_root: str = '~/.cache/cvtlab/data',
                   download: bool = True, val_split: float = 0.2, strict: bool = False, seed: int = 0,
                   val_data: Optional[str] = None, hub_download: bool = False) -> DataSplit:
    """Training and validation data of any kind; `val_data` (any kind) replaces the validation part.
    `hub_download`: an `hfds:` Hub name may be fetched; otherwise it is read from the HF cache only."""
    kwargs = dict(data_root=data_root, download=download, val_split=val_split, strict=strict, seed=seed)
    if streaming.is_streaming(data_spec) or (val_data is not None and streaming.is_streaming(val_data)):
        return streaming.build_datasets(data_spec, val_data, train_transform, eval_transform,
                                        hub_download=hub_download, **kwargs)
    return data.build_datasets(data_spec, train_transform, eval_transform, val_data=val_data, **kwargs)


def train_loader(dataset, batch_size: int, world_size: int, rank: int, seed: int, num_workers: int, pin: bool):
    make = streaming.train_loader if isinstance(dataset, streaming.ShardStream) else data.train_loader
    return make(dataset, batch_size, world_size, rank, seed, num_workers, pin)


def eval_loader(dataset, batch_size: int, world_size: int = 1, rank: int = 0, num_workers: int = 0,
                pin: bool = False):
    make = streaming.eval_loader if isinstance(dataset, streaming.ShardStream) else data.eval_loader
    return make(dataset, batch_size, world_size, rank, num_workers, pin)
