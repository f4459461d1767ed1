"""Where a model's files are: a model folder, a training run, a weights file, or a repository on the HF Hub.

Every reader of weights (`load_model`, `load_checkpoint`, `create_model(checkpoint=...)`, `Classifier`, the
CLI) takes the same sources:
- a model folder (`config.json` + `model.safetensors`, or HF transformers' `save_pretrained` output);
- a training run directory: its `best/` model, else `last/` (runs written before the folder format:
  `best.safetensors`, else `last.safetensors`);
- a weights file of any supported layout (`.safetensors`, `.pth`, `.bin`), with `NAME.json` beside it;
- `hf-hub:ORG/NAME[@REVISION]`: that repository's `config.json` and weights, fetched into the HF cache
  with huggingface_hub (read from the cache alone when `HF_HUB_OFFLINE=1`); `local-dir:DIR` as in timm.
"""
import os
from pathlib import Path
from typing import Optional, Tuple

from .errors import CheckpointError

HUB_PREFIX = 'hf-hub:'
LOCAL_PREFIX = 'local-dir:'
RUN_FOLDERS = ('best', 'last')
LEGACY_RUN_FILES = ('best.safetensors', 'last.safetensors')
HUB_WEIGHT_FILES = ('model.safetensors', 'pytorch_model.bin')  # the first the repository has is fetched


def is_source_path(source) -> bool:
    """Whether `source` names files (a path, `hf-hub:` or `local-dir:`) rather than a timm model name."""
    text = str(source)
    return (isinstance(source, os.PathLike) or text.startswith((HUB_PREFIX, LOCAL_PREFIX))
            or os.sep in text or Path(text).suffix in ('.safetensors', '.pth', '.bin', '.pt') or Path(text).exists())


def locate(source) -> Tuple[Path, Optional[str]]:
    """(the local folder or file holding the model, the Hub repository it came from or None). Reads nothing
    but directory listings, except for `hf-hub:` ids (fetched)."""
    text = str(source)
    if text.startswith(HUB_PREFIX):
        repo_id = text[len(HUB_PREFIX):]
        return fetch_from_hub(repo_id), repo_id.split('@')[0]
    path = Path(text[len(LOCAL_PREFIX):] if text.startswith(LOCAL_PREFIX) else text).expanduser()
    if not path.exists():
        raise CheckpointError(f'{path}: no such checkpoint file or folder')
    return run_model(path), None


def run_model(path: Path) -> Path:
    """A training run's model (`best/`, else `last/`; older runs: the `.safetensors` files); else `path`."""
    if not path.is_dir():
        return path
    for name in RUN_FOLDERS:
        if (path / name / 'config.json').is_file():
            return path / name
    for name in LEGACY_RUN_FILES:
        if (path / name).is_file():
            return path / name
    return path


def fetch_from_hub(repo_id: str) -> Path:
    """The snapshot folder of `repo_id` in the HF cache, holding its `config.json` and weights."""
    from huggingface_hub import constants, hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError, LocalEntryNotFoundError
    repo, _, revision = repo_id.partition('@')
    where = 'the HF cache (HF_HUB_OFFLINE is set)' if constants.HF_HUB_OFFLINE else 'the HF Hub or the HF cache'

    def fetch(filename: str) -> Path:
        return Path(hf_hub_download(repo, filename, revision=revision or None))

    try:
        config = fetch('config.json')
        for name in HUB_WEIGHT_FILES:
            try:
                fetch(name)
                return config.parent
            except EntryNotFoundError:  # this one is absent (LocalEntryNotFoundError: not cached, offline)
                continue
    except LocalEntryNotFoundError:
        raise CheckpointError(f'{HUB_PREFIX}{repo_id}: its config.json is not in {where}') from None
    except (HfHubHTTPError, ValueError, OSError) as e:  # unknown or private repository, bad id, network
        raise CheckpointError(f'{HUB_PREFIX}{repo_id}: {type(e).__name__}: {str(e).splitlines()[0][:200]}') from None
    raise CheckpointError(f'{HUB_PREFIX}{repo_id}: neither {" nor ".join(HUB_WEIGHT_FILES)} in {where}')

