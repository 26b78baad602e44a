"""DriverActor: owns one driver object and keeps thousands of its calls in flight.

Attempts arrive on the actor's lane from the fallback stage and run as tasks on the lane's
asyncio loop, beside the driver's HTTP client. A successful attempt is answered here, straight
to the caller's lane, and its outcome goes in the same loop tick to the stages that must know:
the fallback stage (the breaker), the cache (store) and the rate limiter (release, with the real
usage). A failed attempt goes back to the fallback stage, which decides what comes next — unless
that stage has died, and then the caller gets the error from here.

A stream is sent chunk by chunk under credit: the caller grants `Credit` as it takes chunks, and
with no credit left the driver stops reading the upstream. A `Cancel` ends the task at once and
closes the upstream connection, and so does the death of the caller's process: the driver
connects to each caller's lane as a call starts, so it learns at once when the caller has gone.
"""

from __future__ import annotations

import asyncio
import functools
import time
from dataclasses import dataclass, field
from typing import Any

from nova import errors
from nova.actors.base import PARENT
from nova.actors.lane_actor import LaneActor
from nova.actors.protocol import (
    STREAM_WINDOW,
    Cancel,
    Credit,
    DriverCall,
    DriverInit,
    DriverResult,
    Piece,
    Release,
    Store,
    Took,
    driver_lane,
)
from nova.answers import Price
from nova.drivers import create_driver
from nova.drivers.base import Driver
from nova.events import server_fields
from nova.types import Attempt, ChatRequest, Chunk, CompletionRequest, Response, collect_chunks

__all__ = ["DriverActor"]

FALLBACK = "fallback"
RELAY = "relay"  # a call from another node: everything about it goes back through the relay
CALLER = "caller-"  # the lanes of the facade's bridges (actors/bridge.py)
OUTCOME_DELAY_S = 0.002  # breaker and usage outcomes wait this long: after the answer, in batches


@dataclass
class _Running:
    call: DriverCall
    task: asyncio.Task[None] | None = None
    credit: int = STREAM_WINDOW
    more: asyncio.Event = field(default_factory=asyncio.Event)


class DriverActor(LaneActor):
    init_message = DriverInit

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.name = self.kind = "?"
        self.driver: Driver | None = None
        self.max_concurrency = 1000
        self.running: dict[str, _Running] = {}
        self.waiting: list[DriverCall] = []
        self.arrived: list[tuple[str, DriverCall]] = []  # this tick's attempts, not yet taken
        self.fallback_up = True
        self.orphans: set[str] = set()  # calls whose fallback stage died: their failures are answered here
        self.price: Price | None = None
        self.server: dict[str, Any] = {}

    def handlers(self) -> dict[type, Any]:
        return {**super().handlers(), DriverInit: self.on_init}

    def entitled(self) -> dict[type, str]:
        return {**super().entitled(), DriverInit: PARENT}

    def sender_name(self) -> str:
        return f"driver:{self.name}"

    def status_info(self) -> dict[str, Any]:
        return {"in_flight": len(self.running), "queued": len(self.waiting)}

    def on_init(self, message: DriverInit, sender: Any) -> None:
        from nova.features import pricer

        self.name, self.kind = message.name, message.kind
        self.max_concurrency = message.max_concurrency
        self.price = pricer(message.config)
        self.driver = create_driver(message.kind, **message.options)
        self.server = server_fields(getattr(self.driver, "base_url", None))
        self.lane = driver_lane(message.name, message.index)
        self.open_lane(message.config.system.lane_dir, self.lane)

    # -- the lane -------------------------------------------------------------------------------

    def on_lane(self, peer: str, message: Any) -> None:
        if isinstance(message, DriverCall):
            if peer == FALLBACK:
                self.fallback_up = True
            assert self.hub is not None
            if not self.arrived:
                self.hub.loop.call_soon(self._take_arrived)
            self.arrived.append((peer, message))
        elif isinstance(message, Credit):
            running = self.running.get(message.request_id)
            if running is not None:
                running.credit += message.chunks
                running.more.set()
        elif isinstance(message, Cancel):
            self._cancel(message.request_id)

    def holds(self, request_id: str) -> bool:
        return request_id in self.running or any(c.job.request_id == request_id for c in self._queued())

    def _queued(self) -> list[DriverCall]:
        return self.waiting + [c for _, c in self.arrived]

    def _take_arrived(self) -> None:
        """Attempts count as running here, and their requests go out, only once the fallback stage
        has been told (`Took`): if this process dies before, they go again, and never twice."""
        assert self.hub is not None
        arrived, self.arrived = self.arrived, []
        by_peer: dict[str, list[DriverCall]] = {}
        for peer, call in arrived:
            by_peer.setdefault(peer, []).append(call)
        for peer, calls in by_peer.items():
            took = [Took(call.job.request_id, call.attempt) for call in calls]
            self.hub.send_now(peer, took, functools.partial(self._take, calls))

    def _take(self, calls: list[DriverCall]) -> None:
        for call in calls:
            if len(self.running) >= self.max_concurrency:
                self.waiting.append(call)
            else:
                self._launch(call)

    def on_lost(self, peer: str, since: float) -> None:
        if peer == FALLBACK:  # answer failures to the callers ourselves until it is back
            self.fallback_up = False
            # and those of its calls for good: its successor does not know them
            self.orphans.update(c.job.request_id for c in self._calls() if c.job.reply_to != RELAY)
        elif peer.startswith(CALLER):  # no upstream request outlives its caller
            gone = [c.job.request_id for c in self._calls() if c.job.reply_to == peer]
            for request_id in gone:
                self._cancel(request_id)

    def _calls(self) -> list[DriverCall]:
        return [r.call for r in self.running.values()] + self._queued()

    def _cancel(self, request_id: str) -> None:
        running = self.running.get(request_id)
        if running is not None and running.task is not None:
            running.task.cancel()  # the task closes the upstream response and reports
        if running is None:
            self.orphans.discard(request_id)
        self.waiting = [c for c in self.waiting if c.job.request_id != request_id]
        self.arrived = [(p, c) for p, c in self.arrived if c.job.request_id != request_id]

    def _launch(self, call: DriverCall) -> None:
        assert self.hub is not None
        model = call.request.model or (self.driver.default_model if self.driver else "")
        self.emit(
            "driver.call_started",
            request_id=call.job.request_id,
            driver=self.name,
            model=model,
            attempt=call.attempt,
            data={"stream": call.job.kind == "stream", "driver_kind": self.kind, **self.server},
        )
        if call.job.reply_to.startswith(CALLER):
            self.hub.watch(call.job.reply_to)  # its death is told even before its answer is sent
        running = _Running(call)
        self.running[call.job.request_id] = running
        running.task = self.hub.loop.create_task(self._run(running))

    # -- one attempt ----------------------------------------------------------------------------

    async def _run(self, running: _Running) -> None:
        call = running.call
        job = call.job
        started = time.monotonic()
        chunks: list[Chunk] = []
        response: Response | None = None
        error: errors.NovaError | None = None
        try:
            assert self.driver is not None
            async with asyncio.timeout(max(0.0, call.deadline - time.time())):
                if job.kind == "stream":
                    response = await self._stream(running, chunks)
                elif job.kind == "chat":
                    assert isinstance(call.request, ChatRequest)
                    response = await self.driver.chat(call.request)
                else:
                    assert isinstance(call.request, CompletionRequest)
                    response = await self.driver.complete(call.request)
        except errors.NovaError as exc:
            exc.driver = self.name  # the driver object knows only its kind; callers know this name
            error = exc
        except TimeoutError:
            error = errors.RequestTimeoutError(
                "the call ran past its deadline", driver=self.name, model=call.request.model
            )
        except asyncio.CancelledError:
            error = errors.CancelledError(
                "the call was cancelled", driver=self.name, model=call.request.model
            )
        except Exception as exc:  # a driver bug must still answer the call
            error = errors.ServerError(
                f"driver {self.name!r} failed: {type(exc).__name__}: {exc}",
                driver=self.name,
                model=call.request.model,
                retryable=False,
            )
        self._finished(running, response, error, len(chunks), time.monotonic() - started)

    async def _stream(self, running: _Running, chunks: list[Chunk]) -> Response:
        assert self.driver is not None and self.hub is not None
        call = running.call
        request_id = call.job.request_id
        stream = self.driver.stream(call.request)
        try:
            async for chunk in stream:
                while running.credit <= 0:  # the caller is behind: read no further upstream
                    running.more.clear()
                    await running.more.wait()
                running.credit -= 1
                self.hub.send(call.job.reply_to, Piece(request_id, len(chunks), chunk, self.lane))
                if not chunks and not call.job.via_router:  # the router sees the others' first chunk
                    self.emit(
                        "stream.first_chunk",
                        request_id=request_id,
                        driver=call.job.driver,
                        model=call.job.request.model or None,  # its metrics row: the requested model
                        duration_s=max(0.0, time.time() - call.job.started),
                    )
                chunks.append(chunk)
        finally:
            await stream.aclose()  # type: ignore[attr-defined]
        return collect_chunks(chunks, driver=self.name)

    def _finished(
        self,
        running: _Running,
        response: Response | None,
        error: errors.NovaError | None,
        chunks: int,
        latency: float,
    ) -> None:
        assert self.hub is not None
        call = running.call
        job = call.job
        self.running.pop(job.request_id, None)
        orphan = job.request_id in self.orphans
        self.orphans.discard(job.request_id)
        common = {
            "request_id": job.request_id,
            "driver": self.name,
            "model": call.request.model or (self.driver.default_model if self.driver else None),
            "attempt": call.attempt,
            "duration_s": latency,
        }
        if response is not None:
            data = {"response_model": response.model, "response_id": response.id}
            self.emit("driver.call_completed", usage=response.usage, data=data, **common)
            self._answer(call, response, chunks, latency)
        else:
            assert error is not None
            self.emit(
                "driver.call_failed",
                error_type=type(error).__name__,
                error_message=error.message,
                **common,
            )
            result = DriverResult(
                job.request_id, call.attempt, error=error, chunks_sent=chunks, latency_s=latency
            )
            if job.reply_to == RELAY:
                self.hub.send(RELAY, result)
            elif self.fallback_up and not orphan:
                self.hub.send(FALLBACK, result)
            else:  # nobody to decide what comes next: the caller gets the error
                self.end_call(job, error=error, chunks=chunks)
        while self.waiting and len(self.running) < self.max_concurrency:
            self._launch(self.waiting.pop(0))

    def _answer(self, call: DriverCall, response: Response, chunks: int, latency: float) -> None:
        """The attempt succeeded: the caller gets its answer from here, the stages their outcome."""
        assert self.hub is not None
        job = call.job
        model = response.model or call.request.model
        cost = self.price(call.target, model, response.usage) if self.price is not None else None
        attempt = Attempt(
            driver=call.target,
            model=call.request.model or model,
            ok=True,
            latency_s=latency,
            usage=response.usage,
            cost_usd=cost,
        )
        response = response.model_copy(update={"attempts": (*call.prior, attempt)})
        self.end_call(job, response, chunks=chunks, price=self.price)
        relayed = job.reply_to == RELAY
        self.hub.send_soon(
            RELAY if relayed else FALLBACK,
            DriverResult(
                job.request_id,
                call.attempt,
                model=model,
                chunks_sent=chunks,
                latency_s=latency,
                response=Response(model=model, usage=response.usage, rate_limits=response.rate_limits),
            ),
            OUTCOME_DELAY_S,
        )
        if job.cache_key is not None and "cache" in job.stages:  # also answers the calls waiting on it
            self.hub.send_soon(
                RELAY if relayed else "cache",
                Store(job.cache_key, response, None, job.options.ttl_s),
                OUTCOME_DELAY_S,
            )
        if "ratelimit" in job.stages:
            self.hub.send_soon(
                RELAY if relayed else "ratelimit",
                Release(job.request_id, response.usage.total_tokens),
                OUTCOME_DELAY_S,
            )

    def on_exit(self) -> None:
        if self.hub is not None and self.driver is not None:
            driver, loop = self.driver, self.hub.loop
            try:
                asyncio.run_coroutine_threadsafe(driver.aclose(), loop).result(timeout=2)
            except Exception:  # the process is ending; nothing more to save
                pass
        super().on_exit()
