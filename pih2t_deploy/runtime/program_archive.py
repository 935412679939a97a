"""Reading a torch.export archive (``model.pt2``) from an untrusted folder without running any of its code.

``torch.export.load`` unpickles parts of an archive with ``weights_only=False``: tensors marked
``use_pickle`` in the weights or constants configuration, custom and opaque objects among the constants,
and the sample inputs, which it reads with ``weights_only=True`` first but retries unrestricted when that
fails. A crafted archive therefore runs code when it is loaded. Before torch sees the bytes, this module
checks every member of the archive against what ``torch.export.save`` writes for a program of plain tensors
(the only kind this package exports):

- only the member names that layout has (archive metadata, the graph JSON, the weights and constants
  configurations, their raw tensor files, the sample inputs);
- no configuration entry stored by pickle, and constants only as tensors (no custom or opaque objects);
- the sample inputs (a ``torch.save`` file) readable with ``weights_only=True``, the allow-list the
  checkpoint loader uses, so torch's unrestricted retry never happens.

Anything else is refused with one line naming the member. The archive is read into memory once and the same
bytes are handed to torch, so the file cannot change between the check and the load.
"""

from __future__ import annotations

import io
import json
import pickle
import re
import warnings
import zipfile
from pathlib import Path
from typing import Any

from pih2t_deploy.errors import UserError, first_line

MAX_MEMBERS = 100_000
# the layout torch.export.save writes under the archive's root folder, for a program of plain tensors
METADATA = re.compile(r"(archive_format|archive_version|byteorder|\.data/version|\.data/serialization_id)")
GRAPH = re.compile(r"models/[\w.-]+\.json")
CONFIG = re.compile(r"data/(weights|constants)/[\w.-]+_(weights|constants)_config\.json")
RAW_TENSOR = re.compile(r"data/(weights/weight|constants/tensor)_\d+")
SAMPLE_INPUTS = re.compile(r"data/sample_inputs/[\w.-]+\.pt")
TENSOR_FILE = re.compile(r"(weight|tensor)_\d+")


class UnsafeArchiveError(UserError):
    """A model.pt2 that holds something a program of plain tensors does not: refused unread (exit 2)."""


def read_program(path: Path) -> Any:
    """The ``torch.export`` program in ``path``, loaded only after ``check_archive`` passed on its bytes."""
    import torch

    raw = path.read_bytes()
    check_archive(raw, path.name)
    try:
        return torch.export.load(io.BytesIO(raw))
    except Exception as exc:  # torch.export raises several types for unreadable archives
        raise UserError(f"cannot load {path} as a torch.export program: {first_line(exc)}") from None


def check_archive(raw: bytes, where: str) -> None:
    """UnsafeArchiveError naming the first member of the archive ``raw`` that loading could execute, or that
    a plain-tensor program does not have; UserError when it is not a zip archive at all."""
    try:
        archive = zipfile.ZipFile(io.BytesIO(raw))
        members = archive.infolist()
    except (zipfile.BadZipFile, OSError, ValueError):
        raise UserError(f"{where} is not a torch.export archive (not a zip file)") from None
    if len(members) > MAX_MEMBERS:
        raise UnsafeArchiveError(f"{where} has {len(members):,} members; a model archive has a few hundred")
    for member in members:
        name = member.filename.split("/", 1)[-1]  # without the archive's root folder
        if member.is_dir() or METADATA.fullmatch(name) or GRAPH.fullmatch(name) or RAW_TENSOR.fullmatch(name):
            continue
        if CONFIG.fullmatch(name):
            _check_config(archive.read(member), member.filename, where)
        elif SAMPLE_INPUTS.fullmatch(name):
            _check_weights_only(archive.read(member), member.filename, where)
        else:
            raise UnsafeArchiveError(
                f"refused {where}: member {member.filename!r} is not part of a torch.export program of plain "
                "tensors (custom objects and pickles could run code); export the model again with pih2t-export"
            )


def _check_config(data: bytes, member: str, where: str) -> None:
    try:
        entries = json.loads(data)["config"]
        items = list(entries.items())
    except (ValueError, KeyError, TypeError, AttributeError):
        raise UnsafeArchiveError(f"refused {where}: {member!r} is not a tensor configuration") from None
    for key, entry in items:
        if not isinstance(entry, dict) or entry.get("use_pickle") is not False:
            raise UnsafeArchiveError(
                f"refused {where}: {member!r} stores {str(key)[:60]!r} by pickle, which could run code when loaded"
            )
        if not TENSOR_FILE.fullmatch(str(entry.get("path_name"))):
            raise UnsafeArchiveError(
                f"refused {where}: {member!r} names {str(entry.get('path_name'))[:60]!r}, not a tensor file "
                "(custom and opaque objects are unpickled when loaded)"
            )


def _check_weights_only(data: bytes, member: str, where: str) -> None:
    import torch

    try:
        with warnings.catch_warnings():  # torch warns about the pickle protocol of files it then refuses
            warnings.simplefilter("ignore")
            torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, ValueError, EOFError, zipfile.BadZipFile, KeyError) as exc:
        found = re.search(r"GLOBAL ([\w.]+)", str(exc))
        what = f" ({found.group(1)})" if found else ""
        raise UnsafeArchiveError(
            f"refused {where}: member {member!r} needs unpickling of arbitrary Python objects{what}, which could "
            "run code; export the model again with pih2t-export"
        ) from None
