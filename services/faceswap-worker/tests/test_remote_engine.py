"""The remote engine against a real local HTTP server that misbehaves on demand."""

from __future__ import annotations

import base64
import io
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
from PIL import Image

from conftest import Photos
from pixelbus.faceswap_worker.engines import NoFaceFound, SwapOptions
from pixelbus.faceswap_worker.engines.errors import RemoteEngineError
from pixelbus.faceswap_worker.engines.remote import RemoteEngine


@dataclass
class Service:
    url: str = ""
    script: dict[str, list[str]] = field(default_factory=dict)
    """Per path, what to do for each request in turn (the last one repeats): ok, hang,
    503, 422, json."""
    seen: list[str] = field(default_factory=list)
    bodies: list[dict[str, object]] = field(default_factory=list)
    release: threading.Event = field(default_factory=threading.Event)


def png(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


RESULT = np.full((40, 30, 3), (10, 200, 30), np.uint8)
SERVER_FIXTURES = frozenset({"service"})  # an HTTP server: the test kit marks the tests `servers`


@pytest.fixture
def service() -> Iterator[Service]:
    state = Service()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def _step(self) -> str:
            steps = state.script.get(self.path, ["ok"])
            count = sum(1 for p in state.seen if p == self.path)
            state.seen.append(self.path)
            return steps[min(count, len(steps) - 1)]

        def _answer(self, status: int, body: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _act(self, step: str) -> None:
            if step == "hang":
                state.release.wait(10)  # longer than the client's timeout
                return
            if step == "503":
                self._answer(503, b"busy", "text/plain")
            elif step == "422":
                body = {"code": "no_face_found", "which": "source", "detail": "no face"}
                self._answer(422, json.dumps(body).encode(), "application/json")
            elif step == "400":
                self._answer(
                    400, json.dumps({"detail": "bad options"}).encode(), "application/json"
                )
            elif step == "json":
                body = {"image": base64.b64encode(png(RESULT)).decode()}
                self._answer(200, json.dumps(body).encode(), "application/json")
            elif self.path == "/swap":
                self._answer(200, png(RESULT), "image/png")
            else:
                self._answer(200, b'{"status": "ok"}', "application/json")

        def do_GET(self) -> None:
            self._act(self._step())

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length", 0))
            state.bodies.append(json.loads(self.rfile.read(length)))
            self._act(self._step())

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        state.release.set()
        server.shutdown()
        server.server_close()
        thread.join()


def engine_for(service: Service, delays: list[float], retries: int = 3) -> RemoteEngine:
    return RemoteEngine(
        service.url, timeout_s=0.3, retry_count=retries, backoff_s=0.5, sleep=delays.append
    )


def test_a_healthy_service_completes_the_swap(service: Service, photos: Photos) -> None:
    delays: list[float] = []
    engine = engine_for(service, delays)
    result = engine.swap(photos.astronaut, photos.hopper, SwapOptions(target_face_index=0))
    assert np.array_equal(result, RESULT)
    assert service.seen == ["/health", "/swap"] and delays == []
    sent = service.bodies[0]
    assert sent["target_face_index"] == 0 and sent["source_face_index"] is None
    decoded = np.array(Image.open(io.BytesIO(base64.b64decode(str(sent["target_image"])))))
    assert np.array_equal(decoded, photos.hopper)
    engine.swap(photos.astronaut, photos.hopper, SwapOptions())
    assert service.seen.count("/health") == 1  # health is cached for a while


def test_a_timing_out_service_is_retried_with_backoff_then_given_up(
    service: Service, photos: Photos
) -> None:
    service.script["/swap"] = ["hang"]
    delays: list[float] = []
    engine = engine_for(service, delays, retries=3)
    with pytest.raises(RemoteEngineError, match="failed 4 times, last: timed out") as exc:
        engine.swap(photos.astronaut, photos.hopper, SwapOptions())
    assert exc.value.retryable and exc.value.code == "remote_unavailable"
    assert service.seen.count("/swap") == 4
    assert delays == [0.5, 1.0, 2.0]


def test_5xx_then_success(service: Service, photos: Photos) -> None:
    service.script["/swap"] = ["503", "503", "json"]
    delays: list[float] = []
    result = engine_for(service, delays).swap(photos.astronaut, photos.hopper, SwapOptions())
    assert np.array_equal(result, RESULT)
    assert delays == [0.5, 1.0]


def test_an_unhealthy_service_is_not_asked_to_swap(service: Service, photos: Photos) -> None:
    service.script["/health"] = ["503"]
    delays: list[float] = []
    with pytest.raises(RemoteEngineError, match="health check failed 2 times") as exc:
        engine_for(service, delays, retries=1).swap(photos.astronaut, photos.hopper, SwapOptions())
    assert exc.value.retryable
    assert "/swap" not in service.seen


def test_4xx_is_permanent_and_no_face_keeps_its_meaning(service: Service, photos: Photos) -> None:
    delays: list[float] = []
    service.script["/swap"] = ["400"]
    with pytest.raises(RemoteEngineError, match="bad options") as exc:
        engine_for(service, delays).swap(photos.astronaut, photos.hopper, SwapOptions())
    assert not exc.value.retryable and exc.value.code == "remote_refused"
    service.script["/swap"] = ["422"]
    service.seen.clear()
    with pytest.raises(NoFaceFound, match="source"):
        engine_for(service, delays).swap(photos.astronaut, photos.hopper, SwapOptions())
    assert delays == []
