"""The FastAPI application: ``create_app`` puts the data plane, its routers (/v1, /v2), /metrics, the
middleware (request metrics, body size limit) and the exception handlers together.

Every error answer is ``{"error": "..."}`` with a 4xx status, except 503 (queue full, not ready) and 504
(timeout); the core's named errors get their status from ``http_edge.HTTP_STATUS``. Where things go: a route
in ``v1.py`` or ``v2.py``; operations and shared state in ``dataplane.py``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.routing import APIRoute
from fastapi_offline import FastAPIOffline
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.exceptions import HTTPException as StarletteHTTPException

from pih2t_deploy import __version__
from pih2t_deploy.runtime import Classifier
from pih2t_deploy.serving import v1, v2
from pih2t_deploy.serving.body_limit import BodyLimitMiddleware
from pih2t_deploy.serving.dataplane import DataPlane
from pih2t_deploy.serving.direct_route import DirectRoute
from pih2t_deploy.serving.errors import ServingError
from pih2t_deploy.serving.http_edge import serving_error
from pih2t_deploy.serving.metrics import RequestMetricsMiddleware
from pih2t_deploy.serving.settings import ServeSettings

DOCS_ASSETS = "/docs-assets"


async def _validation_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    first = exc.errors()[0] if exc.errors() else {"loc": [], "msg": "invalid request"}
    where = ".".join(str(p) for p in first.get("loc", []))
    return JSONResponse({"error": f"{where}: {first.get('msg')}"}, status_code=422)


async def _http_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    return JSONResponse({"error": str(exc.detail)}, status_code=exc.status_code, headers=exc.headers)


async def _unexpected(_request: Request, exc: Exception) -> JSONResponse:
    return JSONResponse({"error": f"internal error: {type(exc).__name__}"}, status_code=500)


def create_app(load: Callable[[], Classifier], settings: ServeSettings | None = None) -> FastAPI:
    """The ASGI application. ``load`` builds the classifier in the background after start-up, so the server
    answers liveness at once; readiness turns true after load and warm-up, and false again when shutdown
    begins. Settings are checked before anything else (ConfigError for a value out of range)."""
    plane = DataPlane(load, settings)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        loading = asyncio.get_running_loop().create_task(plane.start())
        yield
        plane.draining = True
        await loading
        await plane.stop()

    # /docs and /redoc load their JavaScript and CSS from this server (fastapi-offline's copy), not a CDN
    app = FastAPIOffline(
        title="pih2t-serve",
        version=__version__,
        description="Long-tailed image classification with a folded PI-H2T model.",
        lifespan=lifespan,
        static_url=DOCS_ASSETS,
    )
    app.state.plane = plane
    app.add_exception_handler(ServingError, serving_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected)
    app.include_router(v2.router)  # before /v1: its infer route is the busiest, and routes are tried in order
    app.include_router(v1.router)

    @app.get("/metrics", include_in_schema=False)
    async def metrics() -> Response:
        if plane.batcher is not None:
            plane.metrics.queue_depth.set(plane.batcher.depth)
        if plane.longtail is not None:
            await asyncio.to_thread(plane.longtail.report)  # refreshes the label-shift gauges
        return Response(plane.metrics.exposition(), media_type=CONTENT_TYPE_LATEST)

    # added first, so innermost: inside the body limit and the request metrics, outside the router
    infer_routes = [route for route in v2.router.routes if isinstance(route, APIRoute) and route.endpoint is v2.infer]
    app.add_middleware(DirectRoute, routes=infer_routes, on_error=serving_error)
    app.add_middleware(
        BodyLimitMiddleware, max_bytes=plane.settings.max_upload_bytes, timeout_s=plane.settings.body_timeout_s
    )
    app.add_middleware(RequestMetricsMiddleware, metrics=plane.metrics)
    return app
