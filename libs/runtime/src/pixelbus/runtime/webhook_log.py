"""The per-task webhook delivery log (bucket ``PIXELBUS_WEBHOOK_LOG``): one KV entry per
task, appended with compare-and-swap by the webhooks service, read by the gateway
(``GET /api/tasks/{id}/webhooks``)."""

from __future__ import annotations

import msgspec
from nats.js.errors import KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from pixelbus.contracts.webhooks import DeliveryAttempt, DeliveryLog
from pixelbus.runtime.kv import read_entry, write_at

__all__ = ["DeliveryLogStore"]

_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(DeliveryLog)
MAX_ATTEMPTS_KEPT = 100
_CAS_ATTEMPTS = 20


class DeliveryLogStore:
    def __init__(self, kv: KeyValue) -> None:
        self._kv = kv

    async def read(self, task_id: str) -> DeliveryLog:
        log, _ = await self._read(task_id)
        return log

    async def _read(self, task_id: str) -> tuple[DeliveryLog, int]:
        value, revision = await read_entry(self._kv, task_id)
        log = DeliveryLog(task_id=task_id) if value is None else _decoder.decode(value)
        return log, revision

    async def append(self, task_id: str, attempt: DeliveryAttempt) -> DeliveryLog:
        """Add one attempt (a replayed one, same delivery and attempt number, once)."""
        for _ in range(_CAS_ATTEMPTS):
            log, revision = await self._read(task_id)
            if any(
                (a.delivery_id, a.attempt) == (attempt.delivery_id, attempt.attempt)
                for a in log.attempts
            ):
                return log
            attempts = (*log.attempts, attempt)[-MAX_ATTEMPTS_KEPT:]
            new = DeliveryLog(task_id=task_id, attempts=attempts)
            try:
                await write_at(self._kv, task_id, _encoder.encode(new), revision)
            except KeyWrongLastSequenceError:
                continue
            return new
        raise RuntimeError(f"webhook log of {task_id}: too many concurrent writers")
