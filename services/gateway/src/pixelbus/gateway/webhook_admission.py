"""A task's ``webhook_url`` is judged by the SSRF guard when the task is created (the URL
alone: scheme, credentials, local and metadata host names, IP literals in any form), so
an obviously unreachable receiver is a 422 at once; a host name is resolved and its
addresses checked again at every delivery."""

from __future__ import annotations

from pixelbus.contracts.validation import FieldError, TaskSpec, ValidationFailed
from pixelbus.media.errors import MediaError
from pixelbus.media.ssrf import SsrfPolicy

__all__ = ["admit_webhook"]


def admit_webhook(policy: SsrfPolicy, spec: TaskSpec) -> None:
    """Raise ``ValidationFailed`` naming ``webhook_url`` when the guard refuses it."""
    if spec.webhook_url is None:
        return
    try:
        policy.check_url(spec.webhook_url)
    except MediaError as exc:
        raise ValidationFailed([FieldError(("body", "webhook_url"), str(exc))]) from None
