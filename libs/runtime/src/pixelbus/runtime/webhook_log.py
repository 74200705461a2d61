"""The per-task webhook delivery log (bucket ``PIXELBUS_WEBHOOK_LOG``): one KV entry per
task, appended with compare-and-swap by the webhooks service, read by the gateway
(``GET /api/tasks/{id}/webhooks``)."""

from __future__ import annotations

import msgspec
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from pixelbus.contracts.webhooks import DeliveryAttempt, DeliveryLog

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
        try:
            entry = await self._kv.get(task_id)
        except KeyNotFoundError:
            return DeliveryLog(task_id=task_id), 0
        if entry.value is None:
            return DeliveryLog(task_id=task_id), entry.revision or 0
        return _decoder.decode(entry.value), entry.revision or 0

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
                if revision == 0:
                    await self._kv.create(task_id, _encoder.encode(new))
                else:
                    await self._kv.update(task_id, _encoder.encode(new), last=revision)
            except KeyWrongLastSequenceError:
                continue
            return new
        raise RuntimeError(f"webhook log of {task_id}: too many concurrent writers")
