"""What the HTTP front end shares: the data plane as a FastAPI dependency, and the one table that turns the
core's named errors into HTTP statuses (``{"error": "..."}`` bodies, Retry-After where waiting helps)."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from fastapi.responses import JSONResponse

from pih2t_deploy.serving.dataplane import DataPlane
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

HTTP_STATUS: dict[type[ServingError], int] = {
    InvalidInput: 400,
    ModelNotFound: 404,
    PayloadTooLarge: 413,
    UnsupportedMediaType: 415,
    InvalidParameter: 422,
    NotSupported: 501,
    Unavailable: 503,
    DeadlineExceeded: 504,
}


async def get_plane(request: Request) -> DataPlane:
    """FastAPI dependency: the data plane of the application that received ``request`` (async, so FastAPI
    calls it on the event loop instead of handing it to a thread)."""
    return request.app.state.plane


Plane = Annotated[DataPlane, Depends(get_plane)]


async def serving_error(_request: Request, exc: Exception) -> JSONResponse:
    """The HTTP answer to a named error of the core: its status by ``HTTP_STATUS``, the message as
    ``{"error": ...}``, and Retry-After when the error says waiting helps."""
    assert isinstance(exc, ServingError)
    headers = {"Retry-After": f"{exc.retry_after:g}"} if exc.retry_after is not None else None
    return JSONResponse({"error": str(exc)}, status_code=status_of(exc, HTTP_STATUS), headers=headers)
