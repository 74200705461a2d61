"""pixelbus.completions: hand every completed pixelbus task to a callback.

``CompletionSubscriber(nc, "my-service", handle).run()`` subscribes with a durable
JetStream consumer of the service's own (per environment, per workflow, or all) and acks
each completion only after ``handle`` returns.
"""

from pixelbus.completions.completion import Completion, completion_from
from pixelbus.completions.subscriber import (
    CompletionHandler,
    CompletionSubscriber,
    completion_subject,
)

__all__ = [
    "Completion",
    "CompletionHandler",
    "CompletionSubscriber",
    "completion_from",
    "completion_subject",
]
