"""Names of everything on the bus: the task stream, its subjects, consumers and buckets.

Subjects: ``pixelbus.tasks.<environment>.<workflow>.<event kind>.<task id>``, so a worker
pool subscribes to exactly the environment it serves and a downstream service to exactly
the completions it wants (``pixelbus.tasks.*.*.completed.*``). Tokens made from user
input are sanitised: NATS forbids ``.``, ``*``, ``>`` and white space in a token.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import NamedTuple

__all__ = [
    "ADVISORY_STREAM",
    "COMFY_ENVIRONMENT",
    "ENVIRONMENTS",
    "EXHAUSTED_CONSUMER",
    "FACE_SWAP_ENVIRONMENT",
    "IDEMPOTENCY_BUCKET",
    "INDEX_BUCKET",
    "INPUT_OBJECT_PREFIX",
    "KEYS_BUCKET",
    "LEASES_BUCKET",
    "MAX_DELIVERIES_ADVISORIES",
    "OUTPUTS_BUCKET",
    "POOLS",
    "PROJECTOR_CONSUMER",
    "QUOTAS_BUCKET",
    "RATES_BUCKET",
    "STATE_BUCKET",
    "SUBJECT_ROOT",
    "TASK_STREAM",
    "UPLOADER_CONSUMER",
    "WEBHOOK_DISPATCHER_CONSUMER",
    "WEBHOOK_LOG_BUCKET",
    "WEBHOOK_PLANNER_CONSUMER",
    "WEBHOOK_STREAM",
    "WEBHOOK_SUBJECT_ROOT",
    "WORKERS_BUCKET",
    "Pool",
    "TaskSubject",
    "created_filter",
    "event_filter",
    "input_object_names",
    "parse_subject",
    "pool_for_environment",
    "sanitize_token",
    "task_subject",
    "webhook_subject",
]

TASK_STREAM = "PIXELBUS_TASKS"
SUBJECT_ROOT = "pixelbus.tasks"
STATE_BUCKET = "PIXELBUS_TASK_STATE"
INDEX_BUCKET = "PIXELBUS_TASK_INDEX"  # each owner's tasks in creation order (projector)
OUTPUTS_BUCKET = "PIXELBUS_OUTPUTS"
IDEMPOTENCY_BUCKET = "PIXELBUS_IDEMPOTENCY"
LEASES_BUCKET = "PIXELBUS_LEASES"
WORKERS_BUCKET = "PIXELBUS_WORKERS"
KEYS_BUCKET = "PIXELBUS_API_KEYS"
RATES_BUCKET = "PIXELBUS_RATES"
QUOTAS_BUCKET = "PIXELBUS_QUOTAS"
PROJECTOR_CONSUMER = "projector"
UPLOADER_CONSUMER = "storage-uploader"
#: The server's "a message ran out of deliveries" advisories for the task stream, kept in
#: a stream of their own so that none is lost while no projector is running.
ADVISORY_STREAM = "PIXELBUS_ADVISORIES"
MAX_DELIVERIES_ADVISORIES = f"$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{TASK_STREAM}.*"
EXHAUSTED_CONSUMER = "exhausted-tasks"
#: Inline (data:) inputs are moved to the Object Store; the task keeps this reference.
#: Clients cannot send it: validation admits only http(s) and data: URLs.
INPUT_OBJECT_PREFIX = "pixelbus-object:"

#: The environment of face-swap tasks (the face-swap workers' pool).
FACE_SWAP_ENVIRONMENT = "face_swap"
#: The environment of ComfyUI tasks (the comfy-workers' pool). "comm" is the replaced
#: system's wire name; in code it is the ComfyUI environment, not the external-consumer
#: API (``/api/comm/task/*``, whose path only happens to share the word).
COMFY_ENVIRONMENT = "comm"
ENVIRONMENTS = (FACE_SWAP_ENVIRONMENT, COMFY_ENVIRONMENT)

#: Webhook deliveries to make: a work queue of their own, so that a slow receiver never
#: holds up the task stream; the projector queues them (planned inside its batches), the
#: webhooks service's dispatcher delivers them.
WEBHOOK_STREAM = "PIXELBUS_WEBHOOKS"
WEBHOOK_SUBJECT_ROOT = "pixelbus.webhooks"
#: Round 1's planner consumer on the task stream: gone (the projector removes it at start).
WEBHOOK_PLANNER_CONSUMER = "webhook-planner"
WEBHOOK_DISPATCHER_CONSUMER = "webhook-dispatcher"
WEBHOOK_LOG_BUCKET = "PIXELBUS_WEBHOOK_LOG"


def webhook_subject(task_id: str) -> str:
    return f"{WEBHOOK_SUBJECT_ROOT}.{sanitize_token(task_id)}"


def input_object_names(value: object) -> tuple[str, ...]:
    """The Object Store inputs a task's ``input_data`` refers to, at any depth, in order."""
    found: list[str] = []
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str) and item.startswith(INPUT_OBJECT_PREFIX):
            found.append(item.removeprefix(INPUT_OBJECT_PREFIX))
        elif isinstance(item, dict):
            stack.extend(reversed(list(item.values())))
        elif isinstance(item, list | tuple):
            stack.extend(reversed(item))
    return tuple(dict.fromkeys(found))


_UNSAFE = re.compile(r"[^A-Za-z0-9_\-]")
_MAX_TOKEN = 128


def sanitize_token(value: str) -> str:
    """Make ``value`` a safe subject token: unsafe characters become ``_``, never empty."""
    token = _UNSAFE.sub("_", value)[:_MAX_TOKEN]
    return token or "_"


def task_subject(environment: str, workflow: str, kind: str, task_id: str) -> str:
    return ".".join(
        (
            SUBJECT_ROOT,
            sanitize_token(environment),
            sanitize_token(workflow),
            kind,
            sanitize_token(task_id),
        )
    )


class TaskSubject(NamedTuple):
    """The tokens of a task event's subject (as sanitised when it was built)."""

    environment: str
    workflow: str
    kind: str
    task_id: str

    def with_kind(self, kind: str) -> str:
        """The subject of the same task's event of another kind."""
        return ".".join((SUBJECT_ROOT, self.environment, self.workflow, kind, self.task_id))


_SUBJECT_PREFIX = SUBJECT_ROOT + "."


def parse_subject(subject: str) -> TaskSubject | None:
    """The tokens of a task event's subject; ``None`` for any other subject."""
    if not subject.startswith(_SUBJECT_PREFIX):
        return None
    tokens = subject[len(_SUBJECT_PREFIX) :].split(".")
    if len(tokens) != 4 or not all(tokens):
        return None
    return TaskSubject(*tokens)


def event_filter(kind: str = "*", environment: str = "*", workflow: str = "*") -> str:
    """A subject filter for one event kind (``*`` for any), optionally narrowed."""
    env = environment if environment == "*" else sanitize_token(environment)
    wf = workflow if workflow == "*" else sanitize_token(workflow)
    return f"{SUBJECT_ROOT}.{env}.{wf}.{kind}.*"


def created_filter(task_id: str) -> str:
    """The subject of a task's ``TaskCreated``, whatever its environment and workflow."""
    return f"{SUBJECT_ROOT}.*.*.created.{sanitize_token(task_id)}"


@dataclass(frozen=True, slots=True)
class Pool:
    """A worker pool: one durable consumer that every worker of the pool pulls from.

    External consumers (``/api/comm/task/fetch``) draw from the same durable, so they are
    peers of the in-cluster workers.
    """

    name: str
    environment: str

    @property
    def durable(self) -> str:
        return f"pool-{self.name}"

    @property
    def filter_subject(self) -> str:
        return event_filter("created", self.environment)


POOLS = (Pool("faceswap", FACE_SWAP_ENVIRONMENT), Pool("comfy", COMFY_ENVIRONMENT))


def pool_for_environment(environment: str) -> Pool:
    for pool in POOLS:
        if pool.environment == environment:
            return pool
    raise KeyError(environment)
