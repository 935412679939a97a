"""ASGI middleware that bounds how large a request body may be (HTTP 413) and how long it may take to
arrive (HTTP 408), while it streams in.

The Content-Length header is checked before the application runs; bodies without one (chunked) are counted
chunk by chunk, and the first chunk over the limit ends the request with 413 without buffering the rest. A
body still incomplete ``timeout_s`` after the request began (a client that trickles bytes to hold the
connection) ends with 408, so slow clients cannot hold connections and memory for long.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
ASGIApp = Callable[[Scope, Callable[[], Awaitable[Message]], Callable[[Message], Awaitable[None]]], Awaitable[None]]


class BodyLimitMiddleware:
    """Wrap ``app`` so that HTTP request bodies above ``max_bytes`` get ``413 {"error": ...}`` and bodies not
    complete within ``timeout_s`` get ``408 {"error": ...}``."""

    def __init__(self, app: ASGIApp, max_bytes: int, timeout_s: float = 30.0) -> None:
        self.app, self.max_bytes, self.timeout_s = app, max_bytes, timeout_s

    @staticmethod
    async def _reject(send, status: int, message: str) -> None:
        body = json.dumps({"error": message}).encode()
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"connection", b"close"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})

    async def __call__(self, scope: Scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        too_large = f"request body exceeds the upload limit of {self.max_bytes:,} bytes"
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._reject(send, 413, too_large)
            return
        deadline = asyncio.get_running_loop().time() + self.timeout_s
        state = {"seen": 0, "rejected": False, "started": False, "complete": False}

        async def reject(status: int, message: str) -> Message:
            state["rejected"] = True
            if not state["started"]:
                state["started"] = True
                await self._reject(send, status, message)
            return {"type": "http.disconnect"}

        async def limited_receive() -> Message:
            if state["rejected"]:
                return {"type": "http.disconnect"}
            if state["complete"]:  # the body is in; only a disconnect can follow, however long that takes
                return await receive()
            try:  # a timer on the loop's clock, not wait_for's task per message
                async with asyncio.timeout_at(deadline):
                    message = await receive()
            except TimeoutError:
                return await reject(408, f"the request body did not arrive within {self.timeout_s:g} s")
            if message["type"] == "http.request":
                state["seen"] += len(message.get("body", b""))
                state["complete"] = not message.get("more_body", False)
                if state["seen"] > self.max_bytes:
                    return await reject(413, too_large)
            return message

        async def guarded_send(message: Message) -> None:
            if state["rejected"]:
                return
            if message["type"] == "http.response.start":
                state["started"] = True
            await send(message)

        try:
            await self.app(scope, limited_receive, guarded_send)
        except Exception:
            if not state["rejected"]:
                raise
