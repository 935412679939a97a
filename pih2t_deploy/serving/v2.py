"""Open Inference Protocol routes over HTTP (the KServe v2 protocol Triton speaks), so tritonclient works
unchanged: a thin adapter that parses JSON or binary bodies (``v2_codec``), calls the data plane and encodes
its answers. The models, inputs and outputs are described in ``dataplane.py``.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from pih2t_deploy.serving import schemas
from pih2t_deploy.serving.dataplane import OUTPUT, DataPlane, InferRequest, InferResult
from pih2t_deploy.serving.errors import quote
from pih2t_deploy.serving.http_edge import Plane
from pih2t_deploy.serving.v2_codec import HEADER, ProtocolError, encode_response, parameters_of, parse_request

INFER_ERRORS = (400, 404, 413, 415, 503, 504)

router = APIRouter(prefix="/v2", tags=["v2"])

_PARAMETERS = {"type": "object", "additionalProperties": True}
_INFER_JSON = {
    "type": "object",
    "required": ["inputs"],
    "properties": {
        "id": {"type": "string"},
        "parameters": {
            **_PARAMETERS,
            "description": "binary_data_output: true sends every output as binary data; tau: logit-adjustment "
            "strength in [0, 10] (default: the one folded at export); prior: the deployment class prior, one "
            "non-negative number per class or a name registered with pih2t-serve --prior",
        },
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
INFER_HEADERS: list[dict] = [
    {
        "name": "Inference-Header-Content-Length",
        "in": "header",
        "required": False,
        "description": "binary tensor extension: the length in bytes of the JSON header that starts the body",
        "schema": {"type": "string"},
    }
]
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
    },
}


def _errors(*codes: int) -> dict:
    return {code: {"model": schemas.ErrorResponse} for code in codes}


def infer_request(body: dict, tensors: list) -> InferRequest:
    """The data plane's request for a parsed JSON body and its decoded tensors."""
    requested = body.get("outputs") or []
    if not isinstance(requested, list) or not all(isinstance(item, dict) for item in requested):
        raise ProtocolError('\'outputs\' must be a list of objects such as {"name": "logits"}')
    for item in requested:
        parameters_of(item, f"output {quote(item.get('name'))}")
    parameters = parameters_of(body, "the request")
    return InferRequest(tensors, requested, str(body["id"]) if "id" in body else None, parameters)


def binary_outputs(body: dict) -> set[str]:
    """The outputs to send as binary data: each output's ``binary_data``, else the request's
    ``binary_data_output``."""
    binary_all = bool(parameters_of(body, "the request").get("binary_data_output"))
    requested = body.get("outputs") or [{"name": OUTPUT}]
    return {item["name"] for item in requested if (item.get("parameters") or {}).get("binary_data", binary_all)}


def encode(result: InferResult, binary: set[str]) -> Response:
    """The HTTP response of an answer: JSON, or JSON header and binary outputs."""
    head: dict[str, object] = {"model_name": result.model_name, "model_version": result.model_version}
    if result.id is not None:
        head["id"] = result.id
    if result.parameters:
        head["parameters"] = result.parameters
    outputs = [vars(output) for output in result.outputs]
    content, headers = encode_response(outputs, binary, head)
    return Response(content, headers=headers)


def _path(*names: str) -> list[dict]:
    return [{"name": n, "in": "path", "required": True, "schema": {"type": "string"}} for n in names]


# The hot route first (FastAPI tries routes in order). It takes the bare request, its path parameters
# described here for OpenAPI, so that ``direct_route.DirectRoute`` can call it without the router.
@router.post(
    "/models/{name}/infer",
    response_model=schemas.InferResponse,
    responses=_errors(*INFER_ERRORS),
    openapi_extra={**INFER_BODY, "parameters": _path("name") + INFER_HEADERS},
)
@router.post(
    "/models/{name}/versions/{version}/infer",
    response_model=schemas.InferResponse,
    responses=_errors(*INFER_ERRORS),
    openapi_extra={**INFER_BODY, "parameters": _path("name", "version") + INFER_HEADERS},
)
async def infer(request: Request) -> Response:
    """Run the model on one input tensor; JSON or binary tensor data, classification extension."""
    plane: DataPlane = request.app.state.plane
    parsed: dict = {}

    async def read() -> InferRequest:
        body, tensors = parse_request(await request.body(), request.headers.get(HEADER))
        decoded = infer_request(body, tensors)
        parsed["binary"] = binary_outputs(body)
        return decoded

    result = await plane.infer(request.path_params["name"], request.path_params.get("version"), read)
    return encode(result, parsed["binary"])


@router.get("", response_model=schemas.ServerMetadata)
async def server_metadata(plane: Plane) -> schemas.ServerMetadata:
    """Server name, version and protocol extensions."""
    return plane.server_metadata()


@router.get("/health/live", response_model=schemas.LiveResponse, responses=_errors(503))
async def live(plane: Plane) -> JSONResponse:
    """200 while the process is healthy; 503 if the model failed to load (restart the process)."""
    if not plane.live:
        return JSONResponse({"error": f"model failed to load: {plane.load_error}"}, status_code=503)
    return JSONResponse({"live": True})


@router.get("/health/ready", response_model=schemas.ReadyResponse, responses={503: {"model": schemas.ReadyResponse}})
async def ready(plane: Plane) -> JSONResponse:
    """200 once the model is loaded and warmed up; 503 before that and from the moment shutdown begins."""
    return JSONResponse({"ready": plane.ready}, status_code=200 if plane.ready else 503)


@router.get("/models/{name}", response_model=schemas.ModelMetadata, responses=_errors(404, 503))
@router.get("/models/{name}/versions/{version}", response_model=schemas.ModelMetadata, responses=_errors(404, 503))
async def model_metadata(name: str, plane: Plane, version: str | None = None) -> schemas.ModelMetadata:
    """The input a client sends to this model, and its output."""
    return plane.model_metadata(name, version)


@router.get("/models/{name}/config", response_model=schemas.ModelConfig, responses=_errors(404, 503))
@router.get("/models/{name}/versions/{version}/config", response_model=schemas.ModelConfig, responses=_errors(404, 503))
async def model_config(name: str, plane: Plane, version: str | None = None) -> JSONResponse:
    """The model configuration in Triton's JSON form (what perf_analyzer and tritonclient's get_model_config
    read): the largest batch, the input, and the output with its labels."""
    return JSONResponse(plane.model_config(name, version))


@router.get("/models/{name}/ready", response_model=schemas.ReadyResponse, responses=_errors(404, 503))
@router.get(
    "/models/{name}/versions/{version}/ready", response_model=schemas.ReadyResponse, responses=_errors(404, 503)
)
async def model_ready(name: str, plane: Plane, version: str | None = None) -> schemas.ReadyResponse:
    """200 when this model is ready."""
    plane.resolve(name, version)
    return schemas.ReadyResponse(ready=True)
