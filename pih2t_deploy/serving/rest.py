"""The FastAPI service: /v1/classify, the Open Inference Protocol (/v2/...), /metrics and /docs.

Stages, each a small function: ``read_uploads`` (decode the request), ``decode_batch`` (bytes -> tensor,
in a thread), the MicroBatcher (batch, predict, unbatch), ``top_k`` (encode the answer). Every error answer
is ``{"error": "..."}`` with a 4xx status, except 503 (queue full, not ready) and 504 (timeout).
"""

from __future__ import annotations

import asyncio
import base64
import os
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import numpy as np
from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException

from pih2t_deploy import __version__
from pih2t_deploy.data import longtail
from pih2t_deploy.data.images import MAX_PIXELS
from pih2t_deploy.runtime import Classifier
from pih2t_deploy.serving import schemas
from pih2t_deploy.serving.batcher import MicroBatcher, QueueFullError, RequestTimeoutError
from pih2t_deploy.serving.body_limit import BodyLimitMiddleware
from pih2t_deploy.serving.images import BadImageError, decode_batch
from pih2t_deploy.serving.metrics import ServiceMetrics
from pih2t_deploy.serving.v2 import register_v2_routes
from pih2t_deploy.serving.v2_codec import ProtocolError, load_json


@dataclass
class ServeSettings:
    """Service limits and batching settings."""

    max_batch: int = 32
    max_wait_ms: float = 5.0
    max_queue: int = 256
    max_upload_mb: float = 10.0
    timeout_s: float = 30.0
    max_pixels: int = MAX_PIXELS
    max_request_pixels: int = 2 * MAX_PIXELS
    default_top_k: int = 5
    decode_workers: int = field(default_factory=lambda: max(1, min(4, os.cpu_count() or 1)))


class ApiError(Exception):
    """An error answer: HTTP ``status`` and a message for ``{"error": ...}``."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.headers = status, headers or {}


@dataclass
class ServiceState:
    """What the routes share: the classifier, the batcher, metrics and readiness."""

    settings: ServeSettings
    metrics: ServiceMetrics = field(default_factory=ServiceMetrics)
    classifier: Classifier | None = None
    batcher: MicroBatcher | None = None
    ready: bool = False
    load_error: str | None = None
    decode_pool: ThreadPoolExecutor | None = None

    def require_ready(self) -> tuple[Classifier, MicroBatcher]:
        """The classifier and batcher, or 503 while loading or shutting down."""
        if not self.ready or self.classifier is None or self.batcher is None or not self.batcher.healthy:
            raise ApiError(503, "the model is not ready yet", {"Retry-After": "1"})
        return self.classifier, self.batcher

    async def infer(self, batch: np.ndarray) -> np.ndarray:
        """Logits through the micro-batcher; queue-full and timeout become 503 / 504."""
        _, batcher = self.require_ready()
        try:
            return await batcher.submit(batch)
        except QueueFullError as exc:
            raise ApiError(503, str(exc), {"Retry-After": "1"}) from None
        except RequestTimeoutError as exc:
            raise ApiError(504, str(exc)) from None
        finally:
            self.metrics.queue_depth.set(batcher.depth)

    async def decode(self, blobs: list[tuple[str, bytes]]) -> np.ndarray:
        """Preprocessed batch for encoded images (in a worker thread); bad images become 4xx."""
        classifier, _ = self.require_ready()
        if len(blobs) > self.settings.max_batch:
            raise ApiError(413, f"{len(blobs)} images in one request; the limit is {self.settings.max_batch}")
        try:
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(
                self.decode_pool,
                decode_batch,
                blobs,
                classifier.prepare,
                self.settings.max_pixels,
                self.settings.max_request_pixels,
            )
        except BadImageError as exc:
            raise ApiError(exc.status, str(exc)) from None


def top_k(probs: np.ndarray, labels: list[str], k: int) -> list[list[schemas.Prediction]]:
    """The k most probable classes of every row of ``probs``, best first (ties by lower index)."""
    order = longtail.top_k(probs, k)
    return [
        [schemas.Prediction(label=labels[i], index=int(i), score=float(row[i])) for i in idx]
        for row, idx in zip(probs, order, strict=True)
    ]


def _card_meta(info) -> dict:
    """The manifest (without the file digests) of an artifact, or the checkpoint's metadata."""
    if info.manifest is None:
        return {"meta": info.meta}
    return {k: v for k, v in info.manifest.to_dict().items() if k != "files"}


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


def create_app(load: Callable[[], Classifier], settings: ServeSettings | None = None) -> BodyLimitMiddleware:
    """The ASGI application. ``load`` builds the classifier in the background after start-up, so the server
    answers liveness at once; readiness turns true after load and warm-up, and false again at shutdown."""
    settings = settings or ServeSettings()
    state = ServiceState(settings)
    # a few dedicated decode threads: bounded CPU contention with inference and bounded per-thread memory
    state.decode_pool = ThreadPoolExecutor(settings.decode_workers, thread_name_prefix="pih2t-decode")

    async def load_and_warm_up() -> None:
        started = time.perf_counter()
        try:
            classifier = await run_in_threadpool(load)
            for size in sorted({1, settings.max_batch}):
                await run_in_threadpool(
                    classifier.predict, np.zeros((size, *classifier.input_shape), classifier.input_dtype)
                )
        except Exception as exc:  # reported by /v2/health/live, so an orchestrator restarts the process
            state.load_error = f"{type(exc).__name__}: {exc}"
            return
        state.metrics.load_seconds.set(time.perf_counter() - started)
        state.classifier = classifier
        state.batcher = MicroBatcher(
            classifier.predict,
            max_batch=settings.max_batch,
            max_wait_ms=settings.max_wait_ms,
            max_queue=settings.max_queue,
            timeout_s=settings.timeout_s,
            on_batch=state.metrics.batch_size.observe,
        )
        state.batcher.start()
        state.ready = True

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        loading = asyncio.get_running_loop().create_task(load_and_warm_up())
        yield
        state.ready = False
        await loading
        if state.batcher is not None:
            await state.batcher.stop()
        state.decode_pool.shutdown(wait=True)

    app = FastAPI(
        title="pih2t-serve",
        version=__version__,
        description="Long-tailed image classification with a folded PI-H2T model.",
        lifespan=lifespan,
        responses={code: {"model": schemas.ErrorResponse} for code in (400, 413, 415, 422, 503, 504)},
    )
    app.state.service = state

    @app.exception_handler(ApiError)
    async def api_error(_request: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse({"error": str(exc)}, status_code=exc.status, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {"loc": [], "msg": "invalid request"}
        where = ".".join(str(p) for p in first.get("loc", []))
        return JSONResponse({"error": f"{where}: {first.get('msg')}"}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse({"error": str(exc.detail)}, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(Exception)
    async def unexpected(_request: Request, exc: Exception) -> JSONResponse:
        return JSONResponse({"error": f"internal error: {type(exc).__name__}"}, status_code=500)

    @app.middleware("http")
    async def count_requests(request: Request, call_next):
        started = time.perf_counter()
        response = await call_next(request)
        route = getattr(request.scope.get("route"), "path", "unmatched")
        state.metrics.requests.labels(route, str(response.status_code)).inc()
        state.metrics.latency.labels(route).observe(time.perf_counter() - started)
        return response

    classify_body = {
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

    @app.post("/v1/classify", response_model=schemas.ClassifyResponse, openapi_extra=classify_body)
    async def classify(request: Request) -> schemas.ClassifyResponse:
        """Top-k labels with probabilities for one or more images."""
        classifier, _ = state.require_ready()
        blobs, raw_k = await read_uploads(request, settings.max_batch)
        k = parse_top_k(raw_k, classifier.info.num_classes, settings.default_top_k)
        logits = await state.infer(await state.decode(blobs))
        state.metrics.images.inc(len(blobs))
        results = [
            schemas.ImageResult(filename=name, predictions=preds)
            for (name, _), preds in zip(
                blobs, top_k(classifier.probabilities(logits), classifier.info.labels, k), strict=True
            )
        ]
        return schemas.ClassifyResponse(model=classifier.info.name, version=classifier.info.version, results=results)

    @app.get("/v1/model", response_model=schemas.ModelCard)
    async def model_card() -> schemas.ModelCard:
        """What is served: labels, class counts, preprocessing and the artifact's metadata."""
        classifier, _ = state.require_ready()
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

    @app.get("/metrics", include_in_schema=False)
    async def metrics() -> Response:
        if state.batcher is not None:
            state.metrics.queue_depth.set(state.batcher.depth)
        return Response(generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    register_v2_routes(app, state, ApiError)
    return BodyLimitMiddleware(app, int(settings.max_upload_mb * 1024 * 1024))
