"""The router's records of calls: a call in flight (`Pending`) and the decisions about it.

Plain dataclasses shared by `nova.provider.Provider`, which makes them, and the RouterActor,
which acts on them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from nova import errors
from nova.chunks import InOrder
from nova.messages import CallOptions
from nova.types import ChatRequest, Chunk, CompletionRequest, Message, Response

__all__ = ["Accepted", "Answered", "Outcome", "Pending", "Waiting"]


@dataclass
class Pending:
    request_id: str
    caller: Any
    kind: str
    driver: str
    request: ChatRequest | CompletionRequest
    options: CallOptions
    started: float  # monotonic
    deadline: float  # wall clock
    stages: tuple[str, ...]
    cache_key: str | None = None
    new_messages: tuple[Message, ...] = ()  # the turn to record in the conversation
    chunks: list[Chunk] = field(default_factory=list)
    done: tuple[Response | None, errors.NovaError | None, int, bool] | None = None  # waiting for chunks
    plugin_error: errors.NovaError | None = None  # an on_chunk hook failed: the call ends with it
    order: InOrder = field(default_factory=InOrder)  # puts pieces that overtook others back in order
    sent: int = 0  # StreamChunks sent to the caller (the final reply tells it how many to expect)
    lane: str | None = None  # the conversation whose turn queue the call is in
    dropped: tuple[Message, ...] = ()  # history left out of this call, to summarise after it
    summary_of: tuple[str, tuple[Message, ...]] | None = None  # an internal summary job: (conv, dropped)
    direct: bool = False  # the caller takes answers on its own lane (else the router relays them)
    via_router: bool = True  # the answer comes back to the router, which finishes the call
    accepted_at: float = 0.0  # time.time() when the router took the call


@dataclass(frozen=True)
class Accepted:
    """Send the job through `stages` (names: "cache", "ratelimit", "fallback")."""

    pending: Pending
    tokens: int


@dataclass(frozen=True)
class Waiting:
    """The call waits for the call running on its conversation; it starts from `take_ready()`."""

    pending: Pending


@dataclass(frozen=True)
class Answered:
    """Answer the caller now, without the pipeline (a plugin answered, or the call is invalid)."""

    response: Response | None
    error: errors.NovaError | None


@dataclass
class Outcome:
    """What finishing a call means: the answer and the events that describe it."""

    pending: Pending
    response: Response | None
    error: errors.NovaError | None
    events: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
