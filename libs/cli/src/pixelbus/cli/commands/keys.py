"""``pixelbus keys create|list|revoke``: API keys, kept in NATS (``NATS_URL``).

Every gateway replica follows the keys bucket, so a new or revoked key takes effect at
once everywhere. The token is printed once, at creation: store it then.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from typing import Any

__all__ = ["register"]


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("keys", help="create, list and revoke API keys")
    parser.add_argument("--nats-url", help="the NATS server (NATS_URL)")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    create = actions.add_parser("create", help="a new key; prints its token once")
    create.add_argument("--name", required=True, help="what the key is for")
    create.add_argument("--owner", required=True, help="the tenant whose tasks it sees")
    create.add_argument(
        "--scope",
        action="append",
        required=True,
        dest="scopes",
        help="tasks:write, tasks:read, consumer or admin (repeat for several)",
    )
    create.add_argument("--rate", type=float, help="requests per second (default: gateway's)")
    create.add_argument("--max-active", type=int, help="active tasks at once (default: gateway's)")
    create.set_defaults(run=lambda args: asyncio.run(_with_nats(args, _create)))
    listing = actions.add_parser("list", help="every key (revoked ones too)")
    listing.set_defaults(run=lambda args: asyncio.run(_with_nats(args, _list)))
    revoke = actions.add_parser("revoke", help="refuse a key from now on")
    revoke.add_argument("key_id", help="the key id (the 12 hex characters after pbk_)")
    revoke.set_defaults(run=lambda args: asyncio.run(_with_nats(args, _revoke)))


async def _quiet(_: Exception) -> None:
    """nats.py reports every failed connect; the command says it once, plainly."""


async def _with_nats(args: argparse.Namespace, action: Any) -> int:
    import nats
    from nats.errors import NoServersError
    from nats.js.errors import BucketNotFoundError

    from pixelbus.contracts.subjects import KEYS_BUCKET
    from pixelbus.runtime.keys import KeyManagementError
    from pixelbus.runtime.logging import setup_logging

    setup_logging("WARNING", "console")  # stdout is for the command's own output
    url = args.nats_url or os.environ.get("NATS_URL", "nats://127.0.0.1:4222")
    try:
        nc = await asyncio.wait_for(
            nats.connect(
                url,
                connect_timeout=5,
                allow_reconnect=False,
                max_reconnect_attempts=1,  # 0 would mean: keep trying for ever
                reconnect_time_wait=0.1,
                error_cb=_quiet,
            ),
            timeout=10,
        )
    except (NoServersError, OSError, TimeoutError) as exc:
        print(f"pixelbus keys: cannot reach NATS at {url}: {exc}", file=sys.stderr)
        return 1
    try:
        js = nc.jetstream()
        try:
            await js.key_value(KEYS_BUCKET)
        except BucketNotFoundError:
            # Not provisioned here: ensure() would also resize every stream to this
            # shell's replica setting. The gateway provisions at its first start.
            print(
                f"pixelbus keys: NATS at {url} has no {KEYS_BUCKET} bucket yet; "
                "start a pixelbus gateway against it once, then retry",
                file=sys.stderr,
            )
            return 1
        status: int = await action(js, args)
        return status
    except KeyManagementError as exc:
        print(f"pixelbus keys: {exc}", file=sys.stderr)
        return 2
    finally:
        await nc.close()


async def _create(js: Any, args: argparse.Namespace) -> int:
    from pixelbus.runtime.keys import create_key

    key, token = await create_key(
        js,
        name=args.name,
        owner=args.owner,
        scopes=args.scopes,
        rate_per_s=args.rate,
        max_active=args.max_active,
    )
    if args.json:
        print(json.dumps({"key_id": key.key_id, "owner": key.owner, "token": token}))
    else:
        print(f"key {key.key_id} for {key.owner} ({', '.join(key.scopes)}) created.")
        print("Its token, shown only now (send it as 'Authorization: Bearer <token>'):")
        print(token)
    return 0


async def _list(js: Any, args: argparse.Namespace) -> int:
    from pixelbus.runtime.keys import list_keys

    keys = await list_keys(js)
    if args.json:
        rows = [
            {
                "key_id": k.key_id,
                "name": k.name,
                "owner": k.owner,
                "scopes": list(k.scopes),
                "created_at": k.created_at.isoformat(),
                "revoked_at": k.revoked_at.isoformat() if k.revoked_at else None,
            }
            for k in keys
        ]
        print(json.dumps(rows))
        return 0
    if not keys:
        print("no API keys yet: pixelbus keys create --name … --owner … --scope …")
    for k in keys:
        state = f"revoked {k.revoked_at:%Y-%m-%d %H:%M}" if k.revoked_at else "active"
        print(f"{k.key_id}  {k.owner:<16} {','.join(k.scopes):<28} {state:<24} {k.name}")
    return 0


async def _revoke(js: Any, args: argparse.Namespace) -> int:
    from pixelbus.runtime.keys import revoke_key

    key = await revoke_key(js, args.key_id)
    print(
        f"key {key.key_id} ({key.name}, {key.owner}) revoked at {key.revoked_at:%Y-%m-%d %H:%M:%S}"
    )
    return 0
