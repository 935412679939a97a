"""The same service on the KServe v2 gRPC protocol (``inference.GRPCInferenceService``, the definition
tritonclient ships), so ``tritonclient.grpc`` and perf_analyzer ``-i grpc`` work unchanged.

A thin adapter over the data plane (``dataplane.py``), as ``v2.py`` is over HTTP: health, server and model
metadata, model configuration and inference give the same answers as HTTP, and the core's named errors map
to gRPC codes in one table (``GRPC_STATUS``). Tensors arrive as raw contents (what tritonclient sends) or
typed contents.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from google.protobuf import json_format, message_factory
from google.protobuf.message import DecodeError
from tritonclient.grpc import model_config_pb2, service_pb2, service_pb2_grpc

from pih2t_deploy.serving.dataplane import DataPlane, InferRequest
from pih2t_deploy.serving.errors import (
    DeadlineExceeded,
    InvalidInput,
    InvalidParameter,
    ModelNotFound,
    NotSupported,
    PayloadTooLarge,
    ServingError,
    Unavailable,
    UnsupportedMediaType,
    status_of,
)
from pih2t_deploy.serving.handoff import ANSWER, Handoff, failure, listen_for_calls, read_failure
from pih2t_deploy.serving.v2_codec import ProtocolError, Tensor, decode_tensor, serialize_bytes

log = logging.getLogger(__name__)

GRPC_STATUS: dict[type[ServingError], grpc.StatusCode] = {
    InvalidInput: grpc.StatusCode.INVALID_ARGUMENT,
    InvalidParameter: grpc.StatusCode.INVALID_ARGUMENT,
    ModelNotFound: grpc.StatusCode.NOT_FOUND,
    NotSupported: grpc.StatusCode.UNIMPLEMENTED,
    PayloadTooLarge: grpc.StatusCode.RESOURCE_EXHAUSTED,
    UnsupportedMediaType: grpc.StatusCode.INVALID_ARGUMENT,
    Unavailable: grpc.StatusCode.UNAVAILABLE,
    DeadlineExceeded: grpc.StatusCode.DEADLINE_EXCEEDED,
}
STATUS_BY_CODE = {status.value[0]: status for status in grpc.StatusCode}
SERVICE = service_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"]
UNARY_REQUESTS = {  # "/inference.GRPCInferenceService/<method>" -> (method name, request class), unary methods only
    f"/{SERVICE.full_name}/{method.name}": (method.name, message_factory.GetMessageClass(method.input_type))
    for method in SERVICE.methods
    if not (method.client_streaming or method.server_streaming)
}
FRONT_FRAME_OVERHEAD = 256  # a CALL frame's method path and its length byte, beside the request
CONTENTS = {  # datatype -> the typed-contents field that carries it
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "INT64": "int64_contents",
    "INT32": "int_contents",
    "INT16": "int_contents",
    "INT8": "int_contents",
    "UINT8": "uint_contents",
    "BOOL": "bool_contents",
    "BYTES": "bytes_contents",
}


def _parameter(value: service_pb2.InferParameter) -> Any:
    kind = value.WhichOneof("parameter_choice")
    return None if kind is None else getattr(value, kind)


def _set_parameter(target: service_pb2.InferParameter, value: Any) -> None:
    if isinstance(value, bool):
        target.bool_param = value
    elif isinstance(value, int):
        target.int64_param = value
    elif isinstance(value, float):
        target.double_param = value
    else:
        target.string_param = str(value)


def _tensors(request: service_pb2.ModelInferRequest) -> list[Tensor]:
    raw = list(request.raw_input_contents)
    if raw and len(raw) != len(request.inputs):
        raise ProtocolError(f"{len(raw)} raw_input_contents for {len(request.inputs)} inputs")
    tensors = []
    for index, entry in enumerate(request.inputs):
        shape = list(entry.shape)  # decode_tensor refuses negative dimensions, as for HTTP
        field = CONTENTS.get(entry.datatype.upper())
        values = list(getattr(entry.contents, field)) if field and not raw else None
        tensors.append(decode_tensor(entry.name, entry.datatype, shape, raw[index] if raw else None, values))
    return tensors


def infer_request(request: service_pb2.ModelInferRequest) -> InferRequest:
    """The data plane's request for a ModelInferRequest: its tensors, the outputs asked for, its id."""
    outputs = [
        {"name": output.name, "parameters": {key: _parameter(value) for key, value in output.parameters.items()}}
        for output in request.outputs
    ]
    parameters = {key: _parameter(value) for key, value in request.parameters.items()}
    return InferRequest(_tensors(request), outputs, request.id, parameters)


def _metadata_tensors(tensors: list) -> list[service_pb2.ModelMetadataResponse.TensorMetadata]:
    return [
        service_pb2.ModelMetadataResponse.TensorMetadata(name=t.name, datatype=t.datatype, shape=t.shape)
        for t in tensors
    ]


class _AbortedError(Exception):
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self.code, self.details = code, details


class _FrontContext:
    """What the servicer's methods use of a ServicerContext, for a call the native front end hands over: an
    abort ends the method with that status."""

    async def abort(self, code: grpc.StatusCode, details: str = "") -> None:
        raise _AbortedError(code, details)

    def set_code(self, code: grpc.StatusCode) -> None:  # the generated base class, before NotImplementedError
        pass

    def set_details(self, details: str) -> None:
        pass


class InferenceServicer(service_pb2_grpc.GRPCInferenceServiceServicer):
    """GRPCInferenceService over a DataPlane; methods not listed answer UNIMPLEMENTED. With a ``handoff``
    (``pih2t-serve --workers``), an inference call goes to a less busy worker when there is one."""

    def __init__(self, plane: DataPlane, handoff: Handoff | None = None) -> None:
        self.plane, self.handoff = plane, handoff

    async def _fail(self, context: grpc.aio.ServicerContext, exc: Exception) -> None:
        if isinstance(exc, ServingError):
            await context.abort(status_of(exc, GRPC_STATUS), str(exc))
        log.exception("gRPC request failed")
        await context.abort(grpc.StatusCode.INTERNAL, f"internal error: {type(exc).__name__}")

    async def ServerLive(self, request, context):  # noqa: N802 - names of the service definition
        """Live unless the model failed to load."""
        return service_pb2.ServerLiveResponse(live=self.plane.live)

    async def ServerReady(self, request, context):  # noqa: N802
        """Ready once loaded and warmed up, until shutdown begins."""
        return service_pb2.ServerReadyResponse(ready=self.plane.ready)

    async def ModelReady(self, request, context):  # noqa: N802
        """Ready when the server is and ``name`` (and version) is served here."""
        return service_pb2.ModelReadyResponse(ready=self.plane.model_ready(request.name, request.version or None))

    async def ServerMetadata(self, request, context):  # noqa: N802
        """Name, version and protocol extensions."""
        found = self.plane.server_metadata()
        return service_pb2.ServerMetadataResponse(name=found.name, version=found.version, extensions=found.extensions)

    async def ModelMetadata(self, request, context):  # noqa: N802
        """The input a client sends to this model, and its output (as over HTTP)."""
        try:
            found = self.plane.model_metadata(request.name, request.version or None)
        except ServingError as exc:
            return await self._fail(context, exc)
        return service_pb2.ModelMetadataResponse(
            name=found.name,
            versions=found.versions,
            platform=found.platform,
            inputs=_metadata_tensors(found.inputs),
            outputs=_metadata_tensors(found.outputs),
        )

    async def ModelConfig(self, request, context):  # noqa: N802
        """Triton's model configuration (as over HTTP)."""
        try:
            config = self.plane.model_config(request.name, request.version or None)
        except ServingError as exc:
            return await self._fail(context, exc)
        return service_pb2.ModelConfigResponse(config=json_format.ParseDict(config, model_config_pb2.ModelConfig()))

    async def ModelInfer(self, request, context):  # noqa: N802
        """Logits, or the top k with ``classification``; outputs as raw contents."""
        if self.handoff is not None:
            relayed = await self.handoff.relay(request.SerializeToString)
            if relayed is not None:
                self.plane.metrics.handoffs.inc()
                kind, body = relayed
                if kind == ANSWER:
                    return service_pb2.ModelInferResponse.FromString(body)
                code, message = read_failure(body)
                await context.abort(STATUS_BY_CODE.get(code, grpc.StatusCode.INTERNAL), message)
        try:
            return await self.answer(request)
        except ServingError as exc:
            return await self._fail(context, exc)

    async def answer_handed(self, payload: bytes) -> tuple[int, bytes]:
        """The answer to a call another worker handed over (``handoff``), as ModelInfer gives it: response bytes,
        or the gRPC status and message of a refusal (any other exception is handoff's last resort, INTERNAL)."""
        try:
            response = await self.answer(service_pb2.ModelInferRequest.FromString(payload))
        except ServingError as exc:
            return failure(status_of(exc, GRPC_STATUS).value[0], str(exc))
        except DecodeError:
            message = "the handed-off request is not a ModelInferRequest"
            return failure(grpc.StatusCode.INVALID_ARGUMENT.value[0], message)
        return ANSWER, response.SerializeToString()

    async def answer_call(self, path: str, payload: bytes) -> tuple[int, bytes]:
        """The answer to a call the native gRPC front end hands over: ``path`` names the method
        ("/inference.GRPCInferenceService/ModelInfer"), ``payload`` is its request. Response bytes, or the gRPC
        status and message the same call to the in-process gRPC server gets (UNIMPLEMENTED for a method this
        service does not offer, or one that streams)."""
        if path not in UNARY_REQUESTS:
            return failure(grpc.StatusCode.UNIMPLEMENTED.value[0], f"method {path!r} is not served here")
        name, request_class = UNARY_REQUESTS[path]
        try:
            request = request_class.FromString(payload)
        except DecodeError:
            return failure(grpc.StatusCode.INVALID_ARGUMENT.value[0], f"the request is not a {request_class.__name__}")
        try:
            response = await getattr(self, name)(request, _FrontContext())
        except _AbortedError as exc:
            return failure(exc.code.value[0], exc.details)
        except NotImplementedError:
            return failure(grpc.StatusCode.UNIMPLEMENTED.value[0], f"method {path!r} is not served here")
        return ANSWER, response.SerializeToString()

    async def answer(self, request: service_pb2.ModelInferRequest) -> service_pb2.ModelInferResponse:
        """The response to ``request``, worked on by this worker; ServingError for a request it refuses."""

        async def read() -> InferRequest:
            return infer_request(request)

        with self.handoff.working() if self.handoff is not None else contextlib.nullcontext():
            result = await self.plane.infer(request.model_name, request.model_version or None, read)
        response = service_pb2.ModelInferResponse(
            model_name=result.model_name, model_version=result.model_version, id=result.id or ""
        )
        for key, value in result.parameters.items():
            _set_parameter(response.parameters[key], value)
        for output in result.outputs:
            response.outputs.add(name=output.name, datatype=output.datatype, shape=output.shape)
            values = output.values
            raw = serialize_bytes(values) if output.datatype == "BYTES" else np.ascontiguousarray(values).tobytes()
            response.raw_output_contents.append(raw)
        return response


@dataclass(frozen=True)
class GrpcLimits:
    """The limits the gRPC server enforces, as HTTP has its own (``--max-upload-mb``, ``--max-connections``,
    the header and body timeouts): message size both ways, calls in progress at once (more are refused with
    RESOURCE_EXHAUSTED), streams per connection, how often a client may ping, when an idle connection is
    closed, and the server's own keepalive pings that find dead peers."""

    max_message_bytes: int
    max_concurrent_rpcs: int = 1000
    max_streams_per_connection: int = 100
    idle_timeout_s: float = 300.0
    keepalive_s: float = 60.0
    keepalive_timeout_s: float = 20.0
    min_client_ping_interval_s: float = 10.0

    def options(self) -> list[tuple[str, int]]:
        """The gRPC core channel arguments for these limits."""
        ms = lambda seconds: int(seconds * 1000)  # noqa: E731
        return [
            ("grpc.max_receive_message_length", self.max_message_bytes),
            ("grpc.max_send_message_length", self.max_message_bytes),
            ("grpc.max_concurrent_streams", self.max_streams_per_connection),
            ("grpc.max_connection_idle_ms", ms(self.idle_timeout_s)),
            ("grpc.keepalive_time_ms", ms(self.keepalive_s)),
            ("grpc.keepalive_timeout_ms", ms(self.keepalive_timeout_s)),
            ("grpc.http2.min_ping_interval_without_data_ms", ms(self.min_client_ping_interval_s)),
            ("grpc.http2.max_ping_strikes", 2),
        ]


async def start_grpc_server(
    plane: DataPlane, address: str, limits: GrpcLimits, handoff: Handoff | None = None
) -> grpc.aio.Server:
    """A started gRPC server for ``plane`` listening on ``address`` ("host:port") within ``limits``; with a
    ``handoff``, also taking the calls other workers hand to this one."""
    server = grpc.aio.server(options=limits.options(), maximum_concurrent_rpcs=limits.max_concurrent_rpcs)
    servicer = InferenceServicer(plane, handoff)
    service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(servicer, server)
    if server.add_insecure_port(address) == 0:
        raise OSError(f"cannot listen for gRPC on {address}")
    await server.start()
    if handoff is not None:
        await handoff.listen(servicer.answer_handed, servicer.answer_call)
    return server


async def serve_front_calls(plane: DataPlane, path: Path, max_message_bytes: int) -> asyncio.AbstractServer:
    """A server on the Unix socket ``path`` answering the calls the native gRPC front end
    (``pih2t-serve --grpc-front native``) hands to this worker, as ``start_grpc_server``'s would be answered."""
    servicer = InferenceServicer(plane)
    frame_limit = max_message_bytes + FRONT_FRAME_OVERHEAD
    return await listen_for_calls(path, frame_limit, servicer.answer_handed, servicer.answer_call)
