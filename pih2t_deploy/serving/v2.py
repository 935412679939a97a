"""Open Inference Protocol routes (the KServe v2 protocol Triton speaks), so tritonclient works unchanged.

Inputs: ``input`` (FP32 [N, C, H, W], preprocessed; UINT8 [N, H, W, C] pixels for an artifact exported with
--embed-preprocessing) or ``image`` (BYTES [N] or [N, 1], encoded images that the service preprocesses).
Output: ``logits`` (FP32 [N, K]); with ``parameters.classification = k`` it is the top k as BYTES strings
``"value:index:label"`` (Triton's classification extension).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from pih2t_deploy import __version__
from pih2t_deploy.artifact import LABELS_FILE
from pih2t_deploy.data.longtail import top_k
from pih2t_deploy.serving import schemas
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


def _classification(logits: np.ndarray, labels: list[str], k: int) -> list[bytes]:
    order = top_k(logits, k)
    return [f"{row[i]:f}:{i}:{labels[i]}".encode() for row, idx in zip(logits, order, strict=True) for i in idx]


def _datatype(classifier) -> str:
    return "UINT8" if classifier.info.pixel_input else "FP32"


def register_v2_routes(app: FastAPI, state: Any, api_error: type[Exception]) -> None:
    """Add the /v2 routes to ``app``; ``state`` is the service state, ``api_error(status, message)``."""

    def model_for(name: str, version: str | None = None):
        classifier, _ = state.require_ready()
        if name != classifier.info.name:
            raise api_error(404, f"unknown model {name!r}; this server serves {classifier.info.name!r}")
        if version is not None and version != classifier.info.version:
            raise api_error(
                404, f"unknown version {version!r} of model {name!r}; this server serves {classifier.info.version!r}"
            )
        return classifier

    @app.get("/v2", response_model=schemas.ServerMetadata)
    async def server_metadata() -> schemas.ServerMetadata:
        """Server name, version and protocol extensions."""
        return schemas.ServerMetadata(
            name="pih2t-serve", version=__version__, extensions=["classification", "binary_tensor_data"]
        )

    @app.get("/v2/health/live", response_model=schemas.LiveResponse, responses={503: {"model": schemas.ErrorResponse}})
    async def live() -> JSONResponse:
        """200 while the process is healthy; 503 if the model failed to load (restart the process)."""
        if state.load_error:
            return JSONResponse({"error": f"model failed to load: {state.load_error}"}, status_code=503)
        return JSONResponse({"live": True})

    @app.get(
        "/v2/health/ready", response_model=schemas.ReadyResponse, responses={503: {"model": schemas.ReadyResponse}}
    )
    async def ready() -> JSONResponse:
        """200 once the model is loaded and warmed up, 503 before that and while shutting down."""
        ready = state.ready and state.batcher is not None and state.batcher.healthy
        return JSONResponse({"ready": ready}, status_code=200 if ready else 503)

    @app.get("/v2/models/{name}", response_model=schemas.ModelMetadata)
    @app.get("/v2/models/{name}/versions/{version}", response_model=schemas.ModelMetadata)
    async def model_metadata(name: str, version: str | None = None) -> schemas.ModelMetadata:
        """Inputs and outputs of the served model."""
        classifier = model_for(name, version)
        return schemas.ModelMetadata(
            name=name,
            versions=[classifier.info.version],
            platform=f"pih2t_{classifier.backend}",
            inputs=[
                schemas.TensorMetadata(
                    name=TENSOR_INPUT, datatype=_datatype(classifier), shape=[-1, *classifier.input_shape]
                ),
                schemas.TensorMetadata(name=IMAGE_INPUT, datatype="BYTES", shape=[-1]),
            ],
            outputs=[schemas.TensorMetadata(name=OUTPUT, datatype="FP32", shape=[-1, classifier.info.num_classes])],
        )

    @app.get("/v2/models/{name}/config")
    @app.get("/v2/models/{name}/versions/{version}/config")
    async def model_config(name: str, version: str | None = None) -> JSONResponse:
        """The model configuration in Triton's JSON form (what perf_analyzer and tritonclient's
        get_model_config read): the largest batch, the two alternative inputs (each optional: send one) and
        the output with its labels."""
        classifier = model_for(name, version)
        pixels = classifier.info.pixel_input
        return JSONResponse(
            {
                "name": name,
                "platform": f"pih2t_{classifier.backend}",
                "max_batch_size": state.settings.max_batch,
                "input": [
                    {
                        "name": TENSOR_INPUT,
                        "data_type": "TYPE_UINT8" if pixels else "TYPE_FP32",
                        "format": "FORMAT_NHWC" if pixels else "FORMAT_NCHW",
                        "dims": list(classifier.input_shape),
                        "optional": True,
                    },
                    {"name": IMAGE_INPUT, "data_type": "TYPE_STRING", "dims": [1], "optional": True},
                ],
                "output": [
                    {
                        "name": OUTPUT,
                        "data_type": "TYPE_FP32",
                        "dims": [classifier.info.num_classes],
                        "label_filename": LABELS_FILE,
                    }
                ],
                "dynamic_batching": {"max_queue_delay_microseconds": int(state.settings.max_wait_ms * 1000)},
            }
        )

    @app.get("/v2/models/{name}/ready", response_model=schemas.ReadyResponse)
    @app.get("/v2/models/{name}/versions/{version}/ready", response_model=schemas.ReadyResponse)
    async def model_ready(name: str, version: str | None = None) -> schemas.ReadyResponse:
        """200 when this model is ready."""
        model_for(name, version)
        return schemas.ReadyResponse(ready=True)

    async def batch_from(tensor: Tensor, classifier) -> np.ndarray:
        dims = ", ".join(map(str, classifier.input_shape))
        if tensor.name == TENSOR_INPUT:
            if tensor.datatype != _datatype(classifier):
                raise api_error(400, f"input 'input' must be {_datatype(classifier)}, got {tensor.datatype}")
            if len(tensor.shape) != 4 or tuple(tensor.shape[1:]) != classifier.input_shape or tensor.shape[0] < 1:
                raise api_error(400, f"input 'input' must have shape [N, {dims}] with N >= 1, got {tensor.shape}")
            if tensor.shape[0] > state.settings.max_batch:
                raise api_error(413, f"batch of {tensor.shape[0]} exceeds the limit of {state.settings.max_batch}")
            return np.ascontiguousarray(tensor.data, dtype=classifier.input_dtype)
        if tensor.name == IMAGE_INPUT:
            if tensor.datatype != "BYTES":
                raise api_error(400, f"input 'image' must be BYTES (encoded images), got {tensor.datatype}")
            if not (len(tensor.shape) == 1 or (len(tensor.shape) == 2 and tensor.shape[1] == 1)) or not tensor.data:
                raise api_error(400, f"input 'image' must have shape [N] or [N, 1], got {tensor.shape}")
            return await state.decode([(f"image[{i}]", blob) for i, blob in enumerate(tensor.data)])
        raise api_error(
            400, f"unknown input {tensor.name!r}; send 'input' ({_datatype(classifier)} [N, {dims}]) or 'image' (BYTES)"
        )

    @app.post("/v2/models/{name}/infer", response_model=schemas.InferResponse)
    @app.post("/v2/models/{name}/versions/{version}/infer", response_model=schemas.InferResponse)
    async def infer(name: str, request: Request, version: str | None = None) -> Response:
        """Run the model on one input tensor; JSON or binary tensor data, classification extension."""
        classifier = model_for(name, version)
        try:
            body, tensors = parse_request(await request.body(), request.headers.get(HEADER))
        except ProtocolError as exc:
            raise api_error(400, str(exc)) from None
        if len(tensors) != 1:
            raise api_error(400, f"send exactly one input ('input' or 'image'), got {len(tensors)}")
        try:
            binary_all = bool(parameters_of(body, "the request").get("binary_data_output"))
            requested = body.get("outputs") or [{"name": OUTPUT}]
            if not isinstance(requested, list):
                raise ProtocolError('\'outputs\' must be a list of objects such as {"name": "logits"}')
            for item in requested:
                if not isinstance(item, dict) or item.get("name") != OUTPUT:
                    raise ProtocolError(f"unknown output {item!r}; this model has one output, {OUTPUT!r}")
                parameters_of(item, f"output {OUTPUT!r}")
        except ProtocolError as exc:
            raise api_error(400, str(exc)) from None
        logits = await state.infer(await batch_from(tensors[0], classifier))
        if not np.isfinite(logits).all():
            raise api_error(400, "the model's outputs for this input are not finite numbers; check the input's range")
        outputs, binary = [], set()
        for item in requested:
            params = item.get("parameters") or {}
            if params.get("binary_data", binary_all):
                binary.add(OUTPUT)
            k = params.get("classification")
            if k is None:
                outputs.append(
                    {
                        "name": OUTPUT,
                        "datatype": "FP32",
                        "shape": list(logits.shape),
                        "values": logits.astype(np.float32),
                    }
                )
                continue
            if type(k) is not int or not 1 <= k <= classifier.info.num_classes:
                raise api_error(400, f"classification must be an integer between 1 and {classifier.info.num_classes}")
            values = _classification(logits, classifier.info.labels, k)
            outputs.append({"name": OUTPUT, "datatype": "BYTES", "shape": [len(logits), k], "values": values})
        head = {"model_name": name, "model_version": classifier.info.version}
        if "id" in body:
            head["id"] = str(body["id"])
        content, headers = encode_response(outputs, binary, head)
        return Response(content, headers=headers)
