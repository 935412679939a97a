"""Open Inference Protocol routes (the KServe v2 protocol Triton speaks), so tritonclient works unchanged.

One artifact is served under two model names, as the generated Triton repository serves it, so that each
model's metadata lists exactly what a client sends:
- ``<name>``: input ``input`` (FP32 [N, C, H, W], preprocessed; UINT8 [N, H, W, C] pixels for an artifact
  exported with --embed-preprocessing). Encoded images in ``image`` are accepted here too.
- ``<name>_image``: input ``image`` (BYTES [N] or [N, 1], encoded images that the service preprocesses).
Output: ``logits`` (FP32 [N, K]); with ``parameters.classification = k`` it is the top k as BYTES strings
``"value:index:label"`` (Triton's classification extension).
"""

from __future__ import annotations

import numpy as np
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from pih2t_deploy import __version__
from pih2t_deploy.artifact import LABELS_FILE
from pih2t_deploy.data.longtail import top_k
from pih2t_deploy.runtime import Classifier
from pih2t_deploy.serving import schemas
from pih2t_deploy.serving.service import ApiError, InferenceService, Service
from pih2t_deploy.serving.v2_codec import (
    HEADER,
    ProtocolError,
    Tensor,
    encode_response,
    parameters_of,
    parse_request,
)

OUTPUT = "logits"
TENSOR_INPUT, IMAGE_INPUT = "input", "image"
IMAGE_MODEL_SUFFIX = "_image"
INFER_ERRORS = (400, 404, 413, 415, 503, 504)

router = APIRouter(prefix="/v2", tags=["v2"])

_PARAMETERS = {"type": "object", "additionalProperties": True}
_INFER_JSON = {
    "type": "object",
    "required": ["inputs"],
    "properties": {
        "id": {"type": "string"},
        "parameters": {**_PARAMETERS, "description": "binary_data_output: true sends every output as binary data"},
        "inputs": {
            "type": "array",
            "minItems": 1,
            "items": {
                "type": "object",
                "required": ["name", "datatype", "shape"],
                "properties": {
                    "name": {"type": "string", "enum": ["input", "image"]},
                    "datatype": {"type": "string", "enum": ["FP32", "UINT8", "BYTES"]},
                    "shape": {"type": "array", "items": {"type": "integer", "minimum": 0}},
                    "data": {"type": "array", "description": "values in row-major order (nested lists allowed)"},
                    "parameters": {
                        **_PARAMETERS,
                        "description": "binary_data_size: the input's bytes follow the JSON header; "
                        "content_type: 'base64' for BYTES data given in base64",
                    },
                },
            },
        },
        "outputs": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["name"],
                "properties": {
                    "name": {"type": "string", "enum": ["logits"]},
                    "parameters": {**_PARAMETERS, "description": "classification: k, binary_data: true/false"},
                },
            },
        },
    },
}
INFER_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": _INFER_JSON},
            "application/octet-stream": {
                "schema": {"type": "string", "format": "binary"},
                "description": "binary tensor extension: the JSON header (its length in the "
                "Inference-Header-Content-Length header) followed by the inputs' raw bytes",
            },
        },
    }
}


def _errors(*codes: int) -> dict:
    return {code: {"model": schemas.ErrorResponse} for code in codes}


def _classification(logits: np.ndarray, labels: list[str], k: int) -> list[bytes]:
    order = top_k(logits, k)
    return [f"{row[i]:f}:{i}:{labels[i]}".encode() for row, idx in zip(logits, order, strict=True) for i in idx]


def _datatype(classifier: Classifier) -> str:
    return "UINT8" if classifier.info.pixel_input else "FP32"


def resolve_model(service: InferenceService, name: str, version: str | None) -> tuple[Classifier, str]:
    """The classifier behind model ``name`` and the input its metadata lists; 404 for any other name."""
    served = service.require_ready().info.name
    if name == served + IMAGE_MODEL_SUFFIX:
        return service.model_for(served, version), IMAGE_INPUT
    return service.model_for(name, version), TENSOR_INPUT


# the hot route first: FastAPI tries routes in order
@router.post(
    "/models/{name}/infer",
    response_model=schemas.InferResponse,
    responses=_errors(*INFER_ERRORS),
    openapi_extra=INFER_BODY,
)
@router.post(
    "/models/{name}/versions/{version}/infer",
    response_model=schemas.InferResponse,
    responses=_errors(*INFER_ERRORS),
    openapi_extra=INFER_BODY,
)
async def infer(name: str, request: Request, service: Service, version: str | None = None) -> Response:
    """Run the model on one input tensor; JSON or binary tensor data, classification extension."""
    classifier, _ = resolve_model(service, name, version)
    try:
        with service.arriving():
            body, tensors = parse_request(await request.body(), request.headers.get(HEADER))
        requested, binary_all = requested_outputs(body)
    except ProtocolError as exc:
        raise ApiError(400, str(exc)) from None
    outputs = await run_inference(service, classifier, tensors, requested)
    binary = {OUTPUT for item in requested if (item.get("parameters") or {}).get("binary_data", binary_all)}
    head = {"model_name": name, "model_version": classifier.info.version}
    if "id" in body:
        head["id"] = str(body["id"])
    content, headers = encode_response(outputs, binary, head)
    return Response(content, headers=headers)


@router.get("", response_model=schemas.ServerMetadata)
async def server_metadata() -> schemas.ServerMetadata:
    """Server name, version and protocol extensions."""
    return schemas.ServerMetadata(
        name="pih2t-serve", version=__version__, extensions=["classification", "binary_tensor_data"]
    )


@router.get("/health/live", response_model=schemas.LiveResponse, responses=_errors(503))
async def live(service: Service) -> JSONResponse:
    """200 while the process is healthy; 503 if the model failed to load (restart the process)."""
    if service.load_error:
        return JSONResponse({"error": f"model failed to load: {service.load_error}"}, status_code=503)
    return JSONResponse({"live": True})


@router.get("/health/ready", response_model=schemas.ReadyResponse, responses={503: {"model": schemas.ReadyResponse}})
async def ready(service: Service) -> JSONResponse:
    """200 once the model is loaded and warmed up; 503 before that and from the moment shutdown begins."""
    return JSONResponse({"ready": service.ready}, status_code=200 if service.ready else 503)


def describe_model(service: InferenceService, name: str, version: str | None) -> schemas.ModelMetadata:
    """Model metadata (Open Inference Protocol): the one input a client sends to ``name``, and the output."""
    classifier, listed = resolve_model(service, name, version)
    if listed == IMAGE_INPUT:
        inputs = [schemas.TensorMetadata(name=IMAGE_INPUT, datatype="BYTES", shape=[-1, 1])]
    else:
        shape = [-1, *classifier.input_shape]
        inputs = [schemas.TensorMetadata(name=TENSOR_INPUT, datatype=_datatype(classifier), shape=shape)]
    return schemas.ModelMetadata(
        name=name,
        versions=[classifier.info.version],
        platform=f"pih2t_{classifier.backend}",
        inputs=inputs,
        outputs=[schemas.TensorMetadata(name=OUTPUT, datatype="FP32", shape=[-1, classifier.info.num_classes])],
    )


def model_configuration(service: InferenceService, name: str, version: str | None) -> dict:
    """The model configuration of ``name`` in Triton's JSON form: the largest batch, the input, and the
    output with its labels file."""
    classifier, listed = resolve_model(service, name, version)
    pixels = classifier.info.pixel_input
    if listed == IMAGE_INPUT:
        model_input = {"name": IMAGE_INPUT, "data_type": "TYPE_STRING", "dims": [1]}
    else:
        model_input = {
            "name": TENSOR_INPUT,
            "data_type": "TYPE_UINT8" if pixels else "TYPE_FP32",
            "format": "FORMAT_NHWC" if pixels else "FORMAT_NCHW",
            "dims": list(classifier.input_shape),
        }
    output = {"name": OUTPUT, "data_type": "TYPE_FP32", "dims": [classifier.info.num_classes]}
    return {
        "name": name,
        "platform": f"pih2t_{classifier.backend}",
        "max_batch_size": service.settings.max_batch,
        "input": [model_input],
        "output": [{**output, "label_filename": LABELS_FILE}],
        "dynamic_batching": {"max_queue_delay_microseconds": int(service.settings.max_wait_ms * 1000)},
    }


@router.get("/models/{name}", response_model=schemas.ModelMetadata, responses=_errors(404, 503))
@router.get("/models/{name}/versions/{version}", response_model=schemas.ModelMetadata, responses=_errors(404, 503))
async def model_metadata(name: str, service: Service, version: str | None = None) -> schemas.ModelMetadata:
    """The input a client sends to this model, and its output."""
    return describe_model(service, name, version)


@router.get("/models/{name}/config", response_model=schemas.ModelConfig, responses=_errors(404, 503))
@router.get("/models/{name}/versions/{version}/config", response_model=schemas.ModelConfig, responses=_errors(404, 503))
async def model_config(name: str, service: Service, version: str | None = None) -> JSONResponse:
    """The model configuration in Triton's JSON form (what perf_analyzer and tritonclient's get_model_config
    read): the largest batch, the input, and the output with its labels."""
    return JSONResponse(model_configuration(service, name, version))


@router.get("/models/{name}/ready", response_model=schemas.ReadyResponse, responses=_errors(404, 503))
@router.get(
    "/models/{name}/versions/{version}/ready", response_model=schemas.ReadyResponse, responses=_errors(404, 503)
)
async def model_ready(name: str, service: Service, version: str | None = None) -> schemas.ReadyResponse:
    """200 when this model is ready."""
    resolve_model(service, name, version)
    return schemas.ReadyResponse(ready=True)


async def batch_from(tensor: Tensor, classifier: Classifier, service: InferenceService) -> np.ndarray:
    """The model-ready batch of an ``input`` tensor, or of the encoded images of an ``image`` tensor."""
    dims = ", ".join(map(str, classifier.input_shape))
    max_batch = service.settings.max_batch
    if tensor.name == TENSOR_INPUT:
        if tensor.datatype != _datatype(classifier):
            raise ApiError(400, f"input 'input' must be {_datatype(classifier)}, got {tensor.datatype}")
        if len(tensor.shape) != 4 or tuple(tensor.shape[1:]) != classifier.input_shape or tensor.shape[0] < 1:
            raise ApiError(400, f"input 'input' must have shape [N, {dims}] with N >= 1, got {tensor.shape}")
        if tensor.shape[0] > max_batch:
            raise ApiError(413, f"batch of {tensor.shape[0]} exceeds the limit of {max_batch}")
        return np.ascontiguousarray(tensor.data, dtype=classifier.input_dtype)
    if tensor.name == IMAGE_INPUT:
        if tensor.datatype != "BYTES":
            raise ApiError(400, f"input 'image' must be BYTES (encoded images), got {tensor.datatype}")
        if not (len(tensor.shape) == 1 or (len(tensor.shape) == 2 and tensor.shape[1] == 1)) or not tensor.data:
            raise ApiError(400, f"input 'image' must have shape [N] or [N, 1], got {tensor.shape}")
        return await service.decode([(f"image[{i}]", blob) for i, blob in enumerate(tensor.data)])
    raise ApiError(
        400, f"unknown input {tensor.name!r}; send 'input' ({_datatype(classifier)} [N, {dims}]) or 'image' (BYTES)"
    )


def requested_outputs(body: dict) -> tuple[list[dict], bool]:
    """The requested outputs of a JSON request (default: logits) and its request-wide binary_data_output."""
    binary_all = bool(parameters_of(body, "the request").get("binary_data_output"))
    requested = body.get("outputs") or [{"name": OUTPUT}]
    if not isinstance(requested, list):
        raise ProtocolError('\'outputs\' must be a list of objects such as {"name": "logits"}')
    for item in requested:
        if not isinstance(item, dict) or item.get("name") != OUTPUT:
            raise ProtocolError(f"unknown output {item!r}; this model has one output, {OUTPUT!r}")
        parameters_of(item, f"output {OUTPUT!r}")
    return requested, binary_all


async def run_inference(
    service: InferenceService, classifier: Classifier, tensors: list[Tensor], requested: list[dict]
) -> list[dict]:
    """The requested outputs for one input tensor, each {name, datatype, shape, values, parameters}: logits
    (FP32) or, with ``parameters.classification = k``, the top k as "value:index:label" (BYTES)."""
    if len(tensors) != 1:
        raise ApiError(400, f"send exactly one input ('input' or 'image'), got {len(tensors)}")
    with service.arriving():
        batch = await batch_from(tensors[0], classifier, service)
    logits = await service.infer(batch)
    if not np.isfinite(logits).all():
        raise ApiError(400, "the model's outputs for this input are not finite numbers; check the input's range")
    outputs = []
    for item in requested:
        params = item.get("parameters") or {}
        k = params.get("classification")
        if k is None:
            values = logits.astype(np.float32)
            outputs.append({"name": OUTPUT, "datatype": "FP32", "shape": list(logits.shape), "values": values})
            continue
        if type(k) is not int or not 1 <= k <= classifier.info.num_classes:
            raise ApiError(400, f"classification must be an integer between 1 and {classifier.info.num_classes}")
        values = _classification(logits, classifier.info.labels, k)
        outputs.append({"name": OUTPUT, "datatype": "BYTES", "shape": [len(logits), k], "values": values})
    return outputs
