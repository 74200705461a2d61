"""What the kit's fake HTTP services (GCS, Cloudflare Images, the S3 ``FaultyProxy``) are
built on: a ``ThreadingHTTPServer`` on a random loopback port, served by a daemon thread
while used as a context manager, and a quiet HTTP/1.1 request handler."""

from __future__ import annotations

import json
import threading
from email.message import EmailMessage, MIMEPart
from email.parser import BytesParser
from email.policy import HTTP
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self

__all__ = ["FakeApi", "LoopbackHttpServer", "QuietHandler", "multipart_parts"]

_HOST = "127.0.0.1"


class LoopbackHttpServer:
    """Serves ``handler`` on a random loopback port from ``__enter__`` to ``__exit__``."""

    def __init__(self, handler: type[BaseHTTPRequestHandler]) -> None:
        self._server = ThreadingHTTPServer((_HOST, 0), handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )

    @property
    def url(self) -> str:
        return f"http://{_HOST}:{self._server.server_address[1]}"

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop serving and free the port; safe to call twice."""
        if self._thread.is_alive():
            self._server.shutdown()
            self._thread.join()
        self._server.server_close()


class FakeApi(LoopbackHttpServer):
    """A fake service's API: it records every request, and fails those that ``fail_next``
    asks for (as a throttled or failing service does)."""

    def __init__(self, handler: type[BaseHTTPRequestHandler]) -> None:
        super().__init__(handler)
        self.requests: list[tuple[str, str]] = []  # (method, path) of every API request
        self._faults: list[tuple[int, str | None]] = []  # (status, only for this method)
        self._lock = threading.Lock()

    def fail_next(self, count: int, status: int = 503, *, method: str | None = None) -> None:
        """Fail the next ``count`` API requests (of ``method`` only, if given) with ``status``."""
        with self._lock:
            self._faults.extend([(status, method)] * count)

    def _api_request(self, method: str, path: str) -> int | None:
        """Record an API request; the status to fail it with, if ``fail_next`` asked for one."""
        with self._lock:
            self.requests.append((method, path))
            for index, (status, only) in enumerate(self._faults):
                if only in (None, method):
                    del self._faults[index]
                    return status
            return None


class QuietHandler(BaseHTTPRequestHandler):
    """A handler that keeps test output quiet (no access log) and speaks HTTP/1.1, so that
    connections are kept alive and ``Expect: 100-continue`` is answered."""

    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _body(self) -> bytes:
        # the clients send Content-Length for in-memory bodies; chunked is not needed
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _send(
        self,
        status: int,
        body: bytes | dict[str, Any] = b"",
        content_type: str = "application/json",
        headers: dict[str, str] | None = None,
    ) -> None:
        """Answer ``body`` (a dict as JSON); a ``HEAD`` answer has the headers only."""
        data = json.dumps(body).encode() if isinstance(body, dict) else body
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)


def multipart_parts(content_type: str, body: bytes) -> list[tuple[MIMEPart, bytes]]:
    """The parts of a ``multipart/*`` request body, each with its decoded bytes."""
    message = BytesParser(EmailMessage, policy=HTTP).parsebytes(
        f"Content-Type: {content_type}\r\n\r\n".encode() + body
    )
    parts = []
    for part in message.iter_parts():
        data = part.get_payload(decode=True)
        parts.append((part, data if isinstance(data, bytes) else b""))
    return parts
