"""``./dev up``: the whole stack on embedded defaults, in the foreground.

Its own nats-server (a free port, never 4222's NATS; store under .pixelbus/nats, or
under ``PIXELBUS_DEV_DIR``), the gateway, the projector (the only writer of the task
state; it also plans webhooks), the webhook dispatcher, the face-swap worker with the
built-in engine and the storage uploader with ``local`` storage, each as its own process,
and the comfy-worker when ``COMFYUI_URL`` names ComfyUI servers. Ctrl-C stops all.

With ``PIXELBUS_AUTH=required`` (``./dev up --auth``) the stack's first admin key is
created before the gateway starts, when its keys bucket holds no active key, and its token
printed once; the bucket lives in the stack's own NATS store, so the key survives restarts.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import nats

from pixelbus.contracts.keys import SCOPES
from pixelbus.runtime.keys import create_key, list_keys
from pixelbus.runtime.provision import ensure
from pixelbus.runtime.settings import BusSettings
from pixelbus.testkit.nats_server import NatsServer

ROOT = Path(__file__).resolve().parent.parent
#: Where the stack keeps its NATS store and local storage (``PIXELBUS_DEV_DIR``).
STATE = Path(os.environ.get("PIXELBUS_DEV_DIR") or ROOT / ".pixelbus")
#: Every service ``./dev up`` starts: name → module (``python -m``). Other tools read this
#: dict as the list of pixelbus services.
SERVICES = {
    "gateway": "pixelbus.gateway",
    "projector": "pixelbus.projector",
    "webhooks": "pixelbus.webhooks",
    "faceswap-worker": "pixelbus.faceswap_worker",
    "storage-uploader": "pixelbus.storage_uploader",
}


def wait_http(url: str, timeout_s: float, process: subprocess.Popen[bytes]) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return False
        try:
            with urllib.request.urlopen(url, timeout=1) as response:  # noqa: S310 — our own loopback URL
                return bool(response.status == 200)
        except OSError:
            time.sleep(0.2)
    return False


def first_admin_token(nats_url: str) -> str | None:
    """A new admin key's token when the keys bucket holds no active key (else ``None``)."""

    async def bootstrap() -> str | None:
        nc = await nats.connect(nats_url)
        try:
            js = nc.jetstream()
            await ensure(js, BusSettings(nats_url=nats_url))
            if any(not key.revoked for key in await list_keys(js)):
                return None
            _, token = await create_key(js, name="dev-admin", owner="dev", scopes=list(SCOPES))
            return token
        finally:
            await nc.close()

    return asyncio.run(bootstrap())


def main() -> int:
    if "--auth" in sys.argv[1:]:
        os.environ["PIXELBUS_AUTH"] = "required"
    port = int(os.environ.get("PIXELBUS_PORT", "8000"))
    server = NatsServer(STATE / "nats")
    server.start()
    env = {
        "STORAGE_PROVIDER": "local",
        "PIXELBUS_LOCAL_STORAGE_DIR": str(STATE / "storage"),
        "PIXELBUS_PUBLIC_BASE_URL": f"http://127.0.0.1:{port}",
        "PIXELBUS_PORT": str(port),
        **os.environ,
        "NATS_URL": server.url,  # always our own server, whatever the shell says
    }
    token = None
    if env.get("PIXELBUS_AUTH") == "required":
        token = first_admin_token(server.url)
    services = dict(SERVICES)
    if env.get("COMFYUI_URL", "").strip():  # ComfyUI servers to drive: run the comfy-worker
        services["comfy-worker"] = "pixelbus.comfy_worker"
    processes: dict[str, subprocess.Popen[bytes]] = {}
    try:
        for name, module in services.items():
            # Own session: Ctrl-C reaches only this launcher, which then stops the
            # services in order (SIGTERM: they finish or release their work) and NATS last.
            processes[name] = subprocess.Popen(
                [sys.executable, "-m", module], env=env, cwd=ROOT, start_new_session=True
            )
        base = f"http://127.0.0.1:{port}"
        if not wait_http(f"{base}/api/health", 60, processes["gateway"]):
            print("pixelbus: the gateway did not come up; see the log above", file=sys.stderr)
            return 1
        print(
            f"\npixelbus is up (nats-server {server.url}, storage {STATE / 'storage'})\n"
            f"  API:    {base}/api\n"
            f"  docs:   {base}/docs\n"
            f"  dashboard: {base}/dashboard/\n"
            f"  health: {base}/api/health\n"
            "Ctrl-C stops everything.\n",
            flush=True,
        )
        if token is not None:
            print(
                f"API keys are required. The first admin key, shown once:\n  {token}\n"
                f"  curl -H 'Authorization: Bearer {token}' {base}/api/tasks\n"
                f"More: NATS_URL={server.url} pixelbus keys create --name NAME --owner OWNER "
                "--scope tasks:write --scope tasks:read (while the stack runs)\n",
                flush=True,
            )
        signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt))
        while all(p.poll() is None for p in processes.values()):
            time.sleep(0.5)
        dead = [n for n, p in processes.items() if p.poll() is not None]
        print(f"pixelbus: {', '.join(dead)} exited; stopping", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\npixelbus: stopping", file=sys.stderr)
        return 0
    finally:
        for process in processes.values():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in processes.values():
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
        server.stop()


if __name__ == "__main__":
    sys.exit(main())
