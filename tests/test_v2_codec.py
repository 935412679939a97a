"""The Open Inference Protocol codec on hand-made bodies: JSON and binary inputs, BYTES both ways, the
response layout, and every malformed form answered with its reason."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest

from pih2t_deploy.serving.v2_codec import (
    ProtocolError,
    decode_tensor,
    deserialize_bytes,
    element_count,
    encode_response,
    is_count,
    load_json,
    parameters_of,
    parse_request,
    serialize_bytes,
)


def _binary(header: dict, *blobs: bytes) -> tuple[bytes, str]:
    head = json.dumps(header).encode()
    return head + b"".join(blobs), str(len(head))


def test_json_and_binary_inputs_decode_to_the_same_tensors():
    values = np.arange(6, dtype=np.float32).reshape(2, 3) / 4
    as_json = {
        "inputs": [{"name": "x", "datatype": "fp32", "shape": [2, 3], "data": [[0, 0.25, 0.5], [0.75, 1, 1.25]]}]
    }
    request, (tensor,) = parse_request(json.dumps(as_json).encode(), None)
    assert (tensor.name, tensor.datatype, tensor.shape) == ("x", "FP32", [2, 3]) and request is not None
    np.testing.assert_array_equal(tensor.data, values)
    entry = {"name": "x", "datatype": "FP32", "shape": [2, 3], "parameters": {"binary_data_size": values.nbytes}}
    body, length = _binary({"inputs": [entry]}, values.astype("<f4").tobytes())
    _, (binary,) = parse_request(body, length)
    np.testing.assert_array_equal(binary.data, values)
    assert binary.data.dtype == np.float32


def test_two_binary_inputs_are_read_in_order_and_bytes_elements_round_trip():
    first, second = np.array([1, 2, 3], dtype=np.uint8), serialize_bytes([b"ab", b"", b"\x00\xff"])
    assert second == b"\x02\x00\x00\x00ab\x00\x00\x00\x00\x02\x00\x00\x00\x00\xff"
    inputs = [
        {"name": "a", "datatype": "UINT8", "shape": [3], "parameters": {"binary_data_size": 3}},
        {"name": "b", "datatype": "BYTES", "shape": [3], "parameters": {"binary_data_size": len(second)}},
    ]
    body, length = _binary({"inputs": inputs}, first.tobytes(), second)
    _, (a, b) = parse_request(body, length)
    assert a.data.tolist() == [1, 2, 3] and b.data == [b"ab", b"", b"\x00\xff"]
    assert deserialize_bytes(second) == [b"ab", b"", b"\x00\xff"]


def test_json_bytes_are_utf8_strings_or_base64_when_asked():
    plain = {"inputs": [{"name": "s", "datatype": "BYTES", "shape": [2], "data": ["h\u00e9", "x"]}]}
    assert parse_request(json.dumps(plain).encode(), None)[1][0].data == ["h\u00e9".encode(), b"x"]
    b64 = {
        "inputs": [
            {
                "name": "s",
                "datatype": "BYTES",
                "shape": [1, 1],
                "data": [["aGk="]],
                "parameters": {"content_type": "base64"},
            }
        ]
    }
    assert parse_request(json.dumps(b64).encode(), None)[1][0].data == [b"hi"]


def _one(**entry) -> bytes:
    return json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], **entry}]}).encode()


@pytest.mark.parametrize(
    ("body", "length", "message"),
    [
        (b"{}", None, "the request needs a non-empty 'inputs' list"),
        (b'{"inputs": []}', None, "the request needs a non-empty 'inputs' list"),
        (b'{"inputs": [1]}', None, "each input needs 'name', 'datatype' and 'shape'"),
        (b'{"inputs": [{"name": "x", "datatype": "FP32"}]}', None, "each input needs 'name', 'datatype' and 'shape'"),
        (_one(), None, "input 'x' has neither 'data' nor binary data"),
        (_one(shape=[-1], data=[]), None, "input 'x': shape must be a list of non-negative integers"),
        (_one(shape=3, data=[1]), None, "input 'x': shape must be a list of at most 8 dimensions, got one"),
        (_one(shape=[1] * 9, data=[1]), None, "input 'x': shape must be a list of at most 8 dimensions, got one of 9"),
        (_one(shape=[2**31], data=[1]), None, "input 'x': shape must be a list of non-negative integers below 2**31"),
        (_one(shape=[2], data=[1]), None, "input 'x': 1 values for shape [2]"),
        (_one(data=["a"]), None, "input 'x': data is not FP32"),
        (_one(datatype="UINT8", data=[300]), None, "input 'x': data is not UINT8"),
        (_one(datatype="INT8", data=[-129]), None, "input 'x': data is not INT8"),
        (_one(datatype="INT32", data=[1.5]), None, "input 'x': data is not INT32"),
        (_one(datatype="COMPLEX", data=[1]), None, "input 'x': unsupported datatype 'COMPLEX'"),
        (_one(datatype="BYTES", shape=[2], data=["a"]), None, "input 'x': 1 elements for shape [2]"),
        (_one(parameters={"binary_data_size": 8}), "", "Inference-Header-Content-Length '' is not a byte count"),
        (b"{}", "999", "Inference-Header-Content-Length '999' is not a byte count that fits the body"),
        (b"{}", "-1", "Inference-Header-Content-Length '-1' is not a byte count that fits the body"),
        (b"{}", "\xb2", "Inference-Header-Content-Length '\xb2' is not a byte count"),
        (b"{}", "\u0662", "Inference-Header-Content-Length '\u0662' is not a byte count"),
    ],
)
def test_malformed_requests_name_the_problem(body, length, message):
    with pytest.raises(ProtocolError) as refused:
        parse_request(body, length)
    assert message in str(refused.value)


def test_binary_data_must_fit_the_body():
    body, length = _binary(
        {"inputs": [{"name": "x", "datatype": "FP32", "shape": [2], "parameters": {"binary_data_size": 8}}]}, b"\0" * 4
    )
    with pytest.raises(ProtocolError, match="input 'x': binary_data_size does not fit the body"):
        parse_request(body, length)


def test_truncated_bytes_and_non_finite_values_are_refused():
    with pytest.raises(ProtocolError, match=r"truncated BYTES tensor$"):
        deserialize_bytes(b"\x05\x00")
    with pytest.raises(ProtocolError, match="truncated BYTES tensor element"):
        deserialize_bytes(struct.pack("<I", 5) + b"abc")
    for bad in (np.nan, np.inf, -np.inf):
        with pytest.raises(ProtocolError, match="values must be finite FP32 numbers"):
            decode_tensor("x", "FP32", [2], np.array([0.0, bad], dtype="<f4").tobytes())
    assert decode_tensor("x", "INT64", [2], None, [1, -2]).data.tolist() == [1, -2]


def test_json_numbers_refused_or_kept():
    with pytest.raises(ProtocolError, match="non-finite number NaN"):
        load_json(b"[NaN]")
    with pytest.raises(ProtocolError, match="nested too deeply"):
        load_json(b"[" * 5000 + b"]" * 5000)
    with pytest.raises(ProtocolError, match="not valid JSON"):
        load_json(b"{")
    assert load_json(b"") is None and load_json(b'{"a": 1.5}') == {"a": 1.5}
    assert [is_count(v) for v in (0, 3, -1, True, 1.0, "2")] == [True, True, False, False, False, False]
    assert parameters_of({}, "x") == {} and parameters_of({"parameters": {"k": 1}}, "x") == {"k": 1}
    with pytest.raises(ProtocolError, match=r"^the input: 'parameters' must be a JSON object$"):
        parameters_of({"parameters": []}, "the input")


def test_responses_put_binary_outputs_after_the_json_header():
    logits = np.array([[1.5, -2.0]], dtype=np.float32)
    head = {"model_name": "m", "model_version": "1"}
    body, headers = encode_response(
        [{"name": "logits", "datatype": "FP32", "shape": [1, 2], "values": logits}], set(), head
    )
    assert headers == {"content-type": "application/json"}
    assert json.loads(body) == {
        **head,
        "outputs": [{"name": "logits", "datatype": "FP32", "shape": [1, 2], "data": [1.5, -2.0]}],
    }
    labels = [b"0.9:1:b", b"0.1:0:a"]
    outputs = [
        {"name": "logits", "datatype": "FP32", "shape": [1, 2], "values": logits},
        {"name": "top", "datatype": "BYTES", "shape": [1, 2], "values": labels},
    ]
    body, headers = encode_response(outputs, {"logits", "top"}, head)
    length = int(headers["inference-header-content-length"])
    assert headers["content-type"] == "application/octet-stream"
    described = json.loads(body[:length])["outputs"]
    assert [o["parameters"]["binary_data_size"] for o in described] == [8, len(serialize_bytes(labels))]
    rest = body[length:]
    np.testing.assert_array_equal(np.frombuffer(rest[:8], dtype="<f4"), logits.ravel())
    assert deserialize_bytes(rest[8:]) == labels
    text, _ = encode_response(outputs[1:], set(), head)
    assert json.loads(text)["outputs"][0]["data"] == ["0.9:1:b", "0.1:0:a"]


def _refused(body: bytes, length: str | None = None) -> str:
    with pytest.raises(ProtocolError) as refused:
        parse_request(body, length)
    return str(refused.value)


def test_every_reason_word_for_word():
    assert _refused(b"[" * 5000 + b"]" * 5000) == "the JSON body is nested too deeply"
    assert _refused(b"{") == (
        "the request body is not valid JSON (Expecting property name enclosed in double quotes: line 1 column 2 "
        "(char 1))"
    )
    assert _refused(b"{}", "9") == "Inference-Header-Content-Length '9' is not a byte count that fits the body"
    assert _refused(b"{}", "9" * 100_000) == (
        f"Inference-Header-Content-Length '{'9' * 39}... (100002 characters) is not a byte count that fits the body"
    )
    assert _refused(b"{}") == "the request needs a non-empty 'inputs' list"
    assert _refused(b'{"inputs": [{"name": "x"}]}') == "each input needs 'name', 'datatype' and 'shape'"
    assert _refused(_one(parameters=[1], data=[1])) == "input 'x': 'parameters' must be a JSON object"
    assert _refused(_one(datatype="BYTES", data=[7])) == "input 'x': BYTES data in JSON must be strings"
    assert _refused(_one(datatype="BYTES", data=[["a"], "b"])) == "input 'x': BYTES data in JSON must be strings"
    assert _refused(_one(datatype="BYTES", data=["a"], parameters={"content_type": "hex"})) == (
        "input 'x': content_type must be 'str' or 'base64', got 'hex'"
    )
    for bad in ("aGk*", "aGk!="):  # the second decodes to b"hi" if characters outside base64 were skipped
        assert _refused(_one(datatype="BYTES", data=[bad], parameters={"content_type": "base64"})) == (
            "input 'x': content_type is 'base64' but the data is not valid base64"
        )
    with pytest.raises(ProtocolError) as truncated:
        deserialize_bytes(struct.pack("<I", 3) + b"ab")
    assert str(truncated.value) == "truncated BYTES tensor element"


def test_binary_sizes_without_a_binary_part_and_a_header_length_that_is_the_whole_body():
    assert _refused(_one(parameters={"binary_data_size": 4})) == "input 'x': binary_data_size does not fit the body"
    body = _one(data=[1.5])
    _, (tensor,) = parse_request(body, str(len(body)))
    assert tensor.data.tolist() == [1.5]


def test_bytes_edge_cases():
    assert deserialize_bytes(serialize_bytes([b"a", b""])) == [b"a", b""]  # an empty last element
    assert deserialize_bytes(b"") == []
    with pytest.raises(ProtocolError, match=r"^truncated BYTES tensor element$"):
        deserialize_bytes(b"\xff\xff\xff\xff")  # a length of 4 GiB - 1, not -1
    lone = json.dumps({"inputs": [{"name": "s", "datatype": "BYTES", "shape": [1], "data": ["\ud800"]}]})
    (tensor,) = parse_request(lone.encode(), None)[1]
    assert (tensor.name, tensor.datatype, tensor.shape, tensor.data) == ("s", "BYTES", [1], [b"\xed\xa0\x80"])
    as_str = _one(datatype="BYTES", data=["hi"], parameters={"content_type": "str"})
    assert parse_request(as_str, None)[1][0].data == [b"hi"]


def test_integer_tensors_keep_their_type_and_accept_their_whole_range():
    for datatype, values in (("INT8", [-128, 127]), ("UINT8", [0, 255]), ("INT64", [-(2**63), 2**63 - 1])):
        (tensor,) = parse_request(_one(datatype=datatype, shape=[2], data=values), None)[1]
        assert tensor.data.tolist() == values and tensor.data.dtype == np.dtype(datatype.lower()), datatype


def test_responses_never_hold_nan_and_undecodable_labels_are_replaced():
    head = {"model_name": "m", "model_version": "1"}
    nan = {"name": "logits", "datatype": "FP32", "shape": [1, 1], "values": np.array([[np.nan]], np.float32)}
    with pytest.raises(ValueError, match="Out of range float values are not JSON compliant"):
        encode_response([nan], set(), head)
    odd = {"name": "top", "datatype": "BYTES", "shape": [1], "values": [b"\xff:0:x"]}
    assert json.loads(encode_response([odd], set(), head)[0])["outputs"][0]["data"] == ["\ufffd:0:x"]


def test_a_long_shape_is_refused_before_any_arithmetic_or_data_is_touched(monkeypatch):
    """A shape of 300,000 dimensions (1.8 MB of JSON) once cost seconds of big-integer products on the event
    loop; now its length alone refuses it: no product, and the data (BYTES here) is never decoded."""
    import math

    from pih2t_deploy.serving import v2_codec

    products = []
    monkeypatch.setattr(v2_codec.math, "prod", lambda values: products.append(len(values)) or math.prod(values))
    decoded = []
    monkeypatch.setattr(v2_codec, "_bytes_from_json", lambda *args: decoded.append(args) or [])
    body = json.dumps({"inputs": [{"name": "image", "datatype": "BYTES", "shape": [7] * 300_000, "data": ["a"]}]})
    assert (
        _refused(body.encode())
        == "input 'image': shape must be a list of at most 8 dimensions, got one of 300,000 dimensions"
    )
    assert products == [] and decoded == []


def test_error_messages_quote_at_most_a_short_prefix_of_the_clients_input():
    long_name = "n" * 100_000
    message = _refused(json.dumps({"inputs": [{"name": long_name, "datatype": "FP32", "shape": [1]}]}).encode())
    assert len(message) < 200 and message.startswith("input 'nnnn") and "(100002 characters)" in message
    long_type = _refused(_one(datatype="X" * 100_000, data=[1]))
    assert len(long_type) < 200 and "unsupported datatype 'XXXX" in long_type


def test_a_shape_is_bounded_by_rank_and_every_error_names_the_input():
    """Rank MAX_RANK (8) is the largest accepted; the refusals quote the input's name and say what the shape
    was, and decode_tensor passes the name on (survivors of the 2026-12-06 mutation run)."""
    assert element_count("pixels", [1] * 8) == 1
    too_long = "input 'pixels': shape must be a list of at most 8 dimensions, got one of 9 dimensions"
    cases = [
        (too_long, lambda: element_count("pixels", [1] * 9)),
        ("input 'pixels': shape must be a list of at most 8 dimensions, got one", lambda: element_count("pixels", "3")),
        (too_long, lambda: decode_tensor("pixels", "FP32", [1] * 9, None, [1.0])),
    ]
    for message, call in cases:
        with pytest.raises(ProtocolError) as refused:
            call()
        assert str(refused.value) == message
    with pytest.raises(ProtocolError, match=r"^input 'pixels': values must be finite FP32 numbers"):
        decode_tensor("pixels", "FP32", [1], None, [float("nan")])
