"""Assembling the comfy-worker: its backend pool and its worker runtime (used by
``__main__`` and by the in-process test stack alike)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from nats.aio.client import Client

from pixelbus.comfy_worker.backends import BackendPool
from pixelbus.comfy_worker.handler import ComfyHandler
from pixelbus.comfy_worker.settings import ComfySettings
from pixelbus.comfy_worker.templates import Template
from pixelbus.contracts.subjects import COMFY_ENVIRONMENT, OUTPUTS_BUCKET, pool_for_environment
from pixelbus.runtime.objects import ObjectReader
from pixelbus.runtime.worker import WorkerRuntime

__all__ = ["build_pool", "build_runtime"]


def build_pool(settings: ComfySettings) -> BackendPool:
    """The backends of ``COMFYUI_URL`` (call ``start()`` before use, ``close()`` after)."""
    return BackendPool(
        settings.urls,
        capacity=settings.backend_capacity,
        http_timeout_s=settings.http_timeout_s,
        health_interval_s=settings.health_interval_s,
    )


def build_runtime(
    settings: ComfySettings,
    nc: Client,
    pool: BackendPool,
    templates: Mapping[str, Template],
    **runtime_options: Any,
) -> WorkerRuntime:
    """The ComfyUI pool's worker: every workflow name goes to the comfy handler; nothing is
    pulled while no backend has room; the backends' health rides on the presence entry."""
    js = nc.jetstream()
    return WorkerRuntime(
        nc=nc,
        js=js,
        pool=pool_for_environment(COMFY_ENVIRONMENT),
        handlers={},
        default_handler=ComfyHandler(settings, pool, templates, ObjectReader(js, OUTPUTS_BUCKET)),
        settings=settings.bus,
        concurrency=settings.concurrency,
        gate=pool.wait_free,
        presence_extra=pool.presence,
        **runtime_options,
    )
