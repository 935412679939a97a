"""DirectRoute: the routes it is given are answered by their endpoints without the router, with the path
parameters and route the router would set; everything else reaches the wrapped application."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from fastapi.routing import APIRoute

from pih2t_deploy.serving.direct_route import DirectRoute
from pih2t_deploy.serving.errors import InvalidInput
from pih2t_deploy.serving.http_edge import serving_error

router = APIRouter(prefix="/v2")


@router.post("/models/{name}/infer")
@router.post("/models/{name}/versions/{version}/infer")
async def echo(request: Request) -> Response:
    """What the endpoint saw; a body of ``bad`` is a named error, ``boom`` any other exception."""
    body = await request.body()
    if body == b"bad":
        raise InvalidInput("the body says bad")
    if body == b"boom":
        raise RuntimeError("boom")
    return JSONResponse({"params": request.path_params, "route": request.scope["route"].path, "body": body.decode()})


async def teapot(scope, receive, send) -> None:
    """The application behind the middleware: answers 418 to anything, so a 418 means 'not taken directly'."""
    await send({"type": "http.response.start", "status": 418, "headers": []})
    await send({"type": "http.response.body", "body": b"router"})


def post(path: str, body: bytes, method: str = "POST") -> httpx.Response:
    routes = [route for route in router.routes if isinstance(route, APIRoute)]
    app = DirectRoute(teapot, routes=routes, on_error=serving_error)

    async def call() -> httpx.Response:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client:
            return await client.request(method, path, content=body)

    return asyncio.run(call())


def test_a_matching_request_reaches_its_endpoint_with_the_routers_parameters_and_route():
    plain = post("/v2/models/digits/infer", b"x")
    versioned = post("/v2/models/digits/versions/3/infer", b"y")
    assert plain.status_code == 200 and plain.json() == {
        "params": {"name": "digits"},
        "route": "/v2/models/{name}/infer",
        "body": "x",
    }
    assert versioned.json() == {
        "params": {"name": "digits", "version": "3"},
        "route": "/v2/models/{name}/versions/{version}/infer",
        "body": "y",
    }


def test_anything_the_routes_do_not_match_goes_to_the_application():
    """Other paths, and the infer path with another method (the router's 405 is the application's to give)."""
    for method, path in [("POST", p) for p in ("/v2/models/digits/infer/extra", "/v2/models/d", "/v1/classify")] + [
        ("GET", "/v2/models/digits/infer")
    ]:
        answer = post(path, b"x", method)
        assert (answer.status_code, answer.text) == (418, "router"), (method, path)


def test_a_named_error_gets_its_http_answer_and_other_failures_propagate():
    refused = post("/v2/models/digits/infer", b"bad")
    assert refused.status_code == 400 and refused.json() == {"error": "the body says bad"}
    with pytest.raises(RuntimeError, match="boom"):  # to the server-error handler, as from the router
        post("/v2/models/digits/infer", b"boom")
