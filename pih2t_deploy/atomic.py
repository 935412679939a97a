"""Write files and folders so that readers see either nothing or the complete result, never a partial one.

Temporary names are created private (mkstemp/mkdtemp make 0600/0700) and get the permissions the process
umask gives an ordinary new file or folder (0644/0755 under umask 022) before they are renamed into place, so
an artifact written by one user can be read by another (a container running as another uid). File contents
are flushed to disk (fsync) before the rename.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from pih2t_deploy.errors import UserError


def current_umask() -> int:
    """The process umask (read from /proc where possible, so no other thread sees it change)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _publish_tree(root: Path) -> None:
    """Give ``root`` and everything in it the permissions a new file/folder gets under the umask; fsync files."""
    mask = current_umask()
    if root.is_file():
        os.chmod(root, 0o666 & ~mask)
        _fsync(root)
        return
    for folder, _dirs, files in os.walk(root):
        os.chmod(folder, 0o777 & ~mask)
        for name in files:
            file = Path(folder) / name
            os.chmod(file, 0o666 & ~mask)
            _fsync(file)


def require_writable_folder(folder: str | os.PathLike[str], what: str) -> None:
    """Create ``folder`` if needed and prove a file can be created in it (for root too: /proc or a read-only
    mount fail here); otherwise a UserError that starts with ``what`` (e.g. ``"--output runs/x"``)."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise UserError(f"{what}: cannot write in {folder} ({reason}); choose a folder you can write to") from None


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it is renamed onto ``path``, on error removed."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".partial", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        _publish_tree(tmp)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def write_text_atomic(path: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    with atomic_file(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike[str], *, overwrite: bool = True) -> Iterator[Path]:
    """Yield a temporary folder beside ``path``; on success it replaces ``path`` whole, on error it is removed.

    With ``overwrite=False`` an existing ``path`` is left alone and FileExistsError is raised at the end.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".partial", dir=target.parent))
    try:
        yield tmp
        _publish_tree(tmp)
        if target.exists():
            if not overwrite:
                raise FileExistsError(f"{target} already exists")
            old = target.with_name(f".{target.name}.old-{os.getpid()}")
            os.replace(target, old)
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
