"""A 3-node JetStream cluster of real ``nats-server`` processes on loopback, for fault tests.

Each node has its own random client, cluster (route) and monitoring ports and its own
temp store, and lists every node as a route, as a Kubernetes StatefulSet would. ``start``
returns once every node says JetStream is ready (``/healthz``: the meta group has a
leader and the node is current); ``kill(name)`` SIGKILLs one node (a crash, no clean
shutdown), ``restart(name)`` brings it back on the same ports and store.

With ``partitionable=True`` every route link runs through a ``TcpProxy`` of its own (one
per direction per pair of nodes: the routes a node dials), and each node advertises a route
address that refuses connections, so that no node learns another's real cluster port by
gossip and dials it around the proxies. ``partition(name)`` then cuts one node off from the
others (its clients stay connected to it) and ``heal(name)`` joins it again.

``stop`` ends every process, also those of a failed ``start``: the fixture calls it in a
``finally``, so no server outlives its test.
"""

from __future__ import annotations

import json
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from pixelbus.testkit.nats_server import find_nats_server, free_port, stop_processes
from pixelbus.testkit.tcp_proxy import TcpProxy

__all__ = ["ClusterNode", "NatsCluster", "nats_cluster", "partitionable_cluster"]


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
    def __init__(self, base_dir: Path, *, partitionable: bool = False) -> None:
        self.binary = find_nats_server()
        # Each node's ports stay bound here until the node starts: a port picked by
        # free_port() and let go at once was seen taken by a proxy's bind(0) (or a route's
        # outgoing connection) before its nats-server could listen on it.
        self._held: dict[str, list[socket.socket]] = {}
        self.nodes: list[ClusterNode] = []
        for index in range(3):  # three nodes: a quorum survives the loss of one
            node = f"n{index + 1}"
            held = self._held[node] = [_bound_socket() for _ in range(3)]
            port, cluster_port, monitor_port = (sock.getsockname()[1] for sock in held)
            self.nodes.append(ClusterNode(node, base_dir / node, port, cluster_port, monitor_port))
        #: (from, to) -> the proxy that node ``from`` dials to reach ``to``'s route port
        self.links: dict[tuple[str, str], TcpProxy] = {}
        self._nowhere: socket.socket | None = None
        if partitionable:
            self.links = {
                (a.name, b.name): TcpProxy(b.cluster_port, name=f"route-{a.name}-{b.name}")
                for a in self.nodes
                for b in self.nodes
                if a is not b
            }
            # Bound and never listening: a connection to it is refused at once, and no other
            # process can take the port while the cluster runs.
            self._nowhere = _bound_socket()

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

    def partition(self, name: str) -> None:
        """Cut every route link of one node, both ways, without closing a connection."""
        for proxy in self._links_of(name):
            proxy.partition()

    def heal(self, name: str) -> None:
        for proxy in self._links_of(name):
            proxy.heal()

    def _links_of(self, name: str) -> list[TcpProxy]:
        if not self.links:
            raise RuntimeError("a partition needs NatsCluster(partitionable=True)")
        self.node(name)  # a KeyError for a name that is no node
        return [proxy for (a, b), proxy in self.links.items() if name in (a, b)]

    def _routes(self, node: ClusterNode) -> tuple[list[int], str]:
        """The route ports that ``node`` dials, and the route address it advertises."""
        if not self.links:
            return [n.cluster_port for n in self.nodes], ""
        assert self._nowhere is not None
        ports = [self.links[node.name, n.name].port for n in self.nodes if n is not node]
        return ports, f'advertise: "127.0.0.1:{self._nowhere.getsockname()[1]}"'

    def _write_config(self, node: ClusterNode) -> None:
        node.store_dir.mkdir(parents=True, exist_ok=True)
        ports, advertise = self._routes(node)
        routes = ", ".join(f'"nats-route://127.0.0.1:{port}"' for port in ports)
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
  name: pixelbus-test
  listen: "127.0.0.1:{node.cluster_port}"
  routes: [{routes}]
  {advertise}
}}
"""
        )

    def _spawn(self, node: ClusterNode) -> None:
        self._write_config(node)
        self._release(node.name)
        node.process = subprocess.Popen(
            [self.binary, "-c", str(node.config_file), "-l", str(node.log_file)],
            stdin=subprocess.DEVNULL,
        )

    def start(self, *, timeout_s: float = 30) -> None:
        try:
            for proxy in self.links.values():
                proxy.start()
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

    def jsz(self, name: str, **query: str) -> dict[str, Any]:
        """The node's JetStream monitoring report (``/jsz``, with ``query`` as options)."""
        return self._monitor(name, "/jsz", query)

    def stream_detail(self, name: str, stream: str) -> dict[str, Any] | None:
        """The node's own view of ``stream`` (leader or follower): its ``state`` (with
        ``last_seq``) and its ``cluster`` (with the ``leader`` it follows, "" if none)."""
        report = self.jsz(name, accounts="true", streams="true")
        for account in report.get("account_details") or []:
            for detail in account.get("stream_detail") or []:
                if detail.get("name") == stream:
                    return dict(detail)
        return None

    def led_by(self, name: str) -> list[str]:
        """What the node leads now: "meta" (the meta group), streams, "stream/consumer"s.
        Cutting a node off stalls each of these until the others elect a new leader."""
        report = self.jsz(name, accounts="true", streams="true", consumers="true")
        led = ["meta"] if (report.get("meta_cluster") or {}).get("leader") == name else []
        for account in report.get("account_details") or []:
            for stream in account.get("stream_detail") or []:
                if (stream.get("cluster") or {}).get("leader") == name:
                    led.append(stream["name"])
                for consumer in stream.get("consumer_detail") or []:
                    if (consumer.get("cluster") or {}).get("leader") == name:
                        led.append(f"{stream['name']}/{consumer['name']}")
        return led

    def routes_around_proxies(self) -> list[str]:
        """Route connections that bypass the proxies (none, or a partition would leave a
        way through): a node's route peer is either a proxy it dialled or the source port
        of a proxy that dialled it."""
        stray: list[str] = []
        for node in self.nodes:
            if not node.running:
                continue
            ports: set[int] = set()
            for (a, b), proxy in self.links.items():
                if a == node.name:
                    ports.add(proxy.port)
                if b == node.name:
                    ports |= proxy.upstream_ports()
            for route in self._monitor(node.name, "/routez").get("routes") or []:
                if route.get("port") not in ports:
                    stray.append(f"{node.name} <-> {route.get('remote_name')}:{route.get('port')}")
        return stray

    def _monitor(self, name: str, path: str, query: dict[str, str] | None = None) -> dict[str, Any]:
        url = f"{self.node(name).monitor_url}{path}"
        if query:
            url = f"{url}?{urllib.parse.urlencode(query)}"
        with urllib.request.urlopen(url, timeout=2) as answer:  # noqa: S310 — loopback
            report: dict[str, Any] = json.loads(answer.read())
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
        stop_processes(*(node.process for node in self.nodes if node.process is not None))
        for node in self.nodes:
            node.process = None
        for name in list(self._held):
            self._release(name)
        for proxy in self.links.values():
            proxy.close()
        if self._nowhere is not None:
            self._nowhere.close()
            self._nowhere = None

    def _release(self, name: str) -> None:
        for sock in self._held.pop(name, []):
            sock.close()

    def __enter__(self) -> NatsCluster:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _bound_socket() -> socket.socket:
    """A loopback port of its own, bound and not listening: nothing else on this machine can
    take it (no bind, no outgoing connection) until the socket is closed, and a connection
    to it is refused."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    return sock


@pytest.fixture
def nats_cluster(tmp_path: Path) -> Iterator[NatsCluster]:
    """A fresh 3-node JetStream cluster on loopback; every server stopped afterwards."""
    with NatsCluster(tmp_path / "nats-cluster") as cluster:
        yield cluster


@pytest.fixture
def partitionable_cluster(tmp_path: Path) -> Iterator[NatsCluster]:
    """The same, with every route link through a proxy: ``partition``/``heal`` a node."""
    with NatsCluster(tmp_path / "nats-cluster", partitionable=True) as cluster:
        yield cluster
