"""A local HF Hub cache filled by hand, so that Hub ids load offline (`HF_HUB_OFFLINE=1`) in tests."""
import hashlib
import shutil
from pathlib import Path

import pytest


def fill_hf_cache(cache: Path, repo_id: str, folder: Path) -> Path:
    """Put the files of `folder` into `cache` as the `main` revision of model repository `repo_id`, laid out
    as huggingface_hub lays out its cache: models--ORG--NAME/refs/main holds a commit hash, and
    snapshots/HASH/ the files (real files here where huggingface_hub links into blobs/; lookups are the same)."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    commit = hashlib.sha1(repo_id.encode()).hexdigest()
    snapshot = repo / 'snapshots' / commit
    snapshot.mkdir(parents=True)
    for f in Path(folder).iterdir():
        shutil.copy(f, snapshot / f.name)
    (repo / 'refs').mkdir()
    (repo / 'refs' / 'main').write_text(commit)
    return snapshot


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
