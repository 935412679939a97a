"""Pickles as Python 2's cPickle wrote the CIFAR "python version" files: protocol 2, every string a Python 2
``str`` (SHORT_BINSTRING / BINSTRING opcodes, which Python 3 reads back as bytes with encoding="bytes"),
numpy arrays through ``numpy.core.multiarray._reconstruct`` with their raw bytes as such a string."""

from __future__ import annotations

import pickle
import struct
from pathlib import Path
from typing import Any


class Python2Pickler(pickle._Pickler):
    """The pure-Python pickler with str and bytes written as Python 2 strings."""

    dispatch = pickle._Pickler.dispatch.copy()

    def save_python2_string(self, obj: str | bytes) -> None:
        data = obj if isinstance(obj, bytes) else obj.encode("latin-1")
        if len(data) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(data)]) + data)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(data)) + data)
        self.memoize(obj)

    dispatch[bytes] = save_python2_string
    dispatch[str] = save_python2_string


def dump_python2(obj: Any, path: Path) -> None:
    """Write ``obj`` to ``path`` as Python 2 would have."""
    with Path(path).open("wb") as handle:
        Python2Pickler(handle, protocol=2).dump(obj)
    assert Path(path).read_bytes()[:3] == b"\x80\x02}", "a protocol-2 dict, as the CIFAR files start"
