"""Security headers on every gateway response (plain ASGI middleware).

Everything: no MIME sniffing, no framing, no referrer, same-origin opener. API answers
(``/api/…``) also say ``Cache-Control: no-store`` (task states and keys' results are
private) and carry a content security policy that forbids everything: they are JSON,
never a page. CORS is closed unless ``PIXELBUS_CORS_ORIGINS`` names origins.
"""

from __future__ import annotations

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


def _raw(headers: dict[str, str]) -> list[tuple[bytes, bytes]]:
    return [(name.lower().encode(), value.encode()) for name, value in headers.items()]


_RAW_ALWAYS = _raw(_ALWAYS)
_RAW_API = _raw(_ALWAYS | _API)


class SecurityHeaders:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        extra = _RAW_API if scope["path"].startswith("/api/") else _RAW_ALWAYS

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                # raw tuples, added where the answer did not set them (no Headers object:
                # this runs for every response)
                headers = list(message.get("headers") or ())
                present = {name for name, _ in headers}
                headers.extend(item for item in extra if item[0] not in present)
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, with_headers)
