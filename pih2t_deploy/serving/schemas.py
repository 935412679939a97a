"""Pydantic models of every REST response (they make up the OpenAPI schema at /docs)."""

from __future__ import annotations

from pydantic import BaseModel, Field


class Prediction(BaseModel):
    """One of the top-k classes of an image."""

    label: str
    index: int
    score: float = Field(description="softmax probability")


class ImageResult(BaseModel):
    """Top-k predictions of one image, best first."""

    filename: str | None = None
    predictions: list[Prediction]


class ClassifyResponse(BaseModel):
    """Answer of POST /v1/classify: one result per image, in request order."""

    model: str
    version: str
    results: list[ImageResult]
    prior: dict | None = Field(
        default=None, description="present only when a prior applied: the request's tau / prior, or 'adapted'"
    )


class ErrorResponse(BaseModel):
    """Every error answer: what was wrong."""

    error: str


class ModelCard(BaseModel):
    """GET /v1/model: what is being served."""

    name: str
    version: str
    backend: dict
    labels: list[str]
    class_counts: list[int] | None
    input_shape: list[int]
    preprocessing: dict
    meta: dict
    pid: int | None = Field(
        default=None,
        description="process id of the server (the parent of its --workers), with --expose-process-info (else null)",
    )
    worker_pid: int | None = Field(
        default=None,
        description="process id of the worker that answered (the server itself without --workers), with "
        "--expose-process-info (else null)",
    )


class LiveResponse(BaseModel):
    live: bool


class ReadyResponse(BaseModel):
    ready: bool


class TensorMetadata(BaseModel):
    name: str
    datatype: str
    shape: list[int]


class ModelMetadata(BaseModel):
    """GET /v2/models/{name} (Open Inference Protocol)."""

    name: str
    versions: list[str]
    platform: str
    inputs: list[TensorMetadata]
    outputs: list[TensorMetadata]
    parameters: dict[str, str] | None = Field(default=None, description="request parameters the model takes")


class ServerMetadata(BaseModel):
    """GET /v2 (Open Inference Protocol)."""

    name: str
    version: str
    extensions: list[str]


class InferOutput(BaseModel):
    name: str
    datatype: str
    shape: list[int]
    data: list | None = None
    parameters: dict | None = None


class InferResponse(BaseModel):
    """POST /v2/models/{name}/infer, JSON form (binary outputs follow the JSON header when requested)."""

    model_name: str
    model_version: str
    id: str | None = None
    outputs: list[InferOutput]


class ConfigTensor(BaseModel):
    """One input or output of a Triton model configuration."""

    name: str
    data_type: str
    dims: list[int]
    format: str | None = None
    label_filename: str | None = None


class ModelConfig(BaseModel):
    """GET /v2/models/{name}/config: the model configuration in Triton's JSON form."""

    name: str
    platform: str
    max_batch_size: int
    input: list[ConfigTensor]
    output: list[ConfigTensor]
    dynamic_batching: dict
    parameters: dict = Field(default_factory=dict, description="request parameters the model takes")
