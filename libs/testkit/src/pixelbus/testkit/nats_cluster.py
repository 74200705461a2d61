"""A 3-node JetStream cluster of real ``nats-server`` processes on loopback, for fault tests.

Each node has its own random client, cluster (route) and monitoring ports and its own
temp store, and lists every node as a route, as a Kubernetes StatefulSet would. ``start``
returns once every node says JetStream is ready (``/healthz``: the meta group has a
leader and the node is current); ``kill(name)`` SIGKILLs one node (a crash, no clean
shutdown), ``restart(name)`` brings it back on the same ports and store.

``stop`` ends every process, also those of a failed ``start``: the fixture calls it in a
``finally``, so no server outlives its test.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from pixelbus.testkit.nats_server import find_nats_server, free_port

__all__ = ["ClusterNode", "NatsCluster", "nats_cluster"]


@dataclass
class ClusterNode:
    name: str
    store_dir: Path
    port: int = field(default_factory=free_port)
    cluster_port: int = field(default_factory=free_port)
    monitor_port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    @property
    def monitor_url(self) -> str:
        return f"http://127.0.0.1:{self.monitor_port}"

    @property
    def config_file(self) -> Path:
        return self.store_dir / "nats.conf"

    @property
    def log_file(self) -> Path:
        return self.store_dir / "nats-server.log"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None


class NatsCluster:
    def __init__(
        self,
        base_dir: Path,
        *,
        size: int = 3,
        name: str = "pixelbus-test",
        binary: str | None = None,
    ) -> None:
        if size < 1:
            raise ValueError("a cluster needs at least one node")
        self.name = name
        self.binary = binary or find_nats_server()
        self.nodes = [
            ClusterNode(f"n{index + 1}", base_dir / f"n{index + 1}") for index in range(size)
        ]

    @property
    def urls(self) -> list[str]:
        return [node.url for node in self.nodes]

    @property
    def url(self) -> str:
        """The first node's URL; clients learn the others from the cluster."""
        return self.nodes[0].url

    def node(self, name: str) -> ClusterNode:
        for node in self.nodes:
            if node.name == name:
                return node
        raise KeyError(name)

    def _write_config(self, node: ClusterNode) -> None:
        node.store_dir.mkdir(parents=True, exist_ok=True)
        routes = ", ".join(f'"nats-route://127.0.0.1:{n.cluster_port}"' for n in self.nodes)
        node.config_file.write_text(
            f"""
server_name: {node.name}
listen: "127.0.0.1:{node.port}"
http: "127.0.0.1:{node.monitor_port}"
jetstream {{
  store_dir: "{node.store_dir / "jetstream"}"
  max_memory_store: 256MB
  max_file_store: 2GB
}}
cluster {{
  name: {self.name}
  listen: "127.0.0.1:{node.cluster_port}"
  routes: [{routes}]
}}
"""
        )

    def _spawn(self, node: ClusterNode) -> None:
        self._write_config(node)
        node.process = subprocess.Popen(
            [self.binary, "-c", str(node.config_file), "-l", str(node.log_file)],
            stdin=subprocess.DEVNULL,
        )

    def start(self, *, timeout_s: float = 30) -> None:
        try:
            for node in self.nodes:
                self._spawn(node)
            self.wait_ready(timeout_s=timeout_s)
        except BaseException:
            self.stop()
            raise

    def wait_ready(self, *, timeout_s: float = 30) -> None:
        """Until every running node reports JetStream healthy (meta leader known, current)."""
        deadline = time.monotonic() + timeout_s
        for node in self.nodes:
            if node.process is None:
                continue
            while not self._healthy(node):
                if node.process.poll() is not None:
                    raise RuntimeError(f"nats-server {node.name} exited: see {node.log_file}")
                if time.monotonic() > deadline:
                    raise TimeoutError(f"cluster not ready after {timeout_s}s: {node.log_file}")
                time.sleep(0.05)  # polling processes that are starting, not synchronising tests

    @staticmethod
    def _healthy(node: ClusterNode) -> bool:
        try:
            url = f"{node.monitor_url}/healthz"
            with urllib.request.urlopen(url, timeout=1) as answer:  # noqa: S310 — loopback
                return bool(json.loads(answer.read()).get("status") == "ok")
        except (OSError, urllib.error.URLError, ValueError):
            return False

    def jsz(self, name: str) -> dict[str, object]:
        """The node's JetStream monitoring report (``/jsz``)."""
        url = f"{self.node(name).monitor_url}/jsz"
        with urllib.request.urlopen(url, timeout=2) as answer:  # noqa: S310 — loopback
            report: dict[str, object] = json.loads(answer.read())
            return report

    def kill(self, name: str) -> None:
        """SIGKILL one node: a crash, nothing flushed or handed over."""
        node = self.node(name)
        if node.process is not None and node.process.poll() is None:
            node.process.kill()
            node.process.wait()
        node.process = None

    def restart(self, name: str, *, timeout_s: float = 30) -> None:
        node = self.node(name)
        self.kill(name)
        self._spawn(node)
        self.wait_ready(timeout_s=timeout_s)

    def stop(self) -> None:
        """Stop every node (SIGTERM, then SIGKILL after 10 s). Safe to call twice."""
        for node in self.nodes:
            if node.process is not None and node.process.poll() is None:
                node.process.send_signal(signal.SIGTERM)
        for node in self.nodes:
            if node.process is None:
                continue
            try:
                node.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                node.process.kill()
                node.process.wait()
            node.process = None

    def __enter__(self) -> NatsCluster:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


@pytest.fixture
def nats_cluster(tmp_path: Path) -> Iterator[NatsCluster]:
    """A fresh 3-node JetStream cluster on loopback; every server stopped afterwards."""
    cluster = NatsCluster(tmp_path / "nats-cluster")
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()
