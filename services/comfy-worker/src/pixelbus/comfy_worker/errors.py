"""Errors of the comfy-worker (all ``pixelbus.contracts.errors.PixelbusError``: the worker
runtime turns them into the task's outcome by ``code`` and ``retryable``).

::

    ComfyError
    ├── BackendUnavailable     retryable   the server is down, restarted, or answered 5xx
    │   └── PromptLost         retryable   the prompt vanished (a restart): run it again
    ├── PromptRejected         permanent   ComfyUI refused the graph (node_errors, bad link,
    │                                      unknown node type); carries its message and node id
    ├── ExecutionFailed        permanent   a node raised: node, exception type and message
    ├── PromptInterrupted      permanent   someone else interrupted the prompt on the server
    └── WorkflowError          permanent   the task's graph, template or parameters are
                                           invalid; refused before anything reaches ComfyUI
"""

from __future__ import annotations

from pixelbus.contracts.errors import PixelbusError

__all__ = [
    "BackendUnavailable",
    "ComfyError",
    "ExecutionFailed",
    "PromptInterrupted",
    "PromptLost",
    "PromptRejected",
    "WorkflowError",
]


class ComfyError(PixelbusError):
    code = "comfy_error"

    def __init__(
        self, message: str, *, code: str | None = None, node_id: str | None = None
    ) -> None:
        super().__init__(message, code=code)
        self.node_id = node_id


class BackendUnavailable(ComfyError):
    code = "comfy_unavailable"
    retryable = True


class PromptLost(BackendUnavailable):
    code = "comfy_prompt_lost"


class PromptRejected(ComfyError):
    code = "comfy_invalid_prompt"


class ExecutionFailed(ComfyError):
    code = "comfy_execution_error"


class PromptInterrupted(ComfyError):
    code = "comfy_interrupted"


class WorkflowError(ComfyError):
    code = "invalid_workflow"
