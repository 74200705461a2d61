"""A local HTTP server for model files (the face-swap worker's downloads): Range requests
(206), and faults on demand."""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from pixelbus.testkit.http_server import LoopbackHttpServer, QuietHandler

__all__ = ["ModelServer", "model_server"]


@dataclass
class ModelServer:
    files: dict[str, bytes]
    url: str = ""
    ranges: list[str | None] = field(default_factory=list)
    sent: list[int] = field(default_factory=list)
    honour_range: bool = True
    cut_after: int | None = None  # close the connection after this many body bytes, once


@contextmanager
def model_server(files: dict[str, bytes]) -> Iterator[ModelServer]:
    state = ModelServer(dict(files))

    class Handler(QuietHandler):
        def do_GET(self) -> None:
            name = self.path.lstrip("/")
            state.ranges.append(self.headers.get("Range"))
            body = state.files.get(name)
            if body is None:
                self.send_error(404)
                return
            start = 0
            match = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or "")
            if match and state.honour_range:
                start = int(match.group(1))
                if start >= len(body):
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{len(body)}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
            else:
                self.send_response(200)
            payload = body[start:]
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            if state.cut_after is not None:
                payload = payload[: state.cut_after]
                state.cut_after = None
                self.close_connection = True
            self.wfile.write(payload)
            state.sent.append(len(payload))

    with LoopbackHttpServer(Handler) as server:
        state.url = f"{server.url}/models"
        yield state
