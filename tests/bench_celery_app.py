"""Celery + Redis for ``just bench``: the app (one no-op task) and its worker.

The worker is what a user would run for many short tasks, following Celery's "Optimizing"
guide, and says so here:

- prefork pool, concurrency 2 (one process per core of this machine);
- ``worker_prefetch_multiplier=64``: the guide's advice for many short tasks (the default 4
  leaves the pool waiting on Redis between tasks); acks stay early (``task_acks_late`` off,
  the default), results in the Redis result backend (pub/sub, so ``.get()`` is woken, not
  polling);
- ``worker_disable_rate_limits``: no rate limits are used, so skip their bookkeeping;
- ``--without-gossip --without-mingle --without-heartbeat``: one worker, nothing to
  exchange with peers;
- logging at WARNING (no log line per task).

On the client side ``broker_pool_limit`` matches the number of client threads (the guide:
size it to the threads that publish) and each thread has its own result-backend connection
(Celery's default, ``result_backend_thread_safe`` off).

    python -m tests.bench_celery_app --redis redis://127.0.0.1:PORT/0 --ready FILE
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from celery import Celery
from celery.signals import worker_ready

__all__ = ["NOOP", "make_app"]

NOOP = "bench.noop"


def make_app(redis_url: str, *, client_threads: int = 10) -> Celery:
    """The bench's Celery app on ``redis_url`` (broker and result backend)."""
    app = Celery("pixelbus_bench", broker=redis_url, backend=redis_url)
    app.conf.update(
        worker_prefetch_multiplier=64,
        task_acks_late=False,
        worker_disable_rate_limits=True,
        broker_pool_limit=client_threads,
        broker_connection_retry_on_startup=True,
    )

    @app.task(name=NOOP)
    def noop() -> None:
        return None

    return app


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="the bench's Celery worker (prefork)")
    parser.add_argument("--redis", required=True, help="broker and result backend URL")
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--ready", type=Path, required=True, help="file created when ready")
    args = parser.parse_args(argv)
    app = make_app(args.redis)

    @worker_ready.connect
    def announce(**_: Any) -> None:
        args.ready.touch()

    app.worker_main(
        [
            "worker",
            "--pool=prefork",
            f"--concurrency={args.concurrency}",
            "--loglevel=WARNING",
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
        ]
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
