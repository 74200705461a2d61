"""pixelbus.runtime — the I/O shell every pixelbus service shares.

- ``settings``: the bus settings (``NATS_URL`` and the JetStream sizing) from the environment.
- ``connection``: connecting to NATS with sane reconnect behaviour.
- ``provision``: the one idempotent ``ensure`` step for streams, consumers and buckets.
- ``publisher``: publishing events with ``Nats-Msg-Id`` and W3C trace context headers.
- ``tracing``: OpenTelemetry context in and out of NATS headers.
- ``worker``: the shared worker runtime (consume loop, heartbeats, retries, cancel).
- ``state``: reading the projected task state from the KV bucket.
- ``quotas``: counters in a KV bucket and the active-task slots (gateway takes, projector frees).
- ``webhook_log``: the per-task webhook delivery log (webhooks service writes, gateway reads).
"""
