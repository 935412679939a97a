"""Open Inference Protocol (KServe v2) bodies: JSON and Triton's binary tensor extension, both directions.

A binary request is the JSON header (its length in the ``Inference-Header-Content-Length`` header) followed
by the raw bytes of every input whose ``parameters.binary_data_size`` is set, in input order. BYTES tensors
are serialised element by element as a 4-byte little-endian length and the bytes; in JSON they are strings
(their UTF-8 bytes), or base64 where the input says ``"parameters": {"content_type": "base64"}``.
"""

from __future__ import annotations

import base64
import json
import math
import struct
from dataclasses import dataclass
from typing import Any

import numpy as np

from pih2t_deploy.errors import first_line
from pih2t_deploy.serving.client_numbers import parse_whole_number
from pih2t_deploy.serving.errors import InvalidInput, quote

HEADER = "inference-header-content-length"
MAX_RANK = 8  # no model here takes more than 4 dimensions; a longer shape is refused before any arithmetic
MAX_DIMENSION = 1 << 31
NUMPY_TYPES = {
    "FP32": np.float32,
    "FP64": np.float64,
    "FP16": np.float16,
    "INT64": np.int64,
    "INT32": np.int32,
    "INT16": np.int16,
    "INT8": np.int8,
    "UINT8": np.uint8,
    "BOOL": np.bool_,
}


class ProtocolError(InvalidInput):
    """A malformed inference request (the protocol's body or message; HTTP 400, gRPC INVALID_ARGUMENT)."""


def _refuse_constant(token: str) -> float:
    raise ProtocolError(f"the JSON body holds the non-finite number {token}; send finite numbers only")


def load_json(raw: bytes) -> Any:
    """Parse a JSON request body; ProtocolError (never another exception) for text that is not JSON, nesting
    deeper than the parser allows, integers beyond Python's 4,300-digit limit, and NaN / Infinity tokens."""
    try:
        return json.loads(raw or b"null", parse_constant=_refuse_constant)
    except ProtocolError:
        raise
    except RecursionError:
        raise ProtocolError("the JSON body is nested too deeply") from None
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, an integer with too many digits
        raise ProtocolError(f"the request body is not valid JSON ({first_line(exc)[:120]})") from None


def parameters_of(holder: dict[str, Any], where: str) -> dict[str, Any]:
    """The ``parameters`` object of a request, input or output (empty when absent); ProtocolError otherwise."""
    value = holder.get("parameters")
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ProtocolError(f"{where}: 'parameters' must be a JSON object")
    return value


def is_count(value: Any) -> bool:
    """A JSON integer >= 0 (``true`` and ``false`` are not counts)."""
    return type(value) is int and value >= 0


@dataclass
class Tensor:
    """One decoded input tensor: name, datatype, shape and values (a numpy array, or a list of bytes)."""

    name: str
    datatype: str
    shape: list[int]
    data: Any


def _split_body(body: bytes, header_length: str | None) -> tuple[dict[str, Any], bytes]:
    if header_length is None:
        json_part, rest = body, b""
    else:
        length = parse_whole_number(header_length)
        if length is None or not 0 <= length <= len(body):
            raise ProtocolError(
                f"Inference-Header-Content-Length {quote(header_length)} is not a byte count that fits the body"
            )
        json_part, rest = body[:length], body[length:]
    request = load_json(json_part)
    if not isinstance(request, dict) or not isinstance(request.get("inputs"), list) or not request["inputs"]:
        raise ProtocolError("the request needs a non-empty 'inputs' list")
    return request, rest


def deserialize_bytes(raw: bytes) -> list[bytes]:
    """Elements of a binary BYTES tensor."""
    out, offset = [], 0
    while offset < len(raw):
        if offset + 4 > len(raw):
            raise ProtocolError("truncated BYTES tensor")
        (length,) = struct.unpack_from("<I", raw, offset)
        offset += 4
        if offset + length > len(raw):
            raise ProtocolError("truncated BYTES tensor element")
        out.append(raw[offset : offset + length])
        offset += length
    return out


def serialize_bytes(items: list[bytes]) -> bytes:
    """Binary form of a BYTES tensor."""
    return b"".join(struct.pack("<I", len(item)) + item for item in items)


def _bytes_from_json(data: Any, name: str, parameters: dict[str, Any]) -> list[bytes]:
    """Elements of a BYTES tensor given as JSON strings: their UTF-8 bytes, as tritonclient and KServe's client
    send them, or base64-decoded when the input's ``parameters.content_type`` is ``"base64"``."""
    encoding = parameters.get("content_type")
    if encoding not in (None, "str", "base64"):
        raise ProtocolError(f"input {quote(name)}: content_type must be 'str' or 'base64', got {quote(encoding)}")
    flat = np.asarray(data, dtype=object).reshape(-1).tolist()
    if not all(isinstance(item, str) for item in flat):
        raise ProtocolError(f"input {quote(name)}: BYTES data in JSON must be strings")
    if encoding != "base64":
        return [item.encode("utf-8", "surrogatepass") for item in flat]
    try:
        return [base64.b64decode(item, validate=True) for item in flat]
    except ValueError:  # binascii.Error, or characters outside ASCII
        raise ProtocolError(f"input {quote(name)}: content_type is 'base64' but the data is not valid base64") from None


def _typed_values(values: Any, dtype: np.dtype) -> np.ndarray:
    """Listed values as a flat array of ``dtype``; ValueError for a fraction or an out-of-range number in an
    integer tensor (numpy would truncate or wrap them silently)."""
    if dtype.kind not in "iu":
        return np.asarray(values, dtype=dtype).reshape(-1)
    given = np.asarray(values).reshape(-1)
    if given.size and given.dtype.kind not in "iub":
        raise ValueError("not whole numbers")
    limits = np.iinfo(dtype)
    if given.size and (given.min() < limits.min or given.max() > limits.max):
        raise ValueError("out of range")
    return given.astype(dtype)


def element_count(name: str, shape: Any) -> int:
    """The number of elements of ``shape``; ProtocolError, before any arithmetic, unless it is a list of at
    most MAX_RANK whole numbers in [0, 2**31) (so the product is small work on a small list)."""
    if not isinstance(shape, list) or len(shape) > MAX_RANK:
        length = f" of {len(shape):,} dimensions" if isinstance(shape, list) else ""
        raise ProtocolError(
            f"input {quote(name)}: shape must be a list of at most {MAX_RANK} dimensions, got one{length}"
        )
    if not all(is_count(d) and d < MAX_DIMENSION for d in shape):
        raise ProtocolError(f"input {quote(name)}: shape must be a list of non-negative integers below 2**31")
    return math.prod(shape)


def decode_tensor(name: str, datatype: str, shape: Any, raw: bytes | None, values: Any = None) -> Tensor:
    """One input tensor from its raw bytes (binary extension, gRPC raw contents) or from its listed
    ``values`` (JSON data, gRPC typed contents; BYTES elements as bytes); ProtocolError when the shape is not a
    short list of counts (``element_count``), the datatype is unknown, the number of elements does not match
    the shape, or a floating-point value is not finite."""
    datatype = str(datatype).upper()
    count = element_count(name, shape)
    if datatype == "BYTES":
        items = deserialize_bytes(raw) if raw is not None else list(values)
        if len(items) != count:
            raise ProtocolError(f"input {quote(name)}: {len(items)} elements for shape {shape}")
        return Tensor(name, datatype, shape, items)
    if datatype not in NUMPY_TYPES:
        raise ProtocolError(f"input {quote(name)}: unsupported datatype {quote(datatype)}")
    dtype = NUMPY_TYPES[datatype]
    try:
        if raw is not None:
            array = np.frombuffer(raw, dtype=np.dtype(dtype).newbyteorder("<"))
        else:
            array = _typed_values(values, np.dtype(dtype))
    except (ValueError, TypeError, OverflowError):
        raise ProtocolError(f"input {quote(name)}: data is not {datatype}") from None
    if array.size != count:
        raise ProtocolError(f"input {quote(name)}: {array.size} values for shape {shape}")
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        raise ProtocolError(
            f"input {quote(name)}: values must be finite {datatype} numbers (NaN, infinity, or beyond the range of "
            f"{datatype} such as 1e39 for FP32, found)"
        )
    return Tensor(name, datatype, shape, array.reshape(shape))


def parse_request(body: bytes, header_length: str | None) -> tuple[dict[str, Any], list[Tensor]]:
    """The request JSON and its decoded input tensors; ProtocolError for anything malformed."""
    request, rest = _split_body(body, header_length)
    tensors, offset = [], 0
    for entry in request["inputs"]:
        if not isinstance(entry, dict) or not {"name", "datatype", "shape"} <= set(entry):
            raise ProtocolError("each input needs 'name', 'datatype' and 'shape'")
        name = entry["name"]
        element_count(name, entry["shape"])  # before the data is looked at
        parameters = parameters_of(entry, f"input {quote(name)}")
        size = parameters.get("binary_data_size")
        raw, values = None, None
        if size is not None:
            if not is_count(size) or offset + size > len(rest):
                raise ProtocolError(f"input {quote(name)}: binary_data_size does not fit the body")
            raw, offset = rest[offset : offset + size], offset + size
        elif "data" not in entry:
            raise ProtocolError(f"input {quote(name)} has neither 'data' nor binary data")
        elif str(entry["datatype"]).upper() == "BYTES":
            values = _bytes_from_json(entry["data"], name, parameters)
        else:
            values = entry["data"]
        tensors.append(decode_tensor(name, entry["datatype"], entry["shape"], raw, values))
    return request, tensors


def encode_response(
    outputs: list[dict[str, Any]], binary: set[str], head: dict[str, Any]
) -> tuple[bytes, dict[str, str]]:
    """Body and headers of a response. ``outputs`` hold name/datatype/shape/values; names in ``binary`` are
    sent as raw bytes after the JSON header, the others inline as JSON data."""
    blobs, described = [], []
    for output in outputs:
        entry = {"name": output["name"], "datatype": output["datatype"], "shape": output["shape"]}
        values = output["values"]
        if output["name"] in binary:
            blob = serialize_bytes(values) if output["datatype"] == "BYTES" else np.ascontiguousarray(values).tobytes()
            entry["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            if output["datatype"] == "BYTES":
                entry["data"] = [v.decode("utf-8", "replace") for v in values]
            else:
                entry["data"] = np.asarray(values).reshape(-1).tolist()
        described.append(entry)
    header = json.dumps({**head, "outputs": described}, allow_nan=False).encode()
    if not blobs:
        return header, {"content-type": "application/json"}
    return header + b"".join(blobs), {"content-type": "application/octet-stream", HEADER: str(len(header))}
