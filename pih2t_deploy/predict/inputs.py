"""What to classify: a folder (recursive), a glob, a text file of paths, one image, or an ImageFolder tree.

Paths come out in a deterministic order (sorted per folder, walked lazily, so a folder of millions of images is
never listed in memory at once). An ImageFolder tree is a folder whose images all sit in sub-folders named
after classes the model knows; then every image's true label is its folder's name.
"""

from __future__ import annotations

import itertools
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from pih2t_deploy.data.images import IMAGE_SUFFIXES
from pih2t_deploy.errors import DataError

GLOB_CHARACTERS = frozenset("*?[")
logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class InputItem:
    """One image to classify, with its true label when the input says it."""

    path: str
    true_label: str | None = None


@dataclass(frozen=True)
class Inputs:
    """A resolved input: ``kind`` (folder, imagefolder, glob, list, image), the source, and whether the items
    carry true labels. Iterating yields InputItems in a fixed order."""

    kind: str
    source: str
    labelled: bool = False

    def __iter__(self) -> Iterator[InputItem]:
        if self.kind == "imagefolder":
            root = Path(self.source)
            for folder in sorted(entry.name for entry in os.scandir(root) if entry.is_dir()):
                yield from (InputItem(path, folder) for path in _walk(root / folder))
        elif self.kind == "folder":
            yield from (InputItem(path) for path in _walk(Path(self.source)))
        elif self.kind == "glob":
            yield from (InputItem(path) for path in _glob(self.source))
        elif self.kind == "list":
            yield from (InputItem(path) for path in _listed(Path(self.source)))
        else:
            yield InputItem(self.source)


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_SUFFIXES)


def _walk(folder: Path, seen: frozenset[tuple[int, int]] = frozenset()) -> Iterator[str]:
    """Image files under ``folder``, depth first, each folder's entries sorted by name; hidden entries skipped.
    A folder reached again through a symbolic link (a loop, e.g. ``a/up -> ..``) is not walked again."""
    try:
        here = os.stat(folder)
        entries = sorted(os.scandir(folder), key=lambda entry: entry.name)
    except OSError as exc:
        raise DataError(f"cannot list {folder}: {exc.strerror}") from None
    seen = seen | {(here.st_dev, here.st_ino)}
    for entry in entries:
        if entry.name.startswith("."):
            continue
        if entry.is_dir():
            try:
                target = entry.stat()
            except OSError:
                continue  # a dangling or unreadable link: nothing to walk
            if (target.st_dev, target.st_ino) in seen:
                logger.warning("skipped %s: a symbolic link back to a folder already being walked", entry.path)
                continue
            yield from _walk(Path(entry.path), seen)
        elif _is_image(entry.name):
            yield entry.path


def _glob(pattern: str) -> list[str]:
    """The files matching ``pattern`` (``**`` for any depth), sorted; hidden entries skipped. Matched with
    pathlib below the pattern's fixed leading folders, which does not follow symbolic links to folders, so a
    link loop cannot multiply the matches."""
    parts = Path(pattern).parts
    fixed = list(itertools.takewhile(lambda part: not GLOB_CHARACTERS & set(part), parts))
    root, rest = Path(*fixed) if fixed else Path("."), parts[len(fixed) :]
    found = (path for path in root.glob(str(Path(*rest))) if not path.is_dir())
    return sorted(str(path) for path in found if not any(p.startswith(".") for p in path.relative_to(root).parts))


def _listed(list_file: Path) -> Iterator[str]:
    """Paths of a list file, one per line (blank lines and lines starting with # skipped); a relative path is
    relative to the list file's folder."""
    base = list_file.parent
    with list_file.open(encoding="utf-8") as handle:
        for line in handle:
            text = line.strip()
            if text and not text.startswith("#"):
                yield text if os.path.isabs(text) else str(base / text)


def resolve_inputs(source: str, class_names: list[str]) -> Inputs:
    """The Inputs that ``source`` names; a DataError saying what was expected when it names nothing usable.

    A folder is an ImageFolder tree (labelled) when it holds no images itself and each of its non-hidden
    sub-folders is named after one of ``class_names``; otherwise it is walked recursively without labels.
    """
    if GLOB_CHARACTERS & set(source) and not Path(source).exists():
        return Inputs("glob", source)
    path = Path(source)
    if path.is_dir():
        return (
            Inputs("imagefolder", source, labelled=True)
            if _is_image_folder(path, class_names)
            else Inputs("folder", source)
        )
    if path.is_file():
        return Inputs("image", source) if _is_image(path.name) else Inputs("list", source)
    raise DataError(
        f"--input {source} does not exist: pass a folder of images, a glob such as 'photos/**/*.jpg', "
        "a text file with one image path per line, or one image"
    )


def _is_image_folder(root: Path, class_names: list[str]) -> bool:
    try:
        entries = [entry for entry in os.scandir(root) if not entry.name.startswith(".")]
    except OSError as exc:
        raise DataError(f"cannot list {root}: {exc.strerror}") from None
    folders = {entry.name for entry in entries if entry.is_dir()}
    loose_images = any(entry.is_file() and _is_image(entry.name) for entry in entries)
    return bool(folders) and not loose_images and folders <= set(class_names)
