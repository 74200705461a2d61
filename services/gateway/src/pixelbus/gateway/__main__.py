"""``python -m pixelbus.gateway``: serve the API with uvicorn, in the shared process shell
like every service (logging format, uvloop, tracing, signals, the probe server; a refused
start, e.g. no active API key while keys are required, is one line and exit code 2)."""

from __future__ import annotations

import sys

import uvicorn

from pixelbus.gateway.app import create_app, gateway_ready, open_gateway
from pixelbus.gateway.settings import GatewaySettings
from pixelbus.gateway.wire import CorkedHttpToolsProtocol
from pixelbus.runtime.service import run_service, service_shell

NAME = "pixelbus-gateway"


async def serve(settings: GatewaySettings) -> None:
    gateway = await open_gateway(settings)  # refusals surface here, before uvicorn starts
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(settings, gateway),
            host=settings.host,
            port=settings.port,
            http=CorkedHttpToolsProtocol,  # httptools, one send per answer
            log_level="warning",
            # nothing reads the client's address or scheme (rate limits are per API key,
            # URLs come from PIXELBUS_PUBLIC_BASE_URL): no X-Forwarded-* layer per request
            proxy_headers=False,
            timeout_graceful_shutdown=10,
        )
    )

    def stop() -> None:
        server.should_exit = True

    async with service_shell(NAME, stop=stop, ready=gateway_ready(gateway), stop_on_drain=False):
        await server.serve()


def main() -> int:
    return run_service(NAME, GatewaySettings.from_env, serve)


if __name__ == "__main__":
    sys.exit(main())
