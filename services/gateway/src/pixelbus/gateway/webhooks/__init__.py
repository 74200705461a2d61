"""Webhooks: a planner turns task events into delivery jobs on their own stream, a
dispatcher POSTs each job (signed, SSRF-guarded) and retries it through JetStream.

Errors: ``pixelbus.media.MediaError`` (a refused URL) ends a delivery at once; any other
failure of a POST is retried with exponential backoff until the attempts are spent.
"""

from pixelbus.gateway.webhooks.dispatcher import WebhookDispatcher
from pixelbus.gateway.webhooks.log import DeliveryLogStore
from pixelbus.gateway.webhooks.planner import WebhookPlanner
from pixelbus.gateway.webhooks.service import WebhookService
from pixelbus.gateway.webhooks.settings import WebhookSettings

__all__ = [
    "DeliveryLogStore",
    "WebhookDispatcher",
    "WebhookPlanner",
    "WebhookService",
    "WebhookSettings",
]
