"""The exported artifact folder: model file(s), ``labels.txt`` and ``model.json`` (with sha256 of each file)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

ARTIFACT_FORMAT = "pih2t-artifact/1"
MANIFEST = "model.json"
LABELS = "labels.txt"


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def write_labels(folder: Path, class_names: list[str]) -> Path:
    """``labels.txt``: one class name per line, index order; names must be single-line."""
    bad = [name for name in class_names if "\n" in name or "\r" in name]
    if bad:
        raise ValueError(f"class names must not contain line breaks: {bad[:3]}")
    path = folder / LABELS
    path.write_text("".join(f"{name}\n" for name in class_names), encoding="utf-8")
    return path


def write_manifest(folder: Path, manifest: dict[str, Any]) -> dict[str, Any]:
    """Write ``model.json`` with ``files`` (the sha256 of every other file in ``folder``); return its content."""
    files = {p.name: sha256_file(p) for p in sorted(folder.iterdir()) if p.is_file() and p.name != MANIFEST}
    body = {"format": ARTIFACT_FORMAT, **manifest, "files": files}
    (folder / MANIFEST).write_text(json.dumps(body, indent=2) + "\n", encoding="utf-8")
    return body


def read_manifest(folder: Path) -> dict[str, Any]:
    """The parsed ``model.json`` of an artifact folder."""
    return json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
