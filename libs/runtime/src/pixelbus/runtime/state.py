"""The projected task state in the KV bucket: encoding and reading."""

from __future__ import annotations

import msgspec
from nats.js.errors import KeyNotFoundError
from nats.js.kv import KeyValue

from pixelbus.contracts.task import TaskState

__all__ = ["decode_state", "encode_state", "read_state"]

_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(TaskState)


def encode_state(state: TaskState) -> bytes:
    return _encoder.encode(state)


def decode_state(data: bytes) -> TaskState:
    return _decoder.decode(data)


async def read_state(kv: KeyValue, task_id: str) -> tuple[TaskState | None, int]:
    """The task's state and its KV revision (``(None, 0)`` when unknown)."""
    try:
        entry = await kv.get(task_id)
    except KeyNotFoundError:
        return None, 0
    if entry.value is None:
        return None, entry.revision or 0
    return decode_state(entry.value), entry.revision or 0
