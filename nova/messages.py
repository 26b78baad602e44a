"""The messages a user's own actor sends to Nova's router, and the ones it gets back.

Send `ChatCall`, `CompleteCall` or `StreamCall` to the router (ask the root actor, globalName
"nova", with `WhereIsRouter` for its address). Every call gets exactly one final answer:
`CallSucceeded` or `CallFailed`; a stream gets its `StreamChunk`s first (then `CallSucceeded`
with the assembled response). Thespian does not keep the order of messages under load: put
chunks in `index` order, and after the final reply wait until `chunks` of them have arrived.
`CancelCall` stops a call (a stream consumer that leaves early). `Subscribe` to the event bus
(its address comes with `RouterAddress`) to receive `EventMessage`s.
"""

from __future__ import annotations

import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool

from nova.errors import NovaError
from nova.events import Event
from nova.types import ChatRequest, Chunk, CompletionRequest, Response

__all__ = [
    "CallFailed",
    "CallOptions",
    "CallSucceeded",
    "CancelCall",
    "ChatCall",
    "CompleteCall",
    "EventMessage",
    "GetMetrics",
    "GetStatus",
    "MetricsReply",
    "RouterAddress",
    "StatusReply",
    "StreamCall",
    "StreamChunk",
    "Subscribe",
    "Unsubscribe",
    "WhereIsRouter",
    "new_request_id",
]


def new_request_id() -> str:
    return uuid.uuid4().hex


class _Message(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", arbitrary_types_allowed=True)


class CallOptions(_Message):
    """Per-call options beside the model parameters: driver, cache, conversation, deadline, fallback."""

    driver: str | None = None  # a configured driver name; None: the default driver
    cache: StrictBool | Literal["refresh"] | None = None  # None: as configured; strict: "yes" is no answer
    ttl_s: float | None = None
    conversation: str | None = None
    timeout_s: float | None = Field(default=None, gt=0, allow_inf_nan=False)  # the whole call
    fallback: Literal[False] | tuple[str, ...] | None = None  # False: none; targets "driver/model"
    traceparent: str | None = None  # W3C trace context of the caller's span


class _Call(_Message):
    request_id: str = Field(default_factory=new_request_id)
    options: CallOptions = CallOptions()


class ChatCall(_Call):
    request: ChatRequest


class CompleteCall(_Call):
    request: CompletionRequest


class StreamCall(_Call):
    request: ChatRequest | CompletionRequest  # a chat, or a text completion, streamed


class CancelCall(_Message):
    request_id: str


class CallSucceeded(_Message):
    request_id: str
    response: Response
    chunks: int = 0  # StreamChunks sent before this reply: wait for them all (they may arrive later)


class CallFailed(_Message):
    request_id: str
    error: NovaError
    chunks: int = 0  # as for CallSucceeded


class StreamChunk(_Message):
    request_id: str
    index: int  # 0, 1, 2…: the order to use; under load messages can arrive out of order
    chunk: Chunk


SUBSCRIBER_QUEUE = 10_000


class Subscribe(_Message):
    """Send to the event bus to get `EventMessage`s; the sender's address is the subscription."""

    topics: tuple[str, ...] | None = None  # event names or prefixes ("cache."); None: all
    # Events waiting for this subscriber while it is slow; when full the oldest are dropped and
    # a gap notice says how many.
    queue_size: int = Field(default=SUBSCRIBER_QUEUE, ge=1, le=1_000_000)


class Unsubscribe(_Message):
    pass


class EventMessage(_Message):
    """One event for a subscriber, in the order of the bus (`event.seq`).

    A subscriber that fell behind its queue gets, where events were lost, a gap notice: an
    EventMessage whose event is "subscriber.gap" and whose `dropped` counts the lost events
    (0 on every other message)."""

    event: Event
    dropped: int = 0


class WhereIsRouter(_Message):
    pass


class RouterAddress(_Message):
    router: Any  # a Thespian ActorAddress
    event_bus: Any
    lanes: str | None = None  # the directory of the system's lanes (the facade's bridge uses it)
    identity: tuple[str, str] | None = None  # (name, configuration hash) of the running system
    pids: tuple[int, int] = (0, 0)  # the root's and the admin's: callers watch them die


class GetStatus(_Message):
    pass


class StatusReply(_Message):
    tree: dict[str, Any]


class GetMetrics(_Message):
    pass


class MetricsReply(_Message):
    snapshot: dict[str, Any]
