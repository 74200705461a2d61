"""The bare JetStream reference of ``just bench``: the floor under any task system on NATS.

A process of its own, as a worker would be: a stream ``BENCH_REF`` (``bench.ref.>``), one
durable pull consumer (explicit ack), and a loop that fetches up to 100 messages, acks each
(fire and forget) and publishes a reply on ``bench.done`` with the message's data. The
load generator publishes to the stream (awaiting the publish ack) and listens to
``bench.done``: publish → store → pull → ack → reply, nothing else. uvloop, as the
pixelbus services run.

    python tests/bench_jetstream_worker.py --nats nats://127.0.0.1:PORT --ready FILE
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from pathlib import Path

import nats
import nats.errors
import uvloop
from nats.js.api import AckPolicy, ConsumerConfig, StreamConfig

STREAM = "BENCH_REF"


async def serve(url: str, ready: Path) -> None:
    nc = await nats.connect(url)
    js = nc.jetstream()
    await js.add_stream(StreamConfig(name=STREAM, subjects=["bench.ref.>"]))
    await js.add_consumer(
        STREAM,
        ConsumerConfig(durable_name="ref", ack_policy=AckPolicy.EXPLICIT, max_ack_pending=10_000),
    )
    sub = await js.pull_subscribe_bind(durable="ref", stream=STREAM)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await asyncio.to_thread(ready.touch)
    while not stop.is_set():
        try:
            msgs = await sub.fetch(100, timeout=0.5)
        except (TimeoutError, nats.errors.TimeoutError):
            continue
        for msg in msgs:
            await msg.ack()
            await nc.publish("bench.done", msg.data)
    await nc.drain()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="the bench's bare JetStream worker")
    parser.add_argument("--nats", required=True)
    parser.add_argument("--ready", type=Path, required=True, help="file created when ready")
    args = parser.parse_args(argv)
    uvloop.run(serve(args.nats, args.ready))
    return 0


if __name__ == "__main__":
    sys.exit(main())
