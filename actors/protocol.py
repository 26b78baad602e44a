"""Messages between Nova's own actors (users speak `nova.messages`).

A call travels as one `Job` with a routing slip: the stages still to visit. Each stage forwards
the job to the next address on the slip, and the last one (fallback) answers the router with
`JobDone`. Plain dataclasses: they pickle about four times faster than pydantic models, and
these cross a process boundary on every hop.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Literal

from nova.errors import NovaError
from nova.messages import CallOptions
from nova.types import ChatRequest, Chunk, CompletionRequest, Response

__all__ = [
    "CancelDriverCall",
    "CancelJob",
    "DriverCall",
    "Drain",
    "DrainStatus",
    "DriverInit",
    "DriverResult",
    "DriversChanged",
    "Job",
    "JobDone",
    "Kind",
    "PauseTarget",
    "Release",
    "StageInit",
    "StoreResult",
    "StreamPiece",
]

Kind = Literal["chat", "complete", "stream"]


@dataclass(frozen=True, slots=True)
class Job:
    request_id: str
    kind: Kind
    driver: str  # the configured driver name of the primary target
    request: ChatRequest | CompletionRequest
    options: CallOptions
    deadline: float  # time.time() by which the caller must have an answer
    router: Any  # the address that gets JobDone and stream chunks
    slip: tuple[Any, ...] = ()  # addresses still to visit, the next one first
    cache_key: str | None = None
    tokens: int = 0  # the rate limiter's estimate

    def forward(self) -> tuple[Any, Job]:
        """The next stage and the job as that stage receives it."""
        return self.slip[0], replace(self, slip=self.slip[1:])


@dataclass(frozen=True, slots=True)
class JobDone:
    request_id: str
    response: Response | None = None
    error: NovaError | None = None
    chunks_sent: int = 0  # a stream's chunks already sent to the router
    from_cache: bool = False


@dataclass(frozen=True, slots=True)
class CancelJob:
    request_id: str


@dataclass(frozen=True, slots=True)
class DriverCall:
    request_id: str
    attempt: int
    kind: Kind
    request: ChatRequest | CompletionRequest
    deadline: float
    stream_to: Any = None  # where chunks go (the router)


@dataclass(frozen=True, slots=True)
class DriverResult:
    request_id: str
    attempt: int
    response: Response | None = None
    error: NovaError | None = None
    chunks_sent: int = 0
    latency_s: float = 0.0


@dataclass(frozen=True, slots=True)
class CancelDriverCall:
    request_id: str


@dataclass(frozen=True, slots=True)
class DriverInit:
    name: str
    kind: str
    options: dict[str, Any]
    max_concurrency: int


@dataclass(frozen=True, slots=True)
class DriversChanged:
    """The current address of every driver actor; sent to the fallback stage after restarts."""

    drivers: dict[str, Any]
    down: tuple[str, ...] = ()  # drivers that just died: fail what they held


@dataclass(frozen=True, slots=True)
class StageInit:
    config: Any  # NovaConfig
    wiring: dict[str, Any] = field(default_factory=dict)  # addresses by role


@dataclass(frozen=True, slots=True)
class StoreResult:
    """Router → cache: the outcome of a job the cache let through (errors are never stored)."""

    cache_key: str
    response: Response | None
    error: NovaError | None = None
    ttl_s: float | None = None


@dataclass(frozen=True, slots=True)
class Release:
    """Router → rate limiter: a call it admitted is over."""

    request_id: str
    tokens: int | None


@dataclass(frozen=True, slots=True)
class PauseTarget:
    """Fallback → rate limiter: the service said to slow down (a 429 on any attempt)."""

    driver: str
    model: str
    error: NovaError


@dataclass(frozen=True, slots=True)
class StreamPiece:
    """Driver or cache → router: one chunk of a stream."""

    request_id: str
    index: int
    chunk: Chunk


@dataclass(frozen=True, slots=True)
class Drain:
    """`nova run` → router: refuse new calls from now on; the reply says how many are in flight."""


@dataclass(frozen=True, slots=True)
class DrainStatus:
    in_flight: int
