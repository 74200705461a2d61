"""Errors of the runtime and of task handlers (all ``pixelbus.contracts.errors.PixelbusError``).

::

    PixelbusError
    ├── SettingsError          a setting is missing or malformed; the service must not start
    ├── CounterContention      a KV counter kept changing under compare-and-swap: retry shortly
    ├── Retryable              transient (timeout, 5xx, backend gone): nak with delay
    └── Permanent              will not heal (bad input, no face, 4xx): term, TaskFailed(final)

A handler may raise any ``PixelbusError`` (a domain error of media, an engine, ComfyUI):
its ``code`` and ``retryable`` decide the task's fate. ``Retryable`` and ``Permanent`` are
for handlers that have no domain error of their own.
"""

from __future__ import annotations

from pixelbus.contracts.errors import PixelbusError

__all__ = [
    "CounterContention",
    "Permanent",
    "PixelbusError",
    "Retryable",
    "SettingsError",
]


class SettingsError(PixelbusError):
    """One line naming the setting and what is wrong with it."""

    code = "invalid_settings"


class CounterContention(PixelbusError):
    """Other writers kept updating a counter first (``pixelbus.runtime.quotas``): busy,
    not broken; the request may be retried shortly."""

    code = "counter_contention"
    retryable = True


class Retryable(PixelbusError):
    retryable = True

    def __init__(self, code: str, message: str, *, delay_s: float | None = None) -> None:
        super().__init__(message, code=code)
        self.delay_s = delay_s


class Permanent(PixelbusError):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message, code=code)
