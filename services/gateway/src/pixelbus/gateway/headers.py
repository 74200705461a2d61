"""Security headers on every gateway response (plain ASGI middleware).

Everything: no MIME sniffing, no framing, no referrer, same-origin opener. API answers
(``/api/…``) also say ``Cache-Control: no-store`` (task states and keys' results are
private) and carry a content security policy that forbids everything: they are JSON,
never a page. CORS is closed unless ``PIXELBUS_CORS_ORIGINS`` names origins.
"""

from __future__ import annotations

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["SecurityHeaders"]

_ALWAYS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
}
_API = {
    "Cache-Control": "no-store",
    "Content-Security-Policy": "default-src 'none'; frame-ancestors 'none'",
}


class SecurityHeaders:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        api = str(scope.get("path", "")).startswith("/api/")

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in (*_ALWAYS.items(), *(_API.items() if api else ())):
                    headers.setdefault(name, value)
            await send(message)

        await self.app(scope, receive, with_headers)
