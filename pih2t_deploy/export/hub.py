"""``pih2t-export --push-to-hub REPO``: the verified artifact folder uploaded to a Hugging Face model repository
in one commit, through huggingface_hub (``HF_ENDPOINT`` picks another hub, ``HF_TOKEN`` or ``hf auth login``
gives the token). The repository and the token are checked before exporting, so a typo costs no export; an
upload that fails leaves the artifact on disk and says how to upload it later."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from pih2t_deploy.errors import UserError, first_line


class HubError(UserError):
    """A repository name, token or upload the Hub refused (the artifact folder, when written, stays)."""


def check_hub_target(repo_id: str) -> None:
    """HubError unless ``repo_id`` is a valid ``namespace/name`` and a token is available (HF_TOKEN or a saved
    login); huggingface_hub's own rules decide, nothing is sent."""
    from huggingface_hub import get_token
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError as exc:
        raise HubError(f"--push-to-hub {repo_id!r} is not a repository id: {first_line(exc)}") from None
    if "/" not in repo_id:
        raise HubError(f"--push-to-hub {repo_id!r}: name the owner too, as in your-name/{repo_id}")
    if not get_token():
        raise HubError("--push-to-hub needs a Hugging Face token: set HF_TOKEN or run `hf auth login`")


def push_folder(folder: Path, repo_id: str, *, private: bool, message: str, log: Callable[[str], None]) -> str:
    """Create model repository ``repo_id`` if it does not exist (``private`` then) and upload every file of
    ``folder`` (one commit for an artifact's few files; huggingface_hub batches only much larger folders); the
    commit's URL. HubError with the reason and the command to retry."""
    import httpx
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    api = HfApi()
    retry = f"the artifact is in {folder}; upload it later with: hf upload {repo_id} {folder} ."
    try:
        url = api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
        log(f"uploading {folder} to {url}")
        commit = api.upload_folder(folder_path=folder, repo_id=repo_id, repo_type="model", commit_message=message)
    except (HfHubHTTPError, OfflineModeIsEnabled, httpx.HTTPError, OSError, ValueError) as exc:
        raise HubError(f"pushing to {repo_id} failed ({first_line(exc)}); {retry}") from None
    return str(commit.commit_url)
