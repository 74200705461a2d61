"""A real local HTTP(S) server for the fetch tests: it counts requests, records the
Host header and TLS server name, and serves a small route table.

A module with a unique name (not conftest) so that tests can import from it."""

from __future__ import annotations

import contextlib
import io
import ssl
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import numpy as np
from PIL import Image

BIG = 10_000


def _png_bytes() -> bytes:
    buffer = io.BytesIO()
    pixels = np.arange(16 * 16 * 3, dtype=np.uint8).reshape(16, 16, 3)
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


PNG = _png_bytes()


@dataclass
class Seen:
    path: str
    host: str | None


@dataclass
class LocalServer:
    port: int
    scheme: str
    requests: list[Seen] = field(default_factory=list)
    server_names: list[str | None] = field(default_factory=list)
    release: threading.Event = field(default_factory=threading.Event)

    def url(self, path: str, host: str = "127.0.0.1") -> str:
        return f"{self.scheme}://{host}:{self.port}{path}"

    @property
    def paths(self) -> list[str]:
        return [seen.path for seen in self.requests]


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        state = self.server.state
        state.requests.append(Seen(self.path, self.headers.get("Host")))
        url = urlsplit(self.path)
        route = url.path.split("/")[1]
        # The client may give up early, as some tests intend.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError, ssl.SSLError):
            getattr(self, f"route_{route.replace('-', '_')}", self.route_missing)(url)

    def send_body(self, status: int, body: bytes, content_type: str, *, sized: bool = True) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        if sized:
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def route_missing(self, url: object) -> None:
        self.send_body(404, b"not found", "text/plain")

    def route_image(self, url: object) -> None:
        self.send_body(200, PNG, "image/png; charset=binary")

    def route_page(self, url: object) -> None:
        self.send_body(200, b"<!doctype html><html><body>hi</body></html>", "text/html")

    def route_redirect(self, url: object) -> None:
        target = parse_qs(urlsplit(self.path).query)["to"][0]
        self.send_response(302)
        self.send_header("Location", target)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def route_chain(self, url: object) -> None:
        remaining = int(self.path.rsplit("/", 1)[1])
        if remaining == 0:
            self.route_image(url)
            return
        self.send_response(301)
        self.send_header("Location", f"/chain/{remaining - 1}")  # relative: resolved by us
        self.send_header("Content-Length", "0")
        self.end_headers()

    def route_big(self, url: object) -> None:
        self.send_body(200, b"x" * BIG, "image/png")

    def route_big_unsized(self, url: object) -> None:
        # HTTP/1.0 without Content-Length: the body ends when the connection closes.
        self.send_body(200, b"x" * BIG, "image/png", sized=False)

    def route_hang(self, url: object) -> None:
        self.server.state.release.wait(timeout=10)

    def route_drip(self, url: object) -> None:
        """Headers at once, then a byte every 50 ms: no single read is slow."""
        self.send_response(200)
        self.send_header("Content-Type", "image/png")
        self.end_headers()
        while not self.server.state.release.wait(timeout=0.05):
            self.wfile.write(b"x")
            self.wfile.flush()

    def route_status(self, url: object) -> None:
        code = int(self.path.rsplit("/", 1)[1])
        self.send_body(code, b"status body", "text/plain")


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    state: LocalServer


def serve(context: ssl.SSLContext | None) -> Iterator[LocalServer]:
    server = _Server(("127.0.0.1", 0), _Handler)
    scheme = "http"
    state = LocalServer(port=server.server_address[1], scheme=scheme)
    if context is not None:
        state.scheme = "https"
        context.sni_callback = lambda sock, name, ctx: state.server_names.append(name)
        server.socket = context.wrap_socket(server.socket, server_side=True)
    server.state = state
    thread = threading.Thread(target=server.serve_forever, args=(0.02,), daemon=True)
    thread.start()
    try:
        yield state
    finally:
        state.release.set()
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@dataclass(frozen=True)
class Certificate:
    cert: Path
    key: Path
    host: str = "photos.example"
