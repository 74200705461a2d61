"""pixelbus.projector — the task-state projection, the one writer of ``PIXELBUS_TASK_STATE``.

One writer per view: this service (its own process, its own NATS user, the only one
allowed to publish to ``$KV.PIXELBUS_TASK_STATE.>``) folds every task event into the
bucket that answers status queries; the gateway only reads it (and, for a task not
folded yet, reads its ``TaskCreated`` from the stream instead). Several replicas may run:
they share the durable consumer ``projector`` and write with compare-and-swap.

- ``projector``: the fold loop; each batch also frees the quota slots of the tasks it
  ended and queues their webhook deliveries before it is acked.
- ``planner``: webhook planning inside those batches (jobs from events, never from "the
  state changed"; nothing older than the duplicate window is planned, so a replay of the
  stream re-sends nothing). The webhooks service delivers the jobs.
- ``exhausted``: tasks whose messages ran out of deliveries end ``FAILED``.
- ``rebuild``: replay the stream into an empty bucket (``python -m pixelbus.projector.rebuild``).
- ``service``: the process's loops together; ``__main__``: ``python -m pixelbus.projector``.
"""
