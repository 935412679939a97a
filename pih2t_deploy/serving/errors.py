"""The errors of the serving core, named for what went wrong, not for a protocol's status code.

The data plane (``dataplane.py``), the decoders and the batcher raise these; each front end maps them in one
table: ``http_edge.HTTP_STATUS`` to HTTP statuses, ``grpc_service.GRPC_STATUS`` to gRPC codes. A subclass
maps as its nearest listed ancestor. Messages are one line, meant for the client.
"""

from __future__ import annotations

from typing import TypeVar

Code = TypeVar("Code")


class ServingError(Exception):
    """A request the service refuses or cannot answer now; ``retry_after`` (seconds) when waiting helps."""

    retry_after: float | None = None


class InvalidInput(ServingError):
    """The request body, a tensor, an image or a parameter is malformed (HTTP 400, gRPC INVALID_ARGUMENT)."""


class InvalidParameter(ServingError):
    """A well-formed request whose parameter is out of range or missing, e.g. top_k (HTTP 422)."""


class ModelNotFound(ServingError):
    """The request names a model or version this server does not serve (HTTP 404, gRPC NOT_FOUND)."""


class PayloadTooLarge(ServingError):
    """Too many images, pixels or bytes for the configured limits (HTTP 413, gRPC RESOURCE_EXHAUSTED)."""


class UnsupportedMediaType(ServingError):
    """A content type or image format the service does not read (HTTP 415)."""


class NotSupported(ServingError):
    """A feature this server or model does not offer, e.g. the label-shift report with --no-watch (HTTP 501,
    gRPC UNIMPLEMENTED)."""


class Unavailable(ServingError):
    """The model is not ready, or the queue is full: retry shortly (HTTP 503, gRPC UNAVAILABLE)."""

    retry_after = 1.0


class DeadlineExceeded(ServingError):
    """No answer within the service's timeout (HTTP 504, gRPC DEADLINE_EXCEEDED)."""


def status_of(error: ServingError, table: dict[type[ServingError], Code]) -> Code:
    """The entry of ``table`` for ``error``'s class or its nearest ancestor listed there."""
    for cls in type(error).__mro__:
        if cls in table:
            return table[cls]
    raise KeyError(f"{type(error).__name__} is not mapped")


QUOTE_LIMIT = 40


def quote(value: object, limit: int = QUOTE_LIMIT) -> str:
    """``repr(value)`` for an error message, cut to ``limit`` characters with the full length said, so a
    client's 100 kB string is never echoed back whole."""
    text = repr(value)
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text)} characters)"
