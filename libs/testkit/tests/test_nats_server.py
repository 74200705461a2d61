"""The test kit's nats-server: a first start survives its port being taken by another
process (between ``free_port`` and the server's bind, as happens on a busy CI machine); a
restart keeps its ports, so a taken port is an error there."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from pixelbus.testkit.nats_server import NatsServer

pytestmark = [pytest.mark.timeout(30), pytest.mark.servers]


@contextmanager
def _taken(port: int) -> Iterator[None]:
    """Another process's listener on ``port``."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))
        sock.listen()
        yield


def _answers(server: NatsServer) -> bool:
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        return sock.recv(4).startswith(b"INFO")


def test_a_first_start_moves_to_free_ports_when_its_own_were_taken(tmp_path: Path) -> None:
    server = NatsServer(tmp_path)
    first_port, first_monitor = server.port, server.monitor_port
    with _taken(first_monitor), server:
        assert server.monitor_port != first_monitor and server.port != first_port
        assert _answers(server)
    assert b"address already in use" in server.log_file.read_bytes()  # it did collide


def test_a_restart_keeps_its_port_and_says_when_it_is_taken(tmp_path: Path) -> None:
    server = NatsServer(tmp_path)
    with server:
        port = server.port
        server.kill()
        with _taken(server.monitor_port), pytest.raises(RuntimeError, match="exited"):
            server.start()
        assert server.port == port
        server.start()
        assert server.port == port and _answers(server)
