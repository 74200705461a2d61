"""Errors of the runtime and of task handlers.

::

    PixelbusError
    ├── SettingsError          a setting is missing or malformed; the service must not start
    ├── CounterContention      a KV counter kept changing under compare-and-swap: retry shortly
    └── TaskError              raised by a task handler; decides the message's fate
        ├── Retryable          transient (timeout, 5xx, backend gone): nak with delay
        └── Permanent          will not heal (bad input, no face, 4xx): term, TaskFailed(final)
"""

from __future__ import annotations

__all__ = [
    "CounterContention",
    "Permanent",
    "PixelbusError",
    "Retryable",
    "SettingsError",
    "TaskError",
]


class PixelbusError(Exception):
    pass


class SettingsError(PixelbusError):
    """One line naming the setting and what is wrong with it."""


class CounterContention(PixelbusError):
    """Other writers kept updating a counter first (``pixelbus.runtime.quotas``): busy,
    not broken; the request may be retried shortly."""


class TaskError(PixelbusError):
    retryable: bool = False

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class Retryable(TaskError):
    retryable = True

    def __init__(self, code: str, message: str, *, delay_s: float | None = None) -> None:
        super().__init__(code, message)
        self.delay_s = delay_s


class Permanent(TaskError):
    retryable = False
