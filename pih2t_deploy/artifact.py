"""The exported artifact folder: ``model.json`` (the manifest), ``labels.txt`` and the model file(s).

The second contract of the package, beside ``checkpoint.py`` (what training writes): export writes an artifact
with ``write_manifest`` / ``write_labels``; the runtime, the Triton repository builder, the demo, bench and
offline prediction read it only through ``read_manifest`` / ``read_labels``. The manifest names its format
(``pih2t-artifact/1``): a reader refuses, in one line, a folder that is no artifact, an unknown format, or a
newer version than it understands, instead of misreading it.
"""

from __future__ import annotations

import hashlib
import json
import re
import stat
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pih2t_deploy import __version__
from pih2t_deploy.errors import UserError, first_line

ARTIFACT_FORMAT_NAME = "pih2t-artifact"
ARTIFACT_VERSION = 1
ARTIFACT_FORMAT = f"{ARTIFACT_FORMAT_NAME}/{ARTIFACT_VERSION}"
MANIFEST_FILE = "model.json"
LABELS_FILE = "labels.txt"


class ArtifactError(UserError):
    """A folder that is not a readable artifact of a format this version understands (exit status 2)."""


@dataclass(frozen=True)
class TensorSpec:
    """One model input or output: name, shape (``"batch"`` for a dynamic batch axis), dtype; an input's
    ``layout`` (NCHW floats, NHWC uint8 pixels), an output's ``kind`` (logits or probabilities)."""

    name: str
    shape: list[int | str]
    dtype: str
    layout: str | None = None
    kind: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """The JSON object (absent fields left out)."""
        return {k: v for k, v in asdict(self).items() if v is not None}


@dataclass(frozen=True)
class Manifest:
    """What ``model.json`` says: the model file and its format, the tensors, the checkpoint's metadata, how
    the export was made and verified, the versions that made it, and the sha256 of every other file."""

    model_file: str
    model_format: str
    input: TensorSpec
    output: TensorSpec
    meta: dict[str, Any]
    versions: dict[str, str]
    export: dict[str, Any] = field(default_factory=dict)
    fold: dict[str, Any] = field(default_factory=dict)
    verification: list[dict[str, Any]] = field(default_factory=list)
    accuracy: dict[str, Any] = field(default_factory=dict)
    graph: dict[str, Any] | None = None
    openvino: dict[str, Any] | None = None
    tensorrt: dict[str, Any] | None = None
    files: dict[str, str] = field(default_factory=dict)
    format: str = ARTIFACT_FORMAT

    @property
    def pixel_input(self) -> bool:
        """True when the model takes uint8 pixels (preprocessing embedded in the graph)."""
        return self.input.dtype == "uint8"

    @property
    def probabilities(self) -> bool:
        """True when the model ends in a softmax."""
        return self.output.kind == "probabilities"

    @property
    def version(self) -> str:
        """The served model version: the first 12 hex digits of the model file's sha256 ("1" if unknown)."""
        return self.files.get(self.model_file, "")[:12] or "1"

    def to_dict(self) -> dict[str, Any]:
        """The JSON object written to ``model.json`` (absent optional sections left out)."""
        body = {k: v for k, v in asdict(self).items() if v is not None}
        body["input"], body["output"] = self.input.to_dict(), self.output.to_dict()
        return {"format": self.format, **{k: v for k, v in body.items() if k != "format"}}

    @classmethod
    def from_dict(cls, data: Any, where: str = MANIFEST_FILE) -> Manifest:
        """A Manifest from parsed JSON; ArtifactError (one line) for another format, a newer version or a
        missing field."""
        if not isinstance(data, dict):
            raise ArtifactError(f"{where} is not a JSON object")
        check_format(data.get("format"), where)
        try:
            return cls(
                **{k: v for k, v in data.items() if k not in ("input", "output", "format")},
                input=TensorSpec(**data["input"]),
                output=TensorSpec(**data["output"]),
                format=data["format"],
            )
        except (KeyError, TypeError) as exc:
            raise ArtifactError(f"{where} lacks or misnames a field of {ARTIFACT_FORMAT} ({exc})") from None


def check_format(value: Any, where: str) -> None:
    """ArtifactError unless ``value`` is ``pih2t-artifact/N`` with N no newer than this package reads."""
    name, _, number = str(value).partition("/")
    if name != ARTIFACT_FORMAT_NAME or not number.isdigit():
        raise ArtifactError(f"{where} is not a pih2t artifact manifest (format {value!r}, expected {ARTIFACT_FORMAT})")
    if int(number) > ARTIFACT_VERSION:
        raise ArtifactError(
            f"{where} is {value}, newer than this pih2t-deploy {__version__} reads ({ARTIFACT_FORMAT}); "
            "upgrade pih2t-deploy or export the model again with this version"
        )


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file's bytes, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


# (device, inode, size, mtime) of a file already hashed in this process -> its sha256
_DIGESTS: dict[tuple[int, int, int, int], str] = {}
FILE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")


def verify_files(folder: Path, manifest: Manifest) -> None:
    """ArtifactError unless every file ``model.json`` lists is a regular file (no link, device or FIFO)
    directly in ``folder`` whose sha256 is the one recorded, and the model file is among them.

    The manifest itself is not covered (it holds the digests): ``pih2t-export --sign-key`` signs the whole
    folder for that. A file is hashed once per process (streamed; keyed by device, inode, size and mtime).
    """
    names = [*manifest.files, manifest.model_file]
    bad = next((name for name in names if not FILE_NAME.fullmatch(name) or name == MANIFEST_FILE), None)
    if bad is not None:
        raise ArtifactError(f"{folder}/{MANIFEST_FILE} names {bad[:80]!r}, which is not a file name of an artifact")
    if manifest.model_file not in manifest.files:
        raise ArtifactError(f"{folder}/{MANIFEST_FILE} records no sha256 for its model file {manifest.model_file}")
    for name, recorded in manifest.files.items():
        path = folder / name
        try:
            info = path.lstat()
        except OSError:
            raise ArtifactError(f"{folder}: {name} is missing (model.json lists it); export the model again") from None
        if not stat.S_ISREG(info.st_mode):
            raise ArtifactError(f"{folder}: {name} is not a regular file (a link, folder or device); refusing it")
        key = (info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns)
        if key not in _DIGESTS:
            _DIGESTS[key] = sha256_file(path)
        if _DIGESTS[key] != recorded:
            raise ArtifactError(
                f"{folder}: {name} has changed since it was exported (its sha256 differs from the one model.json "
                "records); refusing to load it. Export the model again, or restore the file"
            )


def write_labels(folder: Path, class_names: list[str]) -> Path:
    """``labels.txt``: one class name per line, index order; names must be single-line."""
    bad = [name for name in class_names if "\n" in name or "\r" in name]
    if bad:
        raise ValueError(f"class names must not contain line breaks: {bad[:3]}")
    path = folder / LABELS_FILE
    path.write_text("".join(f"{name}\n" for name in class_names), encoding="utf-8")
    return path


def read_labels(folder: Path, num_classes: int) -> list[str]:
    """The class names of ``labels.txt``; ArtifactError when it is missing or has not one line per class."""
    try:
        labels = (folder / LABELS_FILE).read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise ArtifactError(f"{folder}: cannot read {LABELS_FILE} ({exc.strerror or exc})") from None
    if len(labels) != num_classes:
        raise ArtifactError(f"{folder}: {LABELS_FILE} has {len(labels)} lines for {num_classes} classes")
    return labels


def write_manifest(folder: Path, manifest: Manifest) -> Manifest:
    """Write ``model.json`` with ``files`` set to the sha256 of every other file in ``folder``; return it."""
    files = {p.name: sha256_file(p) for p in sorted(folder.iterdir()) if p.is_file() and p.name != MANIFEST_FILE}
    done = Manifest(**{**manifest.__dict__, "files": files})
    (folder / MANIFEST_FILE).write_text(json.dumps(done.to_dict(), indent=2) + "\n", encoding="utf-8")
    return done


def read_manifest(folder: Path) -> Manifest:
    """The manifest of the artifact ``folder``; ArtifactError (one line) when it is missing, unreadable, of
    another format or of a newer version."""
    path = folder / MANIFEST_FILE
    if not path.is_file():
        raise ArtifactError(f"{folder} is not an exported artifact (no {MANIFEST_FILE}); run pih2t-export first")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ArtifactError(f"{path} is unreadable ({first_line(exc)})") from None
    return Manifest.from_dict(data, str(path))
