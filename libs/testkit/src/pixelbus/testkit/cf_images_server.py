"""A small Cloudflare Images server for tests: the v4 API's image endpoints and a delivery
host, on a random loopback port.

Request and response shapes (those of the real API, ``/client/v4`` prefix):

- Every API answer is ``{"success": bool, "errors": [{"code": int, "message": str}],
  "messages": [], "result": … | null}``.
- ``Authorization: Bearer <token>`` is required; another token gets ``401`` with
  ``{"code": 10000, "message": "Authentication error"}``, a known token used on another
  account ``403`` with the same error.
- ``POST /accounts/{account}/images/v1`` — ``multipart/form-data`` with ``file`` (the
  image), optional ``id`` (custom id, may contain ``/``), ``metadata`` (JSON),
  ``requireSignedURLs``. ``200`` with ``result`` = ``{"id", "filename", "uploaded",
  "requireSignedURLs", "meta", "variants": ["<delivery>/<account hash>/<id>/<variant>", …]}``.
  An id already taken: ``409`` ``{"code": 5409, "message": "Resource already exists"}``.
  Bytes that are not an image: ``400`` ``{"code": 5400, "message": "Bad request: ERROR 9422:
  Decode error: image failed to be decoded"}``. Over 10 MiB: ``413`` code ``5413``.
- ``GET /accounts/{account}/images/v1/{id}`` — ``result`` as above; ``404`` code ``5404``.
- ``GET /accounts/{account}/images/v1/stats`` — ``result`` = ``{"count": {"current",
  "allowed"}}``.
- ``GET <delivery>/{account hash}/{id}/{variant}`` — the image bytes (this fake does not
  resize: every variant serves the original).

``fail_next(n, status)`` makes the next ``n`` API requests fail: ``429`` with code ``971``
("Please wait and consider throttling your request speed") or, for 5xx, an HTML error page
as Cloudflare's edge sends it (not JSON).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import unquote, urlsplit

import pytest

from pixelbus.testkit.http_server import FakeApi, QuietHandler, multipart_parts

__all__ = ["CfImage", "CfImagesServer", "cf_images_server"]

_MAX_BYTES = 10 * 1024 * 1024
_MAGIC = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF87a", b"GIF89a")


@dataclass
class CfImage:
    id: str
    filename: str
    data: bytes
    content_type: str
    uploaded: str


def _is_image(data: bytes) -> bool:
    webp = data[:4] == b"RIFF" and data[8:12] == b"WEBP"
    return webp or data.startswith(_MAGIC) or data.lstrip()[:4] == b"<svg"


class CfImagesServer(FakeApi):
    """The fake service; ``account_id`` and ``api_token`` are the credentials it accepts."""

    def __init__(self, *, variants: tuple[str, ...] = ("public", "thumbnail")) -> None:
        super().__init__(_handler(self))
        self.account_id = uuid.uuid4().hex
        self.api_token = f"cf-{uuid.uuid4().hex}"
        self.account_hash = uuid.uuid4().hex[:22]
        self.variants = variants
        self.images: dict[str, CfImage] = {}

    @property
    def api_url(self) -> str:
        return f"{self.url}/client/v4"

    @property
    def delivery_url(self) -> str:
        return f"{self.url}/delivery"

    def result(self, image: CfImage) -> dict[str, Any]:
        base = f"{self.delivery_url}/{self.account_hash}/{image.id}"
        return {
            "id": image.id,
            "filename": image.filename,
            "uploaded": image.uploaded,
            "requireSignedURLs": False,
            "meta": {},
            "variants": [f"{base}/{variant}" for variant in self.variants],
        }


def _answer(result: Any = None, errors: list[tuple[int, str]] | None = None) -> dict[str, Any]:
    return {
        "success": not errors,
        "errors": [{"code": code, "message": message} for code, message in errors or []],
        "messages": [],
        "result": result,
    }


def _form(content_type: str, body: bytes) -> dict[str, tuple[str | None, str, bytes]]:
    """``multipart/form-data`` fields: name -> (filename, content type, bytes)."""
    fields = {}
    for part, data in multipart_parts(content_type, body):
        name = part.get_param("name", header="content-disposition")
        fields[str(name)] = (part.get_filename(), part.get_content_type(), data)
    return fields


def _handler(server: CfImagesServer) -> type[QuietHandler]:
    class Handler(QuietHandler):
        def do_GET(self) -> None:
            self._route(b"")

        def do_POST(self) -> None:
            self._route(self._body())

        def _route(self, body: bytes) -> None:
            path = unquote(urlsplit(self.path).path)
            if path.startswith("/delivery/"):
                self._deliver(path.removeprefix("/delivery/"))
                return
            fault = server._api_request(self.command, path)
            if fault == 429:
                message = "Please wait and consider throttling your request speed"
                self._send(429, _answer(errors=[(971, message)]))
                return
            if fault is not None:
                page = f"<html><body><h1>{fault} Service Unavailable</h1></body></html>"
                self._send(fault, page.encode(), "text/html")
                return
            prefix = "/client/v4/accounts/"
            account, _, rest = path.removeprefix(prefix).partition("/")
            token = (self.headers.get("Authorization") or "").removeprefix("Bearer ")
            if not path.startswith(prefix) or token != server.api_token:
                self._send(401, _answer(errors=[(10000, "Authentication error")]))
                return
            if account != server.account_id:
                self._send(403, _answer(errors=[(10000, "Authentication error")]))
                return
            if rest == "images/v1" and self.command == "POST":
                self._upload(body)
            elif rest == "images/v1/stats" and self.command == "GET":
                count = {"current": len(server.images), "allowed": 100000}
                self._send(200, _answer({"count": count}))
            elif rest.startswith("images/v1/") and self.command == "GET":
                image = server.images.get(rest.removeprefix("images/v1/"))
                if image is None:
                    self._send(404, _answer(errors=[(5404, "Image not found")]))
                else:
                    self._send(200, _answer(server.result(image)))
            else:
                self._send(404, _answer(errors=[(7003, "No route for the URI")]))

        def _upload(self, body: bytes) -> None:
            fields = _form(self.headers.get("Content-Type", ""), body)
            if "file" not in fields:
                self._send(400, _answer(errors=[(5400, "Bad request: no file")]))
                return
            filename, content_type, data = fields["file"]
            if len(data) > _MAX_BYTES:
                self._send(413, _answer(errors=[(5413, "Image too large")]))
                return
            if not _is_image(data):
                message = "Bad request: ERROR 9422: Decode error: image failed to be decoded"
                self._send(400, _answer(errors=[(5400, message)]))
                return
            image_id = fields["id"][2].decode() if "id" in fields else str(uuid.uuid4())
            with server._lock:
                if image_id in server.images:
                    exists = True
                else:
                    exists = False
                    server.images[image_id] = CfImage(
                        image_id,
                        filename or image_id,
                        data,
                        content_type,
                        datetime.now(UTC).isoformat(),
                    )
            if exists:
                self._send(409, _answer(errors=[(5409, "Resource already exists")]))
                return
            self._send(200, _answer(server.result(server.images[image_id])))

        def _deliver(self, path: str) -> None:
            account_hash, _, rest = path.partition("/")
            image_id, _, variant = rest.rpartition("/")
            image = server.images.get(image_id)
            if account_hash != server.account_hash or image is None:
                self._send(404, b"Not found", "text/plain")
                return
            if variant not in server.variants:
                self._send(404, b"Variant not found", "text/plain")
                return
            self._send(200, image.data, image.content_type)

    return Handler


@pytest.fixture
def cf_images_server() -> Iterator[CfImagesServer]:
    """A fake Cloudflare Images API (and delivery) on a random loopback port."""
    with CfImagesServer() as server:
        yield server
