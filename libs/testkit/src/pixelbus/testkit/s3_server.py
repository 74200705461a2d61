"""A real S3-compatible server for tests: moto in server mode, in its own process.

``start_s3_server()`` runs moto's WSGI app in a subprocess that binds port 0 and prints the
port it got (no race for a "free" port). Like real S3 and R2 it checks every request's
SigV4 signature: the server starts open, we create an admin IAM user, then switch moto's
IAM checks on, so from then on only requests signed with known keys get through (unknown
key → 403 ``InvalidAccessKeyId``, wrong secret → 403 ``SignatureDoesNotMatch``, a user
without the permission → 403 ``AccessDenied``).

``FaultyProxy`` sits in front of any HTTP server and answers the first N requests itself
(an S3 error document with a 5xx status, or no answer at all), then forwards, so that
callers' handling of server faults is tested over real HTTP. It can start and stop
failing while it runs (``fail_next``, ``heal``), delay what it forwards (a slow server),
and counts what a fault test asserts on: requests open now and at most, per path too.
"""

from __future__ import annotations

import http.client
import json
import os
import select
import selectors
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from pixelbus.testkit.http_server import LoopbackHttpServer, QuietHandler
from pixelbus.testkit.nats_server import stop_processes

__all__ = [
    "FaultyProxy",
    "S3Credentials",
    "S3Server",
    "s3_bucket",
    "s3_server",
    "start_s3_server",
]

_HOST = "127.0.0.1"
_REGION = "us-east-1"


@dataclass(frozen=True)
class S3Credentials:
    access_key_id: str
    secret_access_key: str


@dataclass(frozen=True)
class S3Server:
    """A running moto server; ``credentials`` belong to an IAM user allowed everything."""

    endpoint_url: str
    credentials: S3Credentials

    def client(self, service: str = "s3") -> Any:
        """A synchronous boto3 client for this server (for arranging and checking tests)."""
        import boto3
        from botocore.config import Config

        return boto3.client(
            service,
            endpoint_url=self.endpoint_url,
            region_name=_REGION,
            aws_access_key_id=self.credentials.access_key_id,
            aws_secret_access_key=self.credentials.secret_access_key,
            config=Config(retries={"total_max_attempts": 1}, s3={"addressing_style": "path"}),
        )

    def create_bucket(self, name: str | None = None) -> str:
        """Create a bucket (a unique name unless given) and return its name."""
        bucket = name or f"test-{uuid.uuid4().hex[:16]}"
        self.client().create_bucket(Bucket=bucket)
        return bucket

    def create_user(self, actions: tuple[str, ...] = ("s3:*",)) -> S3Credentials:
        """A new IAM user allowed only ``actions`` (none if empty), and its access key."""
        return _create_user(self.client("iam"), actions)


def _create_user(iam: Any, actions: tuple[str, ...]) -> S3Credentials:
    user = f"user-{uuid.uuid4().hex[:12]}"
    iam.create_user(UserName=user)
    if actions:
        policy = {
            "Version": "2012-10-17",
            "Statement": [{"Effect": "Allow", "Action": list(actions), "Resource": "*"}],
        }
        iam.put_user_policy(UserName=user, PolicyName="access", PolicyDocument=json.dumps(policy))
    key = iam.create_access_key(UserName=user)["AccessKey"]
    return S3Credentials(key["AccessKeyId"], key["SecretAccessKey"])


# Run in the subprocess with ``python -c``: it imports only moto and werkzeug (not this
# module, which pulls in pytest), binds port 0 and prints the port it got. The handler
# leaves the ``Server`` header to moto: werkzeug adding its own makes two, which strict
# HTTP parsers (aiohttp's pure-Python one) refuse.
_SERVE_MOTO = """
import logging
from moto.moto_server.werkzeug_app import (
    DomainDispatcherApplication, MotoRequestHandler, create_backend_app)
from werkzeug.serving import make_server

class Handler(MotoRequestHandler):
    def send_response(self, code, message=None):
        self.log_request(code)
        self.send_response_only(code, message)
        self.send_header("Date", self.date_time_string())

logging.getLogger("werkzeug").setLevel(logging.WARNING)
app = DomainDispatcherApplication(create_backend_app)
server = make_server(%r, 0, app, threaded=True, request_handler=Handler)
print(server.port, flush=True)
server.serve_forever()
"""


def _read_port(proc: subprocess.Popen[str], deadline: float) -> int:
    assert proc.stdout is not None
    with selectors.DefaultSelector() as selector:
        selector.register(proc.stdout, selectors.EVENT_READ)
        while time.monotonic() < deadline:
            if selector.select(timeout=deadline - time.monotonic()):
                line = proc.stdout.readline()
                if line.strip().isdigit():
                    return int(line)
                if not line:  # EOF: the process died before binding
                    break
    raise RuntimeError("moto server did not report its port")


def _wait_until_answering(endpoint_url: str, proc: subprocess.Popen[str], deadline: float) -> None:
    with httpx.Client(timeout=1.0) as client:
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                client.get(f"{endpoint_url}/moto-api/data.json")
            except httpx.TransportError:
                time.sleep(0.05)  # poll interval, bounded by the deadline
            else:
                return
    raise RuntimeError(f"moto server at {endpoint_url} did not answer")


def _enforce_auth(endpoint_url: str) -> S3Credentials:
    """Create an allow-all IAM user while the server is open, then require signatures."""
    import boto3

    iam = boto3.client(
        "iam",
        endpoint_url=endpoint_url,
        region_name=_REGION,
        aws_access_key_id="bootstrap",
        aws_secret_access_key="bootstrap",  # noqa: S106 - not checked until auth is on
    )
    credentials = _create_user(iam, ("*",))
    response = httpx.post(f"{endpoint_url}/moto-api/reset-auth", content=b"0")
    response.raise_for_status()
    return credentials


@contextmanager
def start_s3_server(*, startup_timeout: float = 30.0) -> Iterator[S3Server]:
    """Run a moto S3 server in a subprocess for the duration of the ``with`` block."""
    env = {**os.environ, "MOTO_CALL_RESET_API": "false", "PYTHONUNBUFFERED": "1"}
    with tempfile.TemporaryFile(mode="w+") as stderr:
        proc = subprocess.Popen(
            [sys.executable, "-c", _SERVE_MOTO % _HOST],
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
            env=env,
        )
        try:
            deadline = time.monotonic() + startup_timeout
            try:
                port = _read_port(proc, deadline)
                endpoint_url = f"http://{_HOST}:{port}"
                _wait_until_answering(endpoint_url, proc, deadline)
            except RuntimeError as exc:
                stderr.seek(0)
                raise RuntimeError(f"{exc}; its stderr:\n{stderr.read()[-4000:]}") from None
            yield S3Server(endpoint_url=endpoint_url, credentials=_enforce_auth(endpoint_url))
        finally:
            stop_processes(proc)
            if proc.stdout is not None:
                proc.stdout.close()


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    """One moto S3 server for the test session (use a fresh bucket per test)."""
    with start_s3_server() as server:
        yield server


@pytest.fixture
def s3_bucket(s3_server: S3Server) -> str:
    """A new, empty bucket on the session's S3 server."""
    return s3_server.create_bucket()


class FaultyProxy(LoopbackHttpServer):
    """An HTTP proxy that answers the first ``fail_first`` requests itself, then forwards.

    ``hang=True`` makes those requests get no answer (a server that stopped responding):
    each is held until its client gives up and closes the connection, or the proxy
    closes; otherwise they get ``status`` with an S3 error document. ``fail_next(n)``
    makes the next ``n`` requests fail too (all of them by default) and ``heal()`` stops
    failing new ones, at any time while it runs. ``delay_s`` holds every forwarded request
    that long first (a slow server). The ``Host`` header is forwarded unchanged, so SigV4
    signatures made for the proxy's address stay valid upstream.

    Counts: ``requests`` and ``faults`` (all time); ``open`` (requests being answered or
    held now), ``max_open`` and ``max_open_per_path`` (the most at once, in all and for
    one path: two at once on a key means it was being written twice); ``abandoned``
    (hung requests whose client gave up); ``forwarded`` (requests answered by the
    upstream, by ``"METHOD path"``).
    """

    def __init__(
        self,
        upstream_url: str,
        *,
        fail_first: int = 0,
        status: int = 503,
        hang: bool = False,
        delay_s: float = 0.0,
    ) -> None:
        upstream = urlsplit(upstream_url)
        if upstream.scheme != "http" or upstream.hostname is None:
            raise ValueError(f"FaultyProxy forwards to http:// URLs only, not {upstream_url!r}")
        self._upstream = (upstream.hostname, upstream.port or 80)
        self.fail_first = fail_first
        self.status = status
        self.hang = hang
        self.delay_s = delay_s
        self.requests = 0
        self.faults = 0
        self.open = 0
        self.max_open = 0
        self.max_open_per_path = 0
        self.abandoned = 0
        self.forwarded: Counter[str] = Counter()
        self._open_paths: Counter[str] = Counter()
        self._held: dict[socket.socket, str] = {}  # hung requests not counted out yet
        self._lock = threading.Lock()
        self._closing = threading.Event()
        super().__init__(self._handler_class())

    @property
    def endpoint_url(self) -> str:
        return self.url

    def close(self) -> None:
        self._closing.set()  # first: hung and delayed requests let go
        super().close()

    def fail_next(self, count: int = sys.maxsize) -> None:
        """Fail the next ``count`` requests (every one until ``heal`` by default)."""
        with self._lock:
            self.fail_first = self.faults + count

    def heal(self) -> None:
        """Forward every new request from now on; requests already hung stay hung."""
        with self._lock:
            self.fail_first = self.faults

    def _opened(self, path: str) -> bool:
        """Count a request in; whether it is one to fail. Held requests whose client has
        gone are counted out first: a client that gave one up and sent another at once
        (its slot freed) must not look like one more request open at the same time."""
        with self._lock:
            for connection in list(self._held):
                readable, _, _ = select.select([connection], [], [], 0)
                if readable and not _still_open(connection):
                    self._release(connection, abandoned=True)
            self.requests += 1
            self.open += 1
            self.max_open = max(self.max_open, self.open)
            self._open_paths[path] += 1
            self.max_open_per_path = max(self.max_open_per_path, self._open_paths[path])
            if self.faults < self.fail_first:
                self.faults += 1
                return True
            return False

    def _closed(self, path: str) -> None:
        with self._lock:
            self._count_out(path)

    def _count_out(self, path: str) -> None:
        self.open -= 1
        self._open_paths[path] -= 1
        if not self._open_paths[path]:
            del self._open_paths[path]

    def _release(self, connection: socket.socket, *, abandoned: bool) -> None:
        """Count a held request out (under the lock), once."""
        path = self._held.pop(connection, None)
        if path is not None:
            self.abandoned += abandoned
            self._count_out(path)

    def _hold(self, connection: socket.socket, path: str) -> None:
        """Answer nothing until the client closes the connection or the proxy closes;
        the request is counted out then (or earlier, by ``_opened``)."""
        with self._lock:
            self._held[connection] = path
        try:
            while not self._closing.is_set():
                with self._lock:
                    if connection not in self._held:
                        return  # counted out by ``_opened``
                readable, _, _ = select.select([connection], [], [], 0.02)
                if readable and not _still_open(connection):
                    with self._lock:
                        self._release(connection, abandoned=True)
                    return
        finally:
            with self._lock:
                self._release(connection, abandoned=False)

    def _handler_class(self) -> type[QuietHandler]:
        proxy = self

        class Handler(QuietHandler):
            def send_response(self, code: int, message: str | None = None) -> None:
                # No ``Server`` header of our own: the upstream's is forwarded.
                self.send_response_only(code, message)
                self.send_header("Date", self.date_time_string())

            def _handle(self) -> None:
                path = urlsplit(self.path).path
                fault = proxy._opened(path)
                held = False
                try:
                    body = self._body()
                    if fault and proxy.hang:
                        held = True
                        proxy._hold(self.connection, path)  # counts the request out
                        self.close_connection = True
                    elif fault:
                        self._answer(
                            proxy.status, {"Content-Type": "application/xml"}, _error(proxy.status)
                        )
                    else:
                        if proxy.delay_s and proxy._closing.wait(proxy.delay_s):
                            self.close_connection = True
                            return
                        self._forward(body)
                finally:
                    if not held:
                        proxy._closed(path)

            def _forward(self, body: bytes) -> None:
                conn = http.client.HTTPConnection(*proxy._upstream, timeout=30)
                try:
                    headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP}
                    conn.request(self.command, self.path, body=body, headers=headers)
                    response = conn.getresponse()
                    data = response.read()
                    upstream_headers = {
                        k: v for k, v in response.getheaders() if k.lower() not in _HOP
                    }
                finally:
                    conn.close()
                with proxy._lock:
                    proxy.forwarded[f"{self.command} {urlsplit(self.path).path}"] += 1
                self._answer(response.status, upstream_headers, data)

            def _answer(self, status: int, headers: dict[str, str], body: bytes) -> None:
                self.send_response(status)
                length = str(len(body))
                for key, value in headers.items():
                    if key.lower() != "content-length":
                        self.send_header(key, value)
                    elif self.command == "HEAD":  # a HEAD answer has the GET's length
                        length = value
                self.send_header("Content-Length", length)
                self.send_header("Connection", "close")  # no idle keep-alive threads
                self.close_connection = True
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle

        return Handler


def _still_open(connection: socket.socket) -> bool:
    """Whether a readable connection's client is still there (no EOF, no reset)."""
    try:
        return bool(connection.recv(1, socket.MSG_PEEK))
    except OSError:
        return False


_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "transfer-encoding",
        "te",
        "trailer",
        "upgrade",
        "expect",
        "proxy-connection",
    }
)


def _error(status: int) -> bytes:
    code = {503: "SlowDown", 500: "InternalError", 429: "TooManyRequests"}.get(
        status, "InternalError"
    )
    return (
        f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code>'
        f"<Message>injected by FaultyProxy</Message></Error>"
    ).encode()
