"""`cvtlab push` / `cvtlab.push_to_hub`: a model folder and its model card, uploaded with huggingface_hub.

What is uploaded is first staged in a folder: `config.json` + `model.safetensors` (`cvtlab.folder`, as
`cvtlab convert` writes them from any source) and `README.md` (`cvtlab.model_card`, with the run's metrics and
command when the source is a training run). `dry_run=DIR` writes exactly that folder and uploads nothing.
timm's `push_to_hf_hub` is not used: it writes its config with `save_for_hf`, which HF transformers'
`pipeline()` cannot read (`cvtlab.folder` says why). Loading back: `hf-hub:ID` in cvtlab and timm, `ID` in
transformers, from the HF cache once downloaded.
"""
import json
import tempfile
from pathlib import Path
from typing import Optional, Tuple

from .checkpoint import atomic_write
from .errors import ConfigError, CvtlabError
from .sources import HUB_PREFIX, LOCAL_PREFIX

CARD_NAME = 'README.md'


def _check_repo_id(repo_id: str):
    from huggingface_hub.utils import validate_repo_id
    try:
        validate_repo_id(repo_id)
    except ValueError as e:
        raise ConfigError(f'{repo_id!r} is not a Hub repository id (ORG/NAME): {str(e).splitlines()[0]}') from None


def run_record(source) -> Tuple[Optional[dict], Optional[str]]:
    """(summary.json, the `cvtlab train` command) of the training run `source` is or is inside (its best/ or
    last/ folder), else (None, None)."""
    import yaml
    from .config import command_line
    text = str(source)
    if text.startswith((HUB_PREFIX, LOCAL_PREFIX)):
        return None, None
    path = Path(text).expanduser()
    run = next((p for p in (path, path.parent) if (p / 'summary.json').is_file()), None)
    if run is None:
        return None, None
    summary = json.loads((run / 'summary.json').read_text())
    config = run / 'config.yaml'
    return summary, command_line(yaml.safe_load(config.read_text())) if config.is_file() else None


def stage(source, repo_id: str, folder) -> Path:
    """Write into `folder` (absent or empty) exactly what `push_to_hub` uploads; returns it."""
    from .folder import save_pretrained
    from .model_card import model_card
    from .registry import load_with_architecture
    folder = Path(folder)
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        raise ConfigError(f'{folder}: not an empty folder (it would not be exactly what is uploaded)')
    loaded = load_with_architecture(source)
    save_pretrained(loaded.model, folder, architecture=loaded.architecture, model_args=loaded.model_args,
                    label_names=loaded.label_names)
    card = model_card(repo_id, loaded.model, *run_record(source))
    atomic_write(folder / CARD_NAME, lambda tmp: Path(tmp).write_text(card))
    return folder


def push_to_hub(source, repo_id: str, *, private: bool = False, dry_run=None, token: Optional[str] = None,
                commit_message: str = 'Upload model with cvtlab push') -> dict:
    """Upload the model of `source` (a training run, a model folder, a weights file, `hf-hub:ID`) to the Hub
    repository `repo_id`, created (`private` if asked; an existing repository keeps its visibility) if absent.

    `dry_run`: a folder to write what would be uploaded into, instead of uploading. `token`: default
    huggingface_hub's (`HF_TOKEN`, or `hf auth login`). Returns repo_id, files and, for an upload, its url.
    """
    _check_repo_id(repo_id)
    if dry_run is not None:
        folder = stage(source, repo_id, dry_run)
        return dict(repo_id=repo_id, private=private, uploaded=False, folder=str(folder),
                    files=sorted(p.name for p in folder.iterdir()))
    from huggingface_hub import HfApi
    with tempfile.TemporaryDirectory(prefix='cvtlab-push-') as tmp:
        folder = stage(source, repo_id, Path(tmp) / 'upload')
        files = sorted(p.name for p in folder.iterdir())
        try:
            api = HfApi(token=token, library_name='cvtlab')
            repo = api.create_repo(repo_id, private=private, exist_ok=True)
            commit = api.upload_folder(repo_id=repo.repo_id, folder_path=folder, commit_message=commit_message)
        except (OSError, ValueError) as e:  # huggingface_hub's HTTP, offline and validation errors
            raise CvtlabError(f'push to {repo_id} failed: {type(e).__name__}: {str(e).splitlines()[0][:200]}') \
                from None
    return dict(repo_id=repo.repo_id, private=private, uploaded=True, url=str(repo), commit=commit.oid, files=files)
