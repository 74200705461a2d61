"""An example downstream service: records every completed face swap.

    NATS_URL=nats://127.0.0.1:4222 python libs/completions/examples/record_completions.py

Each completion is printed as one JSON line (task id and output URLs) once the line is
written; SIGTERM or Ctrl-C stops it cleanly (running callbacks finish and are acked), and
a restart carries on where it stopped.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys

import nats

from pixelbus.completions import Completion, CompletionSubscriber


async def record(completion: Completion) -> None:
    line = {"task_id": completion.task_id, "urls": [o.url for o in completion.outputs]}
    sys.stdout.write(json.dumps(line) + "\n")
    sys.stdout.flush()


async def main() -> None:
    nc = await nats.connect(os.environ.get("NATS_URL", "nats://127.0.0.1:4222"))
    subscriber = CompletionSubscriber(
        nc, os.environ.get("SERVICE_NAME", "recorder"), record, environment="face_swap"
    )
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, subscriber.stop)
    print("ready", file=sys.stderr, flush=True)
    try:
        await subscriber.run()
    finally:
        await nc.close()


if __name__ == "__main__":
    asyncio.run(main())
