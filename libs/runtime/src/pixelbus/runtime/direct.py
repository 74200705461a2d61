"""Batched direct gets: several stream messages for one request, no consumer.

``$JS.API.DIRECT.GET.<stream>`` with ``batch`` (messages from a sequence on a subject
filter) or ``multi_last`` (the last message of each subject matching filters) answers with
one message per hit, then an end-of-batch status message. The stream must allow direct
gets. One thing to know when asking for ``batch``: asking for more messages than there are
makes the server search the rest of the stream for them; ask for what is there (the first
message's ``Nats-Num-Pending`` says how many follow).
"""

from __future__ import annotations

import contextlib
import json
from typing import Any

from nats.aio.client import Client
from nats.aio.msg import Msg

__all__ = ["count_from", "direct_batch"]


async def direct_batch(
    nc: Client, stream: str, request: dict[str, Any], *, timeout_s: float = 5
) -> list[Msg]:
    """The messages one batched direct get answers with (the end-of-batch left out)."""
    inbox = nc.new_inbox()
    sub = await nc.subscribe(inbox)
    wanted = request.get("batch")
    found: list[Msg] = []
    try:
        await nc.publish(f"$JS.API.DIRECT.GET.{stream}", json.dumps(request).encode(), reply=inbox)
        while True:
            msg = await sub.next_msg(timeout=timeout_s)
            if (msg.headers or {}).get("Status"):  # end of batch, or nothing at all (404)
                return found
            found.append(msg)
            if "multi_last" not in request and wanted is not None and len(found) >= wanted:
                return found  # all asked for: no need to wait for the end of the batch
    finally:
        with contextlib.suppress(Exception):
            await sub.unsubscribe()


async def count_from(nc: Client, stream: str, subject_filter: str, seq: int) -> int:
    """How many messages on ``subject_filter`` the stream holds at or after ``seq``: the
    first one's ``Nats-Num-Pending`` (counted by the server), plus itself."""
    request = {"seq": max(1, seq), "batch": 1, "next_by_subj": subject_filter}
    found = await direct_batch(nc, stream, request)
    if not found:
        return 0
    return 1 + int((found[0].headers or {}).get("Nats-Num-Pending", "0"))
