"""pixelbus.contracts — what every pixelbus service shares, and nothing that does I/O.

- ``task``: the unified task format (requests) and the projected task state.
- ``events``: every task event, a tagged union on one ``Event`` base.
- ``subjects``: stream, consumer, bucket and subject names, with token sanitising.
- ``fold``: the pure, order-safe fold ``apply(state, event) -> state``.
- ``validation``: request validation with errors that name the offending field.
- ``views``: the task as clients read it (``task_view``), for the API and webhook bodies.
- ``webhooks``: what a task's webhook asks for, the planned job, its log, signatures.
"""
