"""The corked HTTP transport: one loop turn's writes leave in one ``write``, in order."""

from __future__ import annotations

import asyncio

from pixelbus.gateway.wire import _CorkedTransport


class RecordingTransport:
    """Stands in for the socket's transport: records each write it is given."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.writes.append(data)

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = True

    def get_extra_info(self, name: str) -> str:
        return f"extra:{name}"


async def next_turn() -> None:
    """Lets the loop run the callbacks scheduled so far (the flush)."""
    await asyncio.sleep(0)


async def test_writes_of_one_turn_leave_together_in_order() -> None:
    raw = RecordingTransport()
    corked = _CorkedTransport(raw, asyncio.get_running_loop())
    corked.write(b"HTTP/1.1 200 OK\r\n\r\n")
    corked.writelines([b'{"a":', b"1}"])
    assert raw.writes == []
    await next_turn()
    assert raw.writes == [b'HTTP/1.1 200 OK\r\n\r\n{"a":1}']


async def test_writes_of_separate_turns_stream_separately() -> None:
    raw = RecordingTransport()
    corked = _CorkedTransport(raw, asyncio.get_running_loop())
    corked.write(b"data: 1\n\n")
    await next_turn()
    corked.write(b"data: 2\n\n")
    await next_turn()
    assert raw.writes == [b"data: 1\n\n", b"data: 2\n\n"]


async def test_close_sends_what_was_written_and_abort_drops_it() -> None:
    loop = asyncio.get_running_loop()
    raw = RecordingTransport()
    corked = _CorkedTransport(raw, loop)
    corked.write(b"last words")
    corked.close()
    assert raw.writes == [b"last words"] and raw.closed
    await next_turn()
    assert raw.writes == [b"last words"]  # the scheduled flush finds nothing more

    aborted = RecordingTransport()
    corked = _CorkedTransport(aborted, loop)
    corked.write(b"never sent")
    corked.abort()
    await next_turn()
    assert aborted.writes == [] and aborted.closed


async def test_other_transport_calls_reach_the_socket_transport() -> None:
    corked = _CorkedTransport(RecordingTransport(), asyncio.get_running_loop())
    assert corked.get_extra_info("peername") == "extra:peername"
