"""The same service on the KServe v2 gRPC protocol (``inference.GRPCInferenceService``, the definition
tritonclient ships), so ``tritonclient.grpc`` and perf_analyzer ``-i grpc`` work unchanged.

Health, server and model metadata, model configuration and inference; the models, inputs, outputs and
checks are those of the HTTP routes (``v2.py``), so both protocols give the same answers and the same errors
(HTTP 400 -> INVALID_ARGUMENT, 404 -> NOT_FOUND, 413 -> RESOURCE_EXHAUSTED, 503 -> UNAVAILABLE, 504 ->
DEADLINE_EXCEEDED). Tensors arrive as raw contents (what tritonclient sends) or typed contents.
"""

from __future__ import annotations

import logging
from typing import Any

import grpc
import numpy as np
from google.protobuf import json_format
from tritonclient.grpc import model_config_pb2, service_pb2, service_pb2_grpc

from pih2t_deploy import __version__
from pih2t_deploy.serving import v2
from pih2t_deploy.serving.service import ApiError, InferenceService
from pih2t_deploy.serving.v2_codec import ProtocolError, Tensor, decode_tensor, serialize_bytes

log = logging.getLogger(__name__)

STATUS = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    404: grpc.StatusCode.NOT_FOUND,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    415: grpc.StatusCode.INVALID_ARGUMENT,
    503: grpc.StatusCode.UNAVAILABLE,
    504: grpc.StatusCode.DEADLINE_EXCEEDED,
}
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


def _requested(request: service_pb2.ModelInferRequest) -> list[dict]:
    if not request.outputs:
        return [{"name": v2.OUTPUT}]
    requested = []
    for output in request.outputs:
        if output.name != v2.OUTPUT:
            raise ProtocolError(f"unknown output {output.name!r}; this model has one output, {v2.OUTPUT!r}")
        parameters = {key: _parameter(value) for key, value in output.parameters.items()}
        requested.append({"name": output.name, "parameters": parameters})
    return requested


def _metadata_tensors(tensors: list) -> list[service_pb2.ModelMetadataResponse.TensorMetadata]:
    return [
        service_pb2.ModelMetadataResponse.TensorMetadata(name=t.name, datatype=t.datatype, shape=t.shape)
        for t in tensors
    ]


class InferenceServicer(service_pb2_grpc.GRPCInferenceServiceServicer):
    """GRPCInferenceService over an InferenceService; methods not listed answer UNIMPLEMENTED."""

    def __init__(self, service: InferenceService) -> None:
        self.service = service

    async def _fail(self, context: grpc.aio.ServicerContext, exc: Exception) -> None:
        if isinstance(exc, ProtocolError):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        if isinstance(exc, ApiError):
            await context.abort(STATUS.get(exc.status, grpc.StatusCode.INVALID_ARGUMENT), str(exc))
        log.exception("gRPC request failed")
        await context.abort(grpc.StatusCode.INTERNAL, f"internal error: {type(exc).__name__}")

    async def ServerLive(self, request, context):  # noqa: N802 - names of the service definition
        """Live unless the model failed to load."""
        return service_pb2.ServerLiveResponse(live=self.service.load_error is None)

    async def ServerReady(self, request, context):  # noqa: N802
        """Ready once loaded and warmed up, until shutdown begins."""
        return service_pb2.ServerReadyResponse(ready=self.service.ready)

    async def ModelReady(self, request, context):  # noqa: N802
        """Ready when the server is and ``name`` (and version) is served here."""
        try:
            v2.resolve_model(self.service, request.name, request.version or None)
        except ApiError:
            return service_pb2.ModelReadyResponse(ready=False)
        return service_pb2.ModelReadyResponse(ready=self.service.ready)

    async def ServerMetadata(self, request, context):  # noqa: N802
        """Name, version and protocol extensions."""
        return service_pb2.ServerMetadataResponse(
            name="pih2t-serve", version=__version__, extensions=["classification", "binary_tensor_data"]
        )

    async def ModelMetadata(self, request, context):  # noqa: N802
        """The input a client sends to this model, and its output (as over HTTP)."""
        try:
            found = v2.describe_model(self.service, request.name, request.version or None)
        except ApiError as exc:
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
            config = v2.model_configuration(self.service, request.name, request.version or None)
        except ApiError as exc:
            return await self._fail(context, exc)
        return service_pb2.ModelConfigResponse(config=json_format.ParseDict(config, model_config_pb2.ModelConfig()))

    async def ModelInfer(self, request, context):  # noqa: N802
        """Logits, or the top k with ``classification``; outputs as raw contents."""
        try:
            classifier, _ = v2.resolve_model(self.service, request.model_name, request.model_version or None)
            with self.service.arriving():
                tensors, requested = _tensors(request), _requested(request)
            outputs = await v2.run_inference(self.service, classifier, tensors, requested)
        except (ApiError, ProtocolError) as exc:
            return await self._fail(context, exc)
        response = service_pb2.ModelInferResponse(
            model_name=request.model_name, model_version=classifier.info.version, id=request.id
        )
        for output in outputs:
            response.outputs.add(name=output["name"], datatype=output["datatype"], shape=output["shape"])
            values = output["values"]
            raw = serialize_bytes(values) if output["datatype"] == "BYTES" else np.ascontiguousarray(values).tobytes()
            response.raw_output_contents.append(raw)
        return response


async def start_grpc_server(service: InferenceService, address: str, max_message_bytes: int) -> grpc.aio.Server:
    """A started gRPC server for ``service`` listening on ``address`` ("host:port")."""
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes),
        ]
    )
    service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(InferenceServicer(service), server)
    if server.add_insecure_port(address) == 0:
        raise OSError(f"cannot listen for gRPC on {address}")
    await server.start()
    return server
