"""Request-body size limits, enforced before anything parses a body or checks a login."""

from __future__ import annotations

import json

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

# The routes that take a .zip upload get the larger limit (settings.max_upload_bytes).
UPLOAD_PATHS = frozenset({"/api/v1/imports", "/admin/import"})
# Room for the multipart envelope around a zip of exactly max_upload_bytes, so that one gets
# the importer's own message rather than a bare 413.
MULTIPART_ALLOWANCE = 64 * 1024


class _TooLarge(HTTPException):
    """Raised from ``receive``: FastAPI re-raises an HTTPException met while parsing a body,
    so it becomes this 413 (not a 400 "error parsing the body")."""

    def __init__(self, limit: int) -> None:
        super().__init__(status_code=413, detail=_message(limit))


def _presents_credentials(scope: Scope) -> bool:
    """A bearer token or a logged-in session: checked properly later, this only picks the limit."""
    if any(name == b"authorization" for name, _ in scope.get("headers", ())):
        return True
    session = scope.get("session")
    return isinstance(session, dict) and "uid" in session


class BodyLimitMiddleware:
    """Answer 413 to a body over the limit: at once by Content-Length, else while it streams in.

    Pure ASGI, so nothing (JSON, form or multipart parsing, authentication) sees more than
    ``max_bytes``. An upload route allows ``upload_max_bytes`` to a request that presents a
    login; the session middleware must run before this one so that a cookie login counts.
    """

    def __init__(self, app: ASGIApp, *, max_bytes: int, upload_max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.upload_max_bytes = upload_max_bytes

    def limit_for(self, scope: Scope) -> int:
        if scope.get("path") in UPLOAD_PATHS and _presents_credentials(scope):
            return self.upload_max_bytes + MULTIPART_ALLOWANCE
        return self.max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit_for(scope)
        declared = _content_length(scope)
        if declared is not None and declared > limit:
            await _refuse(send, limit)
            return

        received = 0
        started = False

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise _TooLarge(limit)
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except _TooLarge:
            if started:
                raise
            await _refuse(send, limit)


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


def _message(limit: int) -> str:
    return f"the request body is over the limit of {limit:,} bytes"


async def _refuse(send: Send, limit: int) -> None:
    body = json.dumps({"detail": _message(limit)}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 413,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})
