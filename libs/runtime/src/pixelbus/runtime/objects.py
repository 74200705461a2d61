"""Reading Object Store entries chunk by chunk, without creating a consumer per object.

nats.py's ``ObjectStore.get`` subscribes an ordered consumer for every object it reads.
At a few hundred objects a second those consumers pile up until the stream refuses new
ones ("maximum consumers limit reached"). ``ObjectReader`` reads the entry's meta message
and then each chunk with a stream message get (next message on the chunk subject), so a
small object costs two requests and nothing is left behind on the server. Chunks are
yielded one by one, so a large output never has to sit in memory whole, and the SHA-256
digest is checked at the end.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
from collections.abc import AsyncIterator, Iterable
from hashlib import sha256
from typing import Any

from nats.js import JetStreamContext
from nats.js.api import ObjectInfo
from nats.js.errors import DigestMismatchError, NotFoundError, ObjectNotFoundError

__all__ = ["ObjectReader", "delete_objects"]

_DIGEST_PREFIX = "SHA-256="


class ObjectReader:
    def __init__(self, js: JetStreamContext, bucket: str) -> None:
        self._js = js
        self._bucket = bucket
        self._stream = f"OBJ_{bucket}"

    async def info(self, name: str) -> ObjectInfo:
        """The entry's meta; ``ObjectNotFoundError`` when it is missing or deleted."""
        encoded = base64.urlsafe_b64encode(name.encode()).decode()
        try:
            msg = await self._js.get_last_msg(self._stream, f"$O.{self._bucket}.M.{encoded}")
        except NotFoundError:
            raise ObjectNotFoundError from None
        info: ObjectInfo = ObjectInfo.from_response(json.loads(msg.data or b"{}"))
        if info.deleted:
            raise ObjectNotFoundError
        return info

    async def chunks(self, name: str) -> AsyncIterator[bytes]:
        """The entry's bytes, chunk by chunk; ``DigestMismatchError`` if they do not add up."""
        info = await self.info(name)
        subject = f"$O.{self._bucket}.C.{info.nuid}"
        digest = sha256()
        size = 0
        seq = 0
        for _ in range(info.chunks or 0):
            msg = await self._js.get_msg(self._stream, seq + 1, subject=subject, next=True)
            seq = msg.seq or seq + 1
            data = msg.data or b""
            digest.update(data)
            size += len(data)
            yield data
        expected = (info.digest or "").removeprefix(_DIGEST_PREFIX)
        if size != (info.size or 0) or digest.digest() != base64.urlsafe_b64decode(expected):
            raise DigestMismatchError

    async def read(self, name: str) -> bytes:
        return b"".join([chunk async for chunk in self.chunks(name)])


async def delete_objects(objects: Any, names: Iterable[str]) -> None:
    """Remove these entries of ``objects`` (a nats ``ObjectStore``) at once; one that is
    missing (never written, or removed already) or cannot be removed now is left to the
    bucket's TTL."""

    async def delete(name: str) -> None:
        with contextlib.suppress(Exception):
            await objects.delete(name)

    await asyncio.gather(*(delete(name) for name in names))
