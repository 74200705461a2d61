"""The projected task state in the KV bucket: encoding and reading."""

from __future__ import annotations

import msgspec
from nats.js.kv import KeyValue

from pixelbus.contracts.task import TaskState
from pixelbus.runtime.kv import read_entry

__all__ = ["decode_state", "encode_state", "read_state"]

_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(TaskState)


def encode_state(state: TaskState) -> bytes:
    return _encoder.encode(state)


def decode_state(data: bytes) -> TaskState:
    return _decoder.decode(data)


async def read_state(kv: KeyValue, task_id: str) -> tuple[TaskState | None, int]:
    """The task's state and its KV revision (``(None, 0)`` when unknown)."""
    value, revision = await read_entry(kv, task_id)
    return (None if value is None else decode_state(value)), revision
