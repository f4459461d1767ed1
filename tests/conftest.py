import os

import pytest
import torch

os.environ.setdefault('HF_HUB_OFFLINE', '1')  # nothing in the suite may reach a hub
if os.environ.get('PYTEST_XDIST_WORKER'):  # `pytest -n N`: the workers, and the CLIs they start, share the cores
    os.environ['OMP_NUM_THREADS'] = '1'
    torch.set_num_threads(1)
else:
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def hf_cache(tmp_path, monkeypatch):
    """An empty HF cache, offline, for this process (huggingface_hub reads its constants at call time) and for
    the processes it starts (through the environment)."""
    from huggingface_hub import constants
    cache = tmp_path / 'hf-cache'
    cache.mkdir()
    monkeypatch.setattr(constants, 'HF_HUB_CACHE', str(cache))
    monkeypatch.setattr(constants, 'HF_HUB_OFFLINE', True)
    monkeypatch.setenv('HF_HUB_CACHE', str(cache))
    monkeypatch.setenv('HF_HUB_OFFLINE', '1')
    return cache
