"""The overall progress of one prompt, from its WebSocket messages (pure).

Every node of the graph counts once: cached nodes are done at once, a node is done when
the next one starts (``executing``) or it reports ``executed``/``progress_state``
finished, and a node that reports steps (``progress``) counts by its fraction. The
fraction never goes backwards, so a client can draw a bar.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pixelbus.comfy_worker.protocol import Message

__all__ = ["ProgressTracker", "Snapshot"]


@dataclass(frozen=True, slots=True)
class Snapshot:
    fraction: float
    node: str | None
    message: str


@dataclass
class ProgressTracker:
    nodes: dict[str, str]  # node id -> class type (every node of the graph)
    done: set[str] = field(default_factory=set)
    current: str | None = None
    current_fraction: float = 0.0
    _best: float = 0.0

    def apply(self, message: Message) -> Snapshot | None:
        """Fold one message of this prompt; a new snapshot when the progress changed."""
        data = message.data
        if message.type == "execution_start":
            return self._snapshot("started")
        if message.type == "execution_cached":
            nodes = data.get("nodes")
            self.done.update(str(n) for n in nodes or [] if str(n) in self.nodes)
            return self._snapshot("cached" if nodes else "started")
        if message.type == "executing":
            node = data.get("node")
            self._finish_current()
            if node is None:
                return None
            self.current, self.current_fraction = str(node), 0.0
            return self._snapshot("running")
        if message.type == "progress":
            node = data.get("node")
            maximum = data.get("max") or 0
            if node is not None and str(node) != self.current:
                self._finish_current()
                self.current = str(node)
            if isinstance(maximum, int | float) and maximum > 0:
                value = data.get("value") or 0
                self.current_fraction = max(0.0, min(1.0, float(value) / float(maximum)))
            return self._snapshot(f"step {data.get('value')}/{data.get('max')}")
        if message.type == "executed":
            node = str(data.get("node"))
            if node in self.nodes:
                self.done.add(node)
                if node == self.current:
                    self.current, self.current_fraction = None, 0.0
            return self._snapshot("executed", node)
        if message.type == "execution_success":
            self.done.update(self.nodes)
            self.current = None
            return self._snapshot("finished")
        return None

    def _finish_current(self) -> None:
        if self.current is not None and self.current in self.nodes:
            self.done.add(self.current)
        self.current, self.current_fraction = None, 0.0

    def _snapshot(self, what: str, node: str | None = None) -> Snapshot:
        total = max(1, len(self.nodes))
        running = self.current_fraction if self.current not in self.done else 0.0
        fraction = min(1.0, (len(self.done) + running) / total)
        self._best = max(self._best, fraction)
        shown = node or self.current
        label = f"{shown} ({self.nodes.get(shown, '?')})" if shown else None
        text = f"{what}: node {label}" if label else what
        return Snapshot(round(self._best, 4), shown, f"{text}, {len(self.done)}/{total} nodes")
