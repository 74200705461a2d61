"""pixelbus.webhooks — webhook delivery, a service of its own.

The projector plans the deliveries (a ``WebhookJob`` per event a task asked to be told
about, queued on the ``PIXELBUS_WEBHOOKS`` work queue inside its batches); this service
delivers them: the dispatcher POSTs each job, signed (Standard Webhooks), through the
SSRF guard, appends every attempt to the task's delivery log (``PIXELBUS_WEBHOOK_LOG``,
which the gateway reads for ``GET /api/tasks/{id}/webhooks``) and leaves the retrying to
JetStream (a nak with the backoff delay). It is the only pixelbus process that reaches
arbitrary internet addresses, so it runs apart from the HTTP gateway: its own egress
policy, its own NATS user, and its own settings (``PIXELBUS_WEBHOOK_*``).

Errors: ``pixelbus.media.MediaError`` (a refused URL) ends a delivery at once; any other
failure of a POST is retried with exponential backoff until the attempts are spent.

- ``settings``: ``PIXELBUS_WEBHOOK_*`` (secrets never logged).
- ``sender``: one POST through the SSRF guard, pinned to the checked address.
- ``dispatcher``: the consumer of the queue; ``decide`` is its pure outcome rule.
- ``service``: provisioning and the dispatcher together; ``__main__``: the process.
"""
