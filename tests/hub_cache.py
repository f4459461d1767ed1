"""A local HF Hub cache filled by hand, so that Hub ids load offline (`HF_HUB_OFFLINE=1`) in tests."""
import hashlib
import shutil
from pathlib import Path


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

