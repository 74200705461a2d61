"""Reading a run's output files from ComfyUI (``/view``).

A file is read as soon as a node's ``executed`` message names it (``prefetch``), while
the rest of the graph runs and the history is written; ``read`` then hands over the files
that the ``/history`` entry lists, starting whatever was not prefetched. ``/history``
stays the record: a prefetched file it does not list is dropped, and a prefetch that failed
matters only if the history lists that file (its error is raised then). At most
``CONCURRENCY`` reads run at once.
"""

from __future__ import annotations

import asyncio
from typing import Any

from pixelbus.comfy_worker.client import ComfyClient
from pixelbus.comfy_worker.protocol import FileRef, node_output

__all__ = ["OutputReader"]

_Key = tuple[str, str, str]  # filename, subfolder, type: what /view is asked
CONCURRENCY = 4


def _key(ref: FileRef) -> _Key:
    return ref.filename, ref.subfolder, ref.type


class OutputReader:
    def __init__(self, client: ComfyClient, *, max_bytes: int, include_previews: bool) -> None:
        self._client = client
        self._max_bytes = max_bytes
        self._include_previews = include_previews
        self._limit = asyncio.Semaphore(CONCURRENCY)
        self._reads: dict[_Key, asyncio.Task[bytes]] = {}

    def wanted(self, ref: FileRef) -> bool:
        """Previews (``temp``) only when asked for."""
        return ref.type != "temp" or self._include_previews

    def prefetch(self, node_id: str, output: Any) -> None:
        """Start reading the files of one ``executed`` message."""
        files, _ = node_output(node_id, output)
        for ref in files:
            if self.wanted(ref):
                self._start(ref)

    def _start(self, ref: FileRef) -> asyncio.Task[bytes]:
        task = self._reads.get(_key(ref))
        if task is None:
            task = asyncio.create_task(self._read(ref))
            self._reads[_key(ref)] = task
        return task

    async def _read(self, ref: FileRef) -> bytes:
        async with self._limit:
            return await self._client.view(ref, max_bytes=self._max_bytes)

    async def read(self, refs: list[FileRef]) -> list[bytes]:
        """The bytes of each file, in order (each read once, even if listed twice)."""
        tasks = [self._start(ref) for ref in refs]
        return list(await asyncio.gather(*tasks))

    async def close(self) -> None:
        """Stop what is still running (a failed run, or files the history did not list)."""
        reads, self._reads = self._reads, {}
        if not reads:
            return
        for task in reads.values():
            task.cancel()
        await asyncio.wait(reads.values())  # never raises the reads' errors: not ours now
        for task in reads.values():
            if not task.cancelled():
                task.exception()  # retrieved, so that asyncio does not log it as lost
