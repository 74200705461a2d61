"""A small Google Cloud Storage server for tests: the JSON API endpoints a client uses,
an OAuth token endpoint, and path-style downloads with V4 signed URLs, on a random
loopback port (``STORAGE_EMULATOR_HOST`` points clients at it).

What it speaks (the shapes of the real service):

- ``POST /token`` — OAuth 2 JWT-bearer grant (``grant_type``, ``assertion``: an RS256 JWT
  signed by a service account's key, ``aud`` = this URL). A known account with a valid
  signature gets ``{"access_token", "expires_in", "token_type": "Bearer"}``; anything else
  ``400 {"error": "invalid_grant", "error_description": …}``.
- ``GET /storage/v1/b/{bucket}`` — the bucket resource; ``404`` if there is none.
- ``POST /upload/storage/v1/b/{bucket}/o?uploadType=media&name=…`` (body = the bytes),
  ``uploadType=multipart`` (``multipart/related``: JSON metadata, then the bytes) and
  ``uploadType=resumable`` (JSON metadata; answer ``Location`` = session URI; then ``PUT``
  the bytes to it, whole or in ``Content-Range`` pieces, ``308`` until the last) — each
  answering the object resource (``name``, ``bucket``, ``generation``, ``size``,
  ``contentType``, ``cacheControl``, ``md5Hash``).
- ``GET /storage/v1/b/{bucket}/o/{name}`` — the object resource.
- ``GET /{bucket}/{name}`` — the bytes: to anyone when the bucket is public, else only with
  a valid ``GOOG4-RSA-SHA256`` signed URL (``403 SignatureDoesNotMatch`` / ``ExpiredToken``
  XML errors otherwise).

Requests to the API need ``Authorization: Bearer <token this server issued>`` unless the
server runs with ``require_auth=False`` (as emulators do); without one: ``401``, with an
account that may only read: ``403``. Errors are ``{"error": {"code", "message",
"errors": [{"reason", "message"}]}}``. ``fail_next(n, status)`` makes the next ``n`` API
requests fail with ``status`` (as a throttled or failing service does).
"""

from __future__ import annotations

import base64
import hashlib
import json
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlsplit

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from pixelbus.testkit.http_server import FakeApi, QuietHandler, multipart_parts

__all__ = ["GcsObject", "GcsServer", "gcs_server"]


@dataclass
class GcsObject:
    data: bytes
    content_type: str
    cache_control: str | None
    generation: int


@dataclass
class _Account:
    email: str
    public_key: rsa.RSAPublicKey
    can_write: bool


@dataclass
class _Resumable:
    bucket: str
    name: str
    content_type: str
    cache_control: str | None
    received: bytearray = field(default_factory=bytearray)


class GcsServer(FakeApi):
    """The fake GCS service; use as a context manager (or the ``gcs_server`` fixture)."""

    def __init__(self, *, require_auth: bool = True) -> None:
        super().__init__(_handler(self))
        self.require_auth = require_auth
        self.objects: dict[tuple[str, str], GcsObject] = {}
        self.buckets: dict[str, bool] = {}  # name -> public
        self.grants = 0  # token requests, granted or not
        self._accounts: dict[str, _Account] = {}
        self._tokens: dict[str, _Account] = {}
        self._sessions: dict[str, _Resumable] = {}
        self._generation = 0

    @property
    def token_uri(self) -> str:
        return f"{self.url}/token"

    # -- arranging ---------------------------------------------------------------------

    def create_bucket(self, name: str | None = None, *, public: bool = True) -> str:
        bucket = name or f"test-{uuid.uuid4().hex[:16]}"
        with self._lock:
            self.buckets[bucket] = public
        return bucket

    def service_account(
        self, directory: Path, *, can_write: bool = True, registered: bool = True
    ) -> Path:
        """Write a service-account credentials file whose tokens come from this server.

        ``registered=False`` makes a key this server does not know (refused credentials).
        """
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        email = f"sa-{uuid.uuid4().hex[:8]}@pixelbus-test.iam.gserviceaccount.com"
        if registered:
            with self._lock:
                self._accounts[email] = _Account(email, key.public_key(), can_write)
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ).decode()
        path = directory / f"{email.split('@')[0]}.json"
        path.write_text(
            json.dumps(
                {
                    "type": "service_account",
                    "project_id": "pixelbus-test",
                    "private_key_id": uuid.uuid4().hex,
                    "private_key": pem,
                    "client_email": email,
                    "client_id": "1",
                    "token_uri": self.token_uri,
                }
            )
        )
        return path

    def _grant(self, form: dict[str, list[str]]) -> tuple[int, dict[str, Any]]:
        with self._lock:
            self.grants += 1
        if form.get("grant_type") != ["urn:ietf:params:oauth:grant-type:jwt-bearer"]:
            return 400, {"error": "unsupported_grant_type"}
        try:
            header_b64, claims_b64, signature_b64 = form["assertion"][0].split(".")
            claims = json.loads(_b64decode(claims_b64))
            account = self._accounts[claims["iss"]]
            account.public_key.verify(
                _b64decode(signature_b64),
                f"{header_b64}.{claims_b64}".encode(),
                padding.PKCS1v15(),
                hashes.SHA256(),
            )
        except (KeyError, ValueError, InvalidSignature):
            return 400, {"error": "invalid_grant", "error_description": "Invalid JWT Signature."}
        if claims.get("aud") != self.token_uri or claims.get("exp", 0) < time.time():
            return 400, {"error": "invalid_grant", "error_description": "Invalid JWT."}
        token = f"ya29.{uuid.uuid4().hex}"
        with self._lock:
            self._tokens[token] = account
        return 200, {"access_token": token, "expires_in": 3600, "token_type": "Bearer"}

    def _authorise(self, authorization: str | None, write: bool) -> tuple[int, str] | None:
        if not self.require_auth:
            return None
        token = (authorization or "").removeprefix("Bearer ").strip()
        account = self._tokens.get(token)
        if account is None:
            return 401, "Invalid Credentials"
        if write and not account.can_write:
            return 403, f"{account.email} does not have storage.objects.create access"
        return None

    def _store(
        self, bucket: str, name: str, data: bytes, content_type: str, cache_control: str | None
    ) -> dict[str, Any]:
        with self._lock:
            self._generation += 1
            obj = GcsObject(data, content_type, cache_control, self._generation)
            self.objects[(bucket, name)] = obj
        return _resource(bucket, name, obj)

    def _verify_signed(self, path: str, query: str, host: str) -> tuple[int, str] | None:
        params = {k: v[0] for k, v in parse_qs(query, keep_blank_values=True).items()}
        signature = params.pop("X-Goog-Signature", None)
        if signature is None:
            return 403, "AccessDenied"
        email = params.get("X-Goog-Credential", "").split("/")[0]
        account = self._accounts.get(email)
        canonical_query = "&".join(
            f"{quote(k, safe='')}={quote(v, safe='')}" for k, v in sorted(params.items())
        )
        canonical = "\n".join(
            ["GET", path, canonical_query, f"host:{host}\n", "host", "UNSIGNED-PAYLOAD"]
        )
        scope = params.get("X-Goog-Credential", "").split("/", 1)[-1]
        to_sign = "\n".join(
            [
                "GOOG4-RSA-SHA256",
                params.get("X-Goog-Date", ""),
                scope,
                hashlib.sha256(canonical.encode()).hexdigest(),
            ]
        )
        try:
            if account is None:
                raise InvalidSignature
            account.public_key.verify(
                bytes.fromhex(signature), to_sign.encode(), padding.PKCS1v15(), hashes.SHA256()
            )
        except (InvalidSignature, ValueError):
            return 403, "SignatureDoesNotMatch"
        signed_at = datetime.strptime(params["X-Goog-Date"], "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
        if (datetime.now(UTC) - signed_at).total_seconds() > int(params["X-Goog-Expires"]):
            return 400, "ExpiredToken"
        return None


def _b64decode(value: str) -> bytes:
    return base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))


def _resource(bucket: str, name: str, obj: GcsObject) -> dict[str, Any]:
    resource = {
        "kind": "storage#object",
        "id": f"{bucket}/{name}/{obj.generation}",
        "name": name,
        "bucket": bucket,
        "generation": str(obj.generation),
        "contentType": obj.content_type,
        "size": str(len(obj.data)),
        "md5Hash": base64.b64encode(hashlib.md5(obj.data).digest()).decode(),  # noqa: S324
    }
    if obj.cache_control:
        resource["cacheControl"] = obj.cache_control
    return resource


def _error(status: int, message: str, reason: str = "error") -> dict[str, Any]:
    return {
        "error": {
            "code": status,
            "message": message,
            "errors": [{"reason": reason, "message": message, "domain": "global"}],
        }
    }


def _handler(server: GcsServer) -> type[QuietHandler]:
    class Handler(QuietHandler):
        def _xml_error(self, status: int, code: str) -> None:
            body = f"<?xml version='1.0' encoding='UTF-8'?><Error><Code>{code}</Code></Error>"
            self._send(status, body.encode(), "application/xml")

        def do_POST(self) -> None:
            body = self._body()
            parts = urlsplit(self.path)
            if parts.path == "/token":
                status, answer = server._grant(parse_qs(body.decode()))
                self._send(status, answer)
                return
            self._api(parts.path, parts.query, body)

        def do_PUT(self) -> None:
            body = self._body()
            parts = urlsplit(self.path)
            self._api(parts.path, parts.query, body)

        def do_GET(self) -> None:
            parts = urlsplit(self.path)
            if parts.path.startswith(("/storage/", "/upload/")):
                self._api(parts.path, parts.query, b"")
                return
            self._download(parts.path, parts.query)

        def _download(self, path: str, query: str) -> None:
            bucket, _, name = path.lstrip("/").partition("/")
            obj = server.objects.get((bucket, unquote(name)))
            if not server.buckets.get(bucket, False) or "X-Goog-Signature" in query:
                refused = server._verify_signed(path, query, self.headers.get("Host", ""))
                if refused is not None:
                    self._xml_error(*refused)
                    return
            if obj is None:
                self._xml_error(404, "NoSuchKey")
                return
            headers = {"Cache-Control": obj.cache_control} if obj.cache_control else {}
            self._send(200, obj.data, obj.content_type, headers)

        def _api(self, path: str, query: str, body: bytes) -> None:
            fault = server._api_request(self.command, path)
            if fault is not None:
                self._send(fault, _error(fault, "Injected failure", "backendError"))
                return
            write = self.command in ("POST", "PUT")
            refused = server._authorise(self.headers.get("Authorization"), write)
            if refused is not None:
                status, message = refused
                reason = "authError" if status == 401 else "forbidden"
                self._send(status, _error(status, message, reason))
                return
            params = {k: v[0] for k, v in parse_qs(query).items()}
            segments = path.strip("/").split("/")
            # /storage/v1/b/{bucket}[/o/{name}]   /upload/storage/v1/b/{bucket}/o
            if segments[0] == "upload":
                segments = segments[1:]
            prefix, bucket = segments[:3], segments[3] if len(segments) > 3 else ""
            uploading = path.startswith("/upload/")
            if bucket not in server.buckets:
                self._send(404, _error(404, "The specified bucket does not exist.", "notFound"))
                return
            if prefix != ["storage", "v1", "b"]:
                self._send(404, _error(404, f"Not Found: {self.command} {path}", "notFound"))
            elif uploading and self.command == "POST":
                self._upload(bucket, params, body)
            elif uploading and self.command == "PUT":
                self._resume(params.get("upload_id", ""), body)
            elif len(segments) == 4:
                self._send(200, {"kind": "storage#bucket", "name": bucket, "id": bucket})
            elif len(segments) >= 6 and segments[4] == "o":
                name = unquote("/".join(segments[5:]))
                obj = server.objects.get((bucket, name))
                if obj is None:
                    self._send(404, _error(404, f"No such object: {bucket}/{name}", "notFound"))
                else:
                    self._send(200, _resource(bucket, name, obj))
            else:
                self._send(404, _error(404, f"Not Found: {self.command} {path}", "notFound"))

        def _upload(self, bucket: str, params: dict[str, str], body: bytes) -> None:
            kind = params.get("uploadType")
            content_type = self.headers.get("Content-Type", "application/octet-stream")
            if kind == "media":
                self._send(200, server._store(bucket, params["name"], body, content_type, None))
            elif kind == "multipart":
                # multipart/related: the JSON metadata, then the bytes
                (_, meta_bytes), (part, data) = multipart_parts(content_type, body)
                meta = json.loads(meta_bytes)
                name = meta.get("name") or params.get("name", "")
                data_type = part.get_content_type()
                answer = server._store(bucket, name, data, data_type, meta.get("cacheControl"))
                self._send(200, answer)
            elif kind == "resumable":
                meta = json.loads(body or b"{}")
                upload_id = uuid.uuid4().hex
                with server._lock:
                    server._sessions[upload_id] = _Resumable(
                        bucket,
                        meta.get("name") or params.get("name", ""),
                        self.headers.get("X-Upload-Content-Type", "application/octet-stream"),
                        meta.get("cacheControl"),
                    )
                location = (
                    f"{server.url}/upload/storage/v1/b/{bucket}/o"
                    f"?uploadType=resumable&upload_id={upload_id}"
                )
                self._send(200, b"", headers={"Location": location})
            else:
                self._send(400, _error(400, f"Unknown uploadType {kind!r}", "invalid"))

        def _resume(self, upload_id: str, body: bytes) -> None:
            session = server._sessions.get(upload_id)
            if session is None:
                self._send(404, _error(404, "No such upload session", "notFound"))
                return
            session.received += body
            content_range = self.headers.get("Content-Range", "")
            total = content_range.rpartition("/")[2]
            if content_range and total != "*" and len(session.received) < int(total):
                last = len(session.received) - 1
                self._send(308, b"", headers={"Range": f"bytes=0-{last}"})
                return
            with server._lock:
                server._sessions.pop(upload_id, None)
            answer = server._store(
                session.bucket,
                session.name,
                bytes(session.received),
                session.content_type,
                session.cache_control,
            )
            self._send(200, answer)

    return Handler


@pytest.fixture
def gcs_server() -> Iterator[GcsServer]:
    """A fake GCS service on a random loopback port, checking OAuth tokens."""
    with GcsServer() as server:
        yield server
