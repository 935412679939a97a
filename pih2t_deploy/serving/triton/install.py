"""Putting built model folders into a Triton repository without touching what this package did not write.

Each model folder it writes carries ``.pih2t-model.json`` (hidden; Triton reads only config.pbtxt, the label
file and numbered version folders) listing the versions it wrote. Installing a model:

- into a folder that does not exist yet: the whole built folder is renamed into place;
- into a folder this package wrote: only the version being built is replaced (with --force when it exists;
  renamed aside, the new one renamed in, the old one removed), config.pbtxt and labels.txt are replaced by
  rename, and every other version and every file of the user's stays;
- into a folder without the marker, or over a version the marker does not list: refused.

Every check runs for every model before anything is moved, so a refusal changes nothing.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from pih2t_deploy import __version__
from pih2t_deploy.errors import UserError

MARKER = ".pih2t-model.json"
REPLACED_FILES = ("config.pbtxt", "labels.txt")


def written_versions(folder: Path) -> set[str] | None:
    """The versions this package wrote into model folder ``folder``, or None when it did not write it."""
    try:
        record = json.loads((folder / MARKER).read_text(encoding="utf-8"))
        return {str(version) for version in record["versions"]}
    except (OSError, ValueError, KeyError, TypeError):
        return None


def check_installable(repo: Path, models: list[str], version: str, force: bool) -> None:
    """UserError naming the first model that cannot be installed without touching what this package did not
    write, or whose version exists and ``force`` is not given."""
    for model in models:
        final = repo / model
        if not final.exists():
            continue
        ours = written_versions(final)
        if ours is None or not final.is_dir():
            raise UserError(
                f"--repo {repo}: {model} exists and was not written by pih2t-triton (no {MARKER}); it is left "
                "alone: remove or rename it, or build into another --repo"
            )
        target = final / version
        if target.exists() and version not in ours:
            raise UserError(f"--repo {repo}: {model}/{version} was not written by pih2t-triton; it is left alone")
        if target.exists() and not force:
            raise UserError(f"{repo}: version {version} of {model} exists; pass --force to replace it")


def install_model(staged: Path, final: Path, version: str) -> None:
    """Move the built model folder ``staged`` to ``final`` as the module docstring says (checks done)."""
    if not final.exists():
        _write_marker(staged, {version})
        staged.rename(final)
        return
    target = final / version
    old = final / f".{version}.replaced-{os.getpid()}"
    if target.exists():
        os.replace(target, old)
    os.replace(staged / version, target)
    shutil.rmtree(old, ignore_errors=True)
    for name in REPLACED_FILES:
        if (staged / name).exists():
            os.replace(staged / name, final / name)
    _write_marker(final, (written_versions(final) or set()) | {version})


def _write_marker(folder: Path, versions: set[str]) -> None:
    record = {"written_by": f"pih2t-deploy {__version__}", "versions": sorted(versions, key=int)}
    tmp = folder / f"{MARKER}.partial"
    tmp.write_text(json.dumps(record) + "\n", encoding="utf-8")
    os.replace(tmp, folder / MARKER)
