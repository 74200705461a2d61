"""``python -m pixelbus.gateway``: serve the API with uvicorn."""

from __future__ import annotations

import os
import sys

import uvicorn

from pixelbus.gateway.app import create_app
from pixelbus.gateway.settings import GatewaySettings
from pixelbus.gateway.wire import CorkedHttpToolsProtocol
from pixelbus.runtime.errors import SettingsError
from pixelbus.runtime.logging import setup_logging
from pixelbus.runtime.settings import with_secret_files


def main() -> int:
    setup_logging(
        os.environ.get("PIXELBUS_LOG_LEVEL", "INFO"), os.environ.get("PIXELBUS_LOG_FORMAT")
    )
    try:
        environ = with_secret_files(os.environ)
        settings = GatewaySettings.from_env(environ)
    except SettingsError as exc:
        print(f"pixelbus-gateway: {exc}", file=sys.stderr)
        return 2
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        loop="uvloop",
        http=CorkedHttpToolsProtocol,  # httptools, one send per answer
        log_level="warning",
        # nothing reads the client's address or scheme (rate limits are per API key,
        # URLs come from PIXELBUS_PUBLIC_BASE_URL): no X-Forwarded-* layer per request
        proxy_headers=False,
        timeout_graceful_shutdown=10,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
