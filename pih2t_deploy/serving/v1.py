"""The /v1 routes: ``POST /v1/classify`` (top-k labels of uploaded images) and ``GET /v1/model`` (what is
served). Stages: ``read_uploads`` (the request's encoded images), the service's decode and micro-batched
inference, ``top_k`` (the answer)."""

from __future__ import annotations

import base64
import os

import numpy as np
from fastapi import APIRouter, Request
from starlette.datastructures import UploadFile

from pih2t_deploy.data import longtail
from pih2t_deploy.runtime.classifier import ModelInfo
from pih2t_deploy.serving import schemas
from pih2t_deploy.serving.service import ApiError, Service
from pih2t_deploy.serving.v2_codec import ProtocolError, load_json

router = APIRouter(prefix="/v1", tags=["v1"])

CLASSIFY_BODY = {
    "requestBody": {
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "file": {"type": "string", "format": "binary"},
                        "files": {"type": "array", "items": {"type": "string", "format": "binary"}},
                        "top_k": {"type": "integer"},
                    },
                }
            },
            "application/json": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "images": {"type": "array", "items": {"type": "string", "format": "byte"}},
                        "top_k": {"type": "integer"},
                    },
                    "required": ["images"],
                }
            },
        },
        "required": True,
    }
}
CLASSIFY_ERRORS = (400, 413, 415, 422, 503, 504)


def top_k(probs: np.ndarray, labels: list[str], k: int) -> list[list[schemas.Prediction]]:
    """The k most probable classes of every row of ``probs``, best first (ties by lower index)."""
    order = longtail.top_k(probs, k)
    return [
        [schemas.Prediction(label=labels[i], index=int(i), score=float(row[i])) for i in idx]
        for row, idx in zip(probs, order, strict=True)
    ]


def parse_top_k(raw: object, num_classes: int, default: int) -> int:
    """top_k from a query/form/JSON value: 1 <= k <= classes, else 422."""
    if raw is None or raw == "":
        return min(default, num_classes)
    try:
        k = int(str(raw))
    except ValueError:
        raise ApiError(422, f"top_k must be a whole number, got {raw!r}") from None
    if not 1 <= k <= num_classes:
        raise ApiError(422, f"top_k must be between 1 and {num_classes}, got {k}")
    return k


async def read_uploads(request: Request, max_images: int) -> tuple[list[tuple[str, bytes]], object]:
    """Encoded images and the raw top_k from a multipart (``file``/``files``) or JSON (``images``) body."""
    content_type = request.headers.get("content-type", "")
    if content_type.startswith("multipart/form-data"):
        form = await request.form(max_files=max_images + 1, max_fields=16)
        uploads = [v for key in ("file", "files") for v in form.getlist(key) if isinstance(v, UploadFile)]
        if not uploads:
            fields = ", ".join(sorted(set(form.keys()))) or "none"
            raise ApiError(
                422, f"no image found: send the image in multipart field 'file' (or 'files'); got fields: {fields}"
            )
        blobs = [(u.filename or f"file {i}", await u.read()) for i, u in enumerate(uploads)]
        return blobs, form.get("top_k", request.query_params.get("top_k"))
    if content_type.startswith("application/json"):
        try:
            body = load_json(await request.body())
        except ProtocolError as exc:
            raise ApiError(400, str(exc)) from None
        images = body.get("images") if isinstance(body, dict) else None
        if not isinstance(images, list) or not images or not all(isinstance(i, str) for i in images):
            raise ApiError(422, 'JSON body must be {"images": [base64 string, ...], "top_k": k}')
        blobs = []
        for index, text in enumerate(images):
            try:
                blobs.append((f"images[{index}]", base64.b64decode(text.split(",")[-1], validate=True)))
            except ValueError:  # binascii.Error, or characters outside ASCII
                raise ApiError(400, f"images[{index}] is not valid base64") from None
        return blobs, body.get("top_k", request.query_params.get("top_k"))
    if not content_type:
        raise ApiError(422, "empty request: send multipart field 'file' or JSON {\"images\": [...]}")
    raise ApiError(415, f"unsupported content type {content_type!r}; use multipart/form-data or application/json")


def _card_meta(info: ModelInfo) -> dict:
    """The manifest (without the file digests) of an artifact, or the checkpoint's metadata."""
    if info.manifest is None:
        return {"meta": info.meta}
    return {k: v for k, v in info.manifest.to_dict().items() if k != "files"}


@router.post(
    "/classify",
    response_model=schemas.ClassifyResponse,
    openapi_extra=CLASSIFY_BODY,
    responses={code: {"model": schemas.ErrorResponse} for code in CLASSIFY_ERRORS},
)
async def classify(request: Request, service: Service) -> schemas.ClassifyResponse:
    """Top-k labels with probabilities for one or more images."""
    classifier = service.require_ready()
    with service.arriving():
        blobs, raw_k = await read_uploads(request, service.settings.max_batch)
        k = parse_top_k(raw_k, classifier.info.num_classes, service.settings.default_top_k)
        batch = await service.decode(blobs)
    logits = await service.infer(batch)
    service.metrics.images.inc(len(blobs))
    predictions = top_k(classifier.probabilities(logits), classifier.info.labels, k)
    results = [
        schemas.ImageResult(filename=name, predictions=preds)
        for (name, _), preds in zip(blobs, predictions, strict=True)
    ]
    return schemas.ClassifyResponse(model=classifier.info.name, version=classifier.info.version, results=results)


@router.get("/model", response_model=schemas.ModelCard, responses={503: {"model": schemas.ErrorResponse}})
async def model_card(service: Service) -> schemas.ModelCard:
    """What is served: labels, class counts, preprocessing and the artifact's metadata."""
    classifier = service.require_ready()
    info = classifier.info
    return schemas.ModelCard(
        name=info.name,
        version=info.version,
        backend=classifier.describe(),
        labels=info.labels,
        class_counts=info.class_counts,
        input_shape=list(classifier.input_shape),
        preprocessing=info.preprocessing.to_dict(),
        meta=_card_meta(info),
        pid=os.getpid(),
    )
