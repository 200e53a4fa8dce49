"""Security headers on every response: a Content-Security-Policy with a per-request script nonce, and friends."""

from __future__ import annotations

import secrets

from starlette.types import ASGIApp, Message, Receive, Scope, Send

# Scripts and styles come from /static only. Inline <script> needs the request's nonce (only the API docs
# page has one); style="" attributes stay allowed for server-computed widths such as progress bars, but
# not <style> elements. Nothing may frame the pages (clickjacking).
CSP = (
    "default-src 'self'; script-src 'self' 'nonce-{nonce}'; style-src 'self'; style-src-attr 'unsafe-inline'; "
    "img-src 'self' data:; object-src 'none'; base-uri 'self'; form-action 'self'; frame-ancestors 'none'"
)
HEADERS = {
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "referrer-policy": "same-origin",
}


def csp_nonce(state: object) -> str:
    """The nonce of this request (pass ``request.state``), for an inline ``<script nonce=...>``."""
    return getattr(state, "csp_nonce", "")


class SecurityHeadersMiddleware:
    """Adds CSP, nosniff, frame and referrer headers to every HTTP response, unless a route set its own."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        nonce = secrets.token_urlsafe(16)
        scope.setdefault("state", {})["csp_nonce"] = nonce

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                present = {name.lower() for name, _ in headers}
                wanted = {**HEADERS, "content-security-policy": CSP.format(nonce=nonce)}
                headers += [(k.encode(), v.encode()) for k, v in wanted.items() if k.encode() not in present]
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)
