"""The /v1 routes over HTTP: ``POST /v1/classify`` (top-k labels of uploaded images) and ``GET /v1/model``
(what is served). A thin adapter: ``read_uploads`` takes the request's encoded images and top_k from a
multipart or JSON body; the data plane decodes, batches, infers and ranks."""

from __future__ import annotations

import asyncio
import base64
import os

from fastapi import APIRouter, Request
from starlette.datastructures import UploadFile

from pih2t_deploy.runtime.classifier import ModelInfo
from pih2t_deploy.serving import schemas
from pih2t_deploy.serving.dataplane import ClassifyRequest
from pih2t_deploy.serving.errors import InvalidInput, InvalidParameter, UnsupportedMediaType, quote
from pih2t_deploy.serving.http_edge import Plane
from pih2t_deploy.serving.v2_codec import load_json

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
                        "tau": {"type": "number", "minimum": 0, "maximum": 10},
                        "prior": {"type": "string", "description": "comma-separated numbers, or a registered name"},
                    },
                }
            },
            "application/json": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "images": {"type": "array", "items": {"type": "string", "format": "byte"}},
                        "top_k": {"type": "integer"},
                        "tau": {"type": "number", "minimum": 0, "maximum": 10},
                        "prior": {
                            "oneOf": [{"type": "array", "items": {"type": "number", "minimum": 0}}, {"type": "string"}]
                        },
                    },
                    "required": ["images"],
                }
            },
        },
        "required": True,
    }
}
CLASSIFY_ERRORS = (400, 413, 415, 422, 503, 504)
MAX_NAME = 255


async def read_uploads(request: Request, max_images: int) -> ClassifyRequest:
    """Encoded images and the raw top_k from a multipart (``file``/``files``) or JSON (``images``) body."""
    content_type = request.headers.get("content-type", "")
    if content_type.startswith("multipart/form-data"):
        form = await request.form(max_files=max_images + 1, max_fields=16)
        uploads = [v for key in ("file", "files") for v in form.getlist(key) if isinstance(v, UploadFile)]
        if not uploads:
            fields = ", ".join(quote(key, 30) for key in sorted(set(form.keys()))[:8]) or "none"
            raise InvalidParameter(
                f"no image found: send the image in multipart field 'file' (or 'files'); got fields: {fields}"
            )
        # a file name longer than any file system allows is cut (it is echoed in answers and error messages)
        blobs = [((u.filename or f"file {i}")[:MAX_NAME], await u.read()) for i, u in enumerate(uploads)]
        given = {key: form.get(key, request.query_params.get(key)) for key in ("top_k", "tau", "prior")}
        return ClassifyRequest(blobs, given["top_k"], given["tau"], given["prior"])
    if content_type.startswith("application/json"):
        body = load_json(await request.body())
        images = body.get("images") if isinstance(body, dict) else None
        if not isinstance(images, list) or not images or not all(isinstance(i, str) for i in images):
            raise InvalidParameter('JSON body must be {"images": [base64 string, ...], "top_k": k}')
        blobs = []
        for index, text in enumerate(images):
            try:
                blobs.append((f"images[{index}]", base64.b64decode(text.split(",")[-1], validate=True)))
            except ValueError:  # binascii.Error, or characters outside ASCII
                raise InvalidInput(f"images[{index}] is not valid base64") from None
        given = {key: body.get(key, request.query_params.get(key)) for key in ("top_k", "tau", "prior")}
        return ClassifyRequest(blobs, given["top_k"], given["tau"], given["prior"])
    if not content_type:
        raise InvalidParameter("empty request: send multipart field 'file' or JSON {\"images\": [...]}")
    raise UnsupportedMediaType(
        f"unsupported content type {quote(content_type)}; use multipart/form-data or application/json"
    )


def _card_meta(info: ModelInfo, with_versions: bool) -> dict:
    """The manifest (without the file digests) of an artifact, or the checkpoint's metadata; the software
    versions that made it only ``with_versions``."""
    hidden = {"files"} | (set() if with_versions else {"versions"})
    if info.manifest is None:
        return {"meta": {k: v for k, v in info.meta.items() if k not in hidden}}
    card = {k: v for k, v in info.manifest.to_dict().items() if k not in hidden}
    card["meta"] = {k: v for k, v in card["meta"].items() if k not in hidden}
    return card


@router.post(
    "/classify",
    response_model=schemas.ClassifyResponse,
    response_model_exclude_unset=True,  # "prior" appears only when one applied
    openapi_extra=CLASSIFY_BODY,
    responses={code: {"model": schemas.ErrorResponse} for code in CLASSIFY_ERRORS},
)
async def classify(request: Request, plane: Plane) -> schemas.ClassifyResponse:
    """Top-k labels with probabilities for one or more images; ``tau`` and ``prior`` (query, form or JSON)
    re-weight the classes for this request."""
    return await plane.classify(lambda: read_uploads(request, plane.settings.max_batch))


@router.get("/model", response_model=schemas.ModelCard, responses={503: {"model": schemas.ErrorResponse}})
async def model_card(plane: Plane) -> schemas.ModelCard:
    """What is served: labels, class counts, preprocessing and the artifact's metadata; the process id and
    software versions only when the server was started with --expose-process-info."""
    classifier = plane.require_ready()
    info = classifier.info
    exposed = plane.settings.expose_process_info
    return schemas.ModelCard(
        name=info.name,
        version=info.version,
        backend=classifier.describe(),
        labels=info.labels,
        class_counts=info.class_counts,
        input_shape=list(classifier.input_shape),
        preprocessing=info.preprocessing.to_dict(),
        meta=_card_meta(info, exposed),
        pid=(plane.settings.server_pid or os.getpid()) if exposed else None,
        worker_pid=os.getpid() if exposed else None,
    )


@router.get("/label-shift", responses={501: {"model": schemas.ErrorResponse}, 503: {"model": schemas.ErrorResponse}})
async def label_shift(plane: Plane) -> dict:
    """The deployment class prior estimated from the recent answers (EM), beside the training prior and the
    prior the model's answers assume, with their distances and the correction --adapt-prior applies."""
    return await asyncio.to_thread(plane.label_shift)
