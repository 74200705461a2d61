"""arq for ``just bench``: one no-op job function and its worker, tuned.

Runs in the bench's own arq virtualenv (``.pixelbus/bench/arq-venv``, pinned by
``tests/bench_arq_requirements.txt``): arq pins redis-py below 6, which clashes with the
Celery side of the project's environment. Imports only the standard library and arq.

The tuning (arq's defaults in brackets):

- ``poll_delay=0.005`` [0.5 s]: the worker looks for new jobs every 5 ms; the client's
  ``job.result(poll_delay=0.005)`` polls for the result as often. With the defaults a no-op
  task takes about half a second.
- ``max_jobs`` as given (``--max-jobs``, the bench passes 10: arq's default): jobs run at
  once in the worker's event loop.
- logging at WARNING (arq's CLI logs two INFO lines per job).
- one worker process, arq's own asyncio loop: how arq runs.

    python tests/bench_arq_app.py --redis-port PORT --ready FILE
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from pathlib import Path
from typing import Any

from arq.connections import RedisSettings
from arq.worker import Worker


async def noop(ctx: dict[str, Any]) -> None:
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="the bench's arq worker")
    parser.add_argument("--redis-host", default="127.0.0.1")
    parser.add_argument("--redis-port", type=int, required=True)
    parser.add_argument("--max-jobs", type=int, default=10)
    parser.add_argument("--ready", type=Path, required=True, help="file created when ready")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    async def announce(ctx: dict[str, Any]) -> None:
        await asyncio.to_thread(args.ready.touch)

    worker = Worker(
        functions=[noop],
        redis_settings=RedisSettings(host=args.redis_host, port=args.redis_port),
        poll_delay=0.005,
        max_jobs=args.max_jobs,
        on_startup=announce,
        handle_signals=True,
    )
    worker.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
