"""Messages between Nova's own actors (users speak `nova.messages`).

On the lanes (one call's hops):
- `Job`: a call on its way through the stages; `slip` names the stages still to visit.
- `DriverCall` / `Took` / `DriverResult`: one attempt, between the fallback stage and a driver.
- `Answer` and `Piece`: the final answer and a stream's chunks, to whoever the job says
  (`reply_to`: the caller's own lane, or the router when the call needs it afterwards).
- `Credit` and `Cancel`: from the caller of a stream back to the driver (or along the stages).
- `Store`, `Release`, `PauseTarget`: outcomes, to the cache, the rate limiter and the limiter.
- `Probe` / `Holding`: after a stage died, a caller asks the router, the stages and the drivers
  which of its calls they still hold.

Through Thespian (the control plane): `StageInit`, `DriverInit`, `DriversChanged`, `StageDown`,
`Drain`. Plain dataclasses (without slots, which pickle slower): they pickle about four times
faster than pydantic models.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Literal

from nova.errors import NovaError
from nova.messages import CallOptions
from nova.types import Attempt, ChatRequest, Chunk, CompletionRequest, Response

__all__ = [
    "Answer",
    "Cancel",
    "Credit",
    "Drain",
    "DrainStatus",
    "DriverCall",
    "DriverInit",
    "DriverResult",
    "DriversChanged",
    "Holding",
    "Job",
    "Kind",
    "PauseTarget",
    "Piece",
    "Probe",
    "Release",
    "StageDown",
    "StageInit",
    "StageLost",
    "Store",
    "Taken",
    "Took",
    "driver_lane",
]

Kind = Literal["chat", "complete", "stream"]
DRIVERS = "drivers"  # in a probe's slip: every driver lane (and the relay) of this node
STREAM_WINDOW = 64  # chunks a driver may send ahead of what the caller has taken
PROBE_WAIT_S = 0.5  # the longest a caller waits for the answers to a `Probe`; then it decides


def driver_lane(driver: str, index: int = 0) -> str:
    """The lane name of a driver actor (one per process of the driver's pool)."""
    return f"driver-{driver}-{index}"


@dataclass(frozen=True)
class Job:
    request_id: str
    kind: Kind
    driver: str  # the configured driver name of the primary target
    request: ChatRequest | CompletionRequest
    options: CallOptions
    deadline: float  # time.time() by which the caller must have an answer
    reply_to: str  # the lane that gets the answer and the chunks
    slip: tuple[str, ...]  # stages still to visit, the next one first
    stages: tuple[str, ...]  # every stage of the call: who must hear its outcome
    started: float  # time.time() when the router took the call (the call's latency)
    via_router: bool = False  # the router finishes the call (plugins, conversation): no events here
    cache_key: str | None = None
    tokens: int = 0  # the rate limiter's estimate

    def forward(self) -> tuple[str, Job]:
        """The next stage and the job as that stage receives it."""
        return self.slip[0], replace(self, slip=self.slip[1:])


@dataclass(frozen=True)
class Answer:
    request_id: str
    response: Response | None = None
    error: NovaError | None = None
    chunks: int = 0  # a stream's pieces sent before this answer
    from_cache: bool = False


@dataclass(frozen=True)
class Piece:
    """One chunk of a stream; `source` is the lane to send `Credit` and `Cancel` to."""

    request_id: str
    index: int
    chunk: Chunk
    source: str = ""


@dataclass(frozen=True)
class Credit:
    request_id: str
    chunks: int


@dataclass(frozen=True)
class Cancel:
    request_id: str


@dataclass(frozen=True)
class DriverCall:
    job: Job
    attempt: int
    target: str  # the configured driver name of this attempt
    request: ChatRequest | CompletionRequest  # with this attempt's model
    deadline: float  # this attempt's own deadline (time.time())
    prior: tuple[Attempt, ...] = ()  # the attempts before this one, for the answer's `attempts`


@dataclass(frozen=True)
class Took:
    """Driver → fallback: the attempt reached the driver (it is written before the request goes
    upstream). An attempt its dead driver never took can safely go again."""

    request_id: str
    attempt: int


@dataclass(frozen=True)
class DriverResult:
    request_id: str
    attempt: int
    error: NovaError | None = None  # None: the driver answered the caller
    model: str = ""
    chunks_sent: int = 0
    latency_s: float = 0.0
    response: Response | None = None  # success: what the attempt returned (usage, rate headers)


@dataclass(frozen=True)
class Store:
    """The outcome of a call the cache let through (errors are never stored, but release the
    calls that waited for it)."""

    cache_key: str
    response: Response | None
    error: NovaError | None = None
    ttl_s: float | None = None


@dataclass(frozen=True)
class Release:
    """A call the rate limiter admitted is over; `tokens` is what it really used."""

    request_id: str
    tokens: int | None


@dataclass(frozen=True)
class PauseTarget:
    """The service said to slow down: rest this target. After a failed attempt `error` says how
    long (a 429's Retry-After or headers); after a success, `seconds` (rate headers at zero)."""

    driver: str
    model: str
    error: NovaError | None = None
    seconds: float = 0.0


@dataclass(frozen=True)
class Taken:
    """Router → caller: the call is on its way. `held`: the router keeps it until the end (its
    answer comes back through the router), so the router's death loses it."""

    request_id: str
    held: bool = False


@dataclass(frozen=True)
class StageLost:
    """Router → callers: a stage died and the calls inside it are lost; fail those not answered."""

    stage: str


@dataclass(frozen=True)
class Probe:
    """Caller → router → each stage in the order calls visit them → the drivers: which of these
    calls do you hold? Each answers the caller (`Holding`) and passes the probe on along the lane
    its jobs take, so a job it passed on before reaches the next one before the probe does. Sent
    only after a stage died: nothing on the common path."""

    token: int
    caller: str  # the lane the answers go to
    request_ids: frozenset[str]
    slip: tuple[str, ...] = ()  # where the probe goes next (the router fills it in)


@dataclass(frozen=True)
class Holding:
    """The answer to a `Probe`: `peer` holds `held` of the calls asked about, and passed the probe
    on to `asked`, whose answers are to come. A peer the probe could not reach (not running) is
    answered for by the one that tried, holding nothing."""

    token: int
    peer: str
    held: tuple[str, ...]
    asked: tuple[str, ...] = ()


@dataclass(frozen=True)
class DriverInit:
    name: str
    kind: str
    options: dict[str, Any]
    max_concurrency: int
    config: Any  # NovaConfig: the lane directory, prices
    index: int = 0  # position in the driver's pool


@dataclass(frozen=True)
class DriversChanged:
    """The drivers that are up (by driver name: the address of one process); sent after restarts."""

    drivers: dict[str, Any]
    down: tuple[str, ...] = ()  # drivers that just died


@dataclass(frozen=True)
class StageInit:
    config: Any  # NovaConfig


@dataclass(frozen=True)
class StageDown:
    """PipelineSupervisor → router: a stage died (and was restarted)."""

    stage: str


@dataclass(frozen=True)
class Drain:
    """`nova run` → router: refuse new calls from now on; the reply says how many are in flight."""


@dataclass(frozen=True)
class DrainStatus:
    in_flight: int
