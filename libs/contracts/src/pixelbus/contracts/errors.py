"""The one error base of pixelbus: every domain error extends ``PixelbusError``.

Each error carries a stable machine-readable ``code``, says whether trying again later could
help (``retryable``) and has a ``message`` safe to show to an API client (no secret, no whole
URL). Consumers turn any ``PixelbusError`` into a task outcome the same way (a retryable one
is tried again, with ``delay_s`` when it names one); nobody maps codes by hand::

    PixelbusError
    ├── pixelbus.runtime.errors      SettingsError, CounterContention, Retryable, Permanent
    ├── pixelbus.runtime.keys        KeyManagementError: a key operation refused
    ├── pixelbus.media.errors        MediaError: URLs refused, fetches failed, bad images
    ├── pixelbus.storage_uploader    StorageError: a provider could not store
    ├── pixelbus.faceswap_worker     EngineError: no face, model missing, bad model output
    └── pixelbus.comfy_worker        ComfyError: backend down, prompt refused, node failed
"""

from __future__ import annotations

__all__ = ["PixelbusError"]


class PixelbusError(Exception):
    """Base of every pixelbus error; subclasses set ``code`` and ``retryable`` as class
    attributes, and a raise may override either."""

    code: str = "error"
    retryable: bool = False
    #: how long a retryable error asks to wait before the next try (``None``: the default)
    delay_s: float | None = None

    def __init__(
        self, message: str, *, code: str | None = None, retryable: bool | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        if retryable is not None:
            self.retryable = retryable

    def about(self, what: str) -> None:
        """Put ``what`` (e.g. the input field it concerns) in front of the message: for a
        boundary that knows more than the raiser, before it re-raises."""
        self.message = f"{what}: {self.message}"
        self.args = (self.message,)
