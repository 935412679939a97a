"""The busiest route answered without the framework's dispatch: ``DirectRoute`` hands a request that one of
the given FastAPI routes matches straight to that route's endpoint.

FastAPI's routing, its exception middleware and its per-request handler (route matching across every route,
dependency solving, an exit stack) made 340 of the 1,350 Python calls of a v2 request with one 8x8 PNG;
without them, HTTP requests/s rose 11-19% in one process (docs/performance.md, run 6).
The middleware sits inside the request metrics and the body limit, so both still apply; the route's own
matcher decides (the same path templates and parameters as the router), ``scope["route"]`` is set as the
router sets it (metrics count the request under its template), a named error of the core gets the answer
the exception handler gives it, and any other exception propagates to the server-error handler as it would
from the router. Endpoints taking anything but the bare request stay with the router.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable

from fastapi.routing import APIRoute
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Match
from starlette.types import ASGIApp, Receive, Scope, Send

from pih2t_deploy.serving.errors import ServingError

Endpoint = Callable[[Request], Awaitable[Response]]
ErrorHandler = Callable[[Request, Exception], Awaitable[Response]]


class DirectRoute:
    """ASGI middleware: requests that ``routes`` match go to their endpoint directly (see the module
    docstring); everything else to ``app``."""

    def __init__(self, app: ASGIApp, routes: Iterable[APIRoute], on_error: ErrorHandler) -> None:
        self.app, self.routes, self.on_error = app, tuple(routes), on_error

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            for route in self.routes:
                match, child = route.matches(scope)
                if match is Match.FULL:
                    scope.update(child)
                    await self._answer(route.endpoint, scope, receive, send)
                    return
        await self.app(scope, receive, send)

    async def _answer(self, endpoint: Endpoint, scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope, receive, send)
        try:
            response = await endpoint(request)
        except ServingError as exc:
            response = await self.on_error(request, exc)
        await response(scope, receive, send)
