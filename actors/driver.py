"""DriverActor: owns one driver object and keeps thousands of its calls in flight.

The driver's I/O runs on an asyncio loop in a background thread. The thread never touches
Thespian: it appends outcomes to a queue and writes one byte to a socketpair, which the actor
watches with `ThespianWatch`; every `send` happens on the actor's own thread. Outcomes are sent
in slices, because one handler that sends thousands of messages slows Thespian's TCP transport
down badly (notes/thespian.md §3).
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import dataclasses
import socket
import threading
import time
from typing import Any

from thespian.actors import ThespianWatch, WatchMessage

from actors.base import NovaActor
from actors.protocol import CancelDriverCall, DriverCall, DriverInit, DriverResult, StreamPiece
from nova import errors
from nova.drivers import create_driver
from nova.drivers.base import Driver
from nova.types import ChatRequest, CompletionRequest

__all__ = ["DriverActor"]

SEND_SLICE = 64  # outcomes sent per handler run before yielding to the mailbox


class _Drain:
    pass


class DriverActor(NovaActor):
    init_message = DriverInit
    burst_messages = (WatchMessage, _Drain)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.name = self.kind = "?"
        self.driver: Driver | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._outbox: collections.deque[tuple[Any, Any]] = collections.deque()  # (address, message)
        self._tasks: dict[str, concurrent.futures.Future[Any]] = {}
        self._waiting: collections.deque[tuple[DriverCall, Any]] = collections.deque()
        self.max_concurrency = 1000
        self._drain_pending = False

    def handlers(self) -> dict[type, Any]:
        return {
            DriverInit: self.on_init,
            DriverCall: self.on_call,
            CancelDriverCall: self.on_cancel,
            WatchMessage: self.on_wake,
            _Drain: self.on_wake,
        }

    def sender_name(self) -> str:
        return f"driver:{self.name}"

    def status_info(self) -> dict[str, Any]:
        return {"in_flight": len(self._tasks), "queued": len(self._waiting)}

    def watch(self) -> Any:
        return ThespianWatch([self._wake_r.fileno()])

    def on_init(self, message: DriverInit, sender: Any) -> None:
        self.name, self.kind = message.name, message.kind
        self.max_concurrency = message.max_concurrency
        self.driver = create_driver(message.kind, **message.options)
        self.loop = asyncio.new_event_loop()
        threading.Thread(target=self.loop.run_forever, name=f"nova-driver-{self.name}", daemon=True).start()

    def on_call(self, call: DriverCall, sender: Any) -> None:
        if self.driver is None or self.loop is None:
            error = errors.DriverUnavailableError(
                f"driver {self.name!r} is not initialised", driver=self.name
            )
            self.send(sender, DriverResult(call.request_id, call.attempt, error=error))
            return
        if len(self._tasks) >= self.max_concurrency:
            self._waiting.append((call, sender))
            return
        self._launch(call, sender)

    def _launch(self, call: DriverCall, sender: Any) -> None:
        assert self.loop is not None
        model = call.request.model or (self.driver.default_model if self.driver else "")
        self.emit(
            "driver.call_started",
            request_id=call.request_id,
            driver=self.name,
            model=model,
            attempt=call.attempt,
            data={"stream": call.kind == "stream", "driver_kind": self.kind},
        )
        self._tasks[call.request_id] = asyncio.run_coroutine_threadsafe(self._run(call, sender), self.loop)

    def on_cancel(self, message: CancelDriverCall, sender: Any) -> None:
        task = self._tasks.get(message.request_id)
        if task is not None:
            task.cancel()  # the coroutine sees CancelledError and reports it
        self._waiting = collections.deque(
            (c, s) for c, s in self._waiting if c.request_id != message.request_id
        )

    # -- the I/O thread -------------------------------------------------------------------------

    async def _run(self, call: DriverCall, reply_to: Any) -> None:
        assert self.driver is not None
        started = time.monotonic()
        sent = 0
        result: DriverResult
        try:
            async with asyncio.timeout(max(0.0, call.deadline - time.time())):
                if call.kind == "stream":
                    assert isinstance(call.request, ChatRequest)
                    async for chunk in self.driver.stream(call.request):
                        self._post(call.stream_to, StreamPiece(call.request_id, sent, chunk))
                        sent += 1
                    result = DriverResult(call.request_id, call.attempt, chunks_sent=sent)
                elif call.kind == "chat":
                    assert isinstance(call.request, ChatRequest)
                    response = await self.driver.chat(call.request)
                    result = DriverResult(call.request_id, call.attempt, response=response)
                else:
                    assert isinstance(call.request, CompletionRequest)
                    response = await self.driver.complete(call.request)
                    result = DriverResult(call.request_id, call.attempt, response=response)
        except errors.NovaError as exc:
            result = DriverResult(call.request_id, call.attempt, error=exc, chunks_sent=sent)
        except TimeoutError:
            error: errors.NovaError = errors.RequestTimeoutError(
                "the call ran past its deadline", driver=self.name, model=call.request.model
            )
            result = DriverResult(call.request_id, call.attempt, error=error, chunks_sent=sent)
        except asyncio.CancelledError:
            error = errors.CancelledError(
                "the call was cancelled", driver=self.name, model=call.request.model
            )
            result = DriverResult(call.request_id, call.attempt, error=error, chunks_sent=sent)
        except Exception as exc:  # a driver bug must still answer the call
            error = errors.ServerError(
                f"driver {self.name!r} failed: {type(exc).__name__}: {exc}",
                driver=self.name,
                model=call.request.model,
                retryable=False,
            )
            result = DriverResult(call.request_id, call.attempt, error=error, chunks_sent=sent)
        self._post(reply_to, dataclasses.replace(result, latency_s=time.monotonic() - started))

    def _post(self, address: Any, message: Any) -> None:
        """Called on the I/O thread: queue for the actor thread and wake it."""
        self._outbox.append((address, message))
        try:
            self._wake_w.send(b"\0")
        except BlockingIOError:
            pass  # the socket buffer is full of wake-ups already: the actor will drain

    # -- back on the actor thread ---------------------------------------------------------------

    def on_wake(self, message: Any, sender: Any) -> None:
        self._drain_pending = False
        try:
            while self._wake_r.recv(4096):
                pass
        except BlockingIOError:
            pass
        for _ in range(SEND_SLICE):
            if not self._outbox:
                break
            address, item = self._outbox.popleft()
            self.send(address, item)
            if isinstance(item, DriverResult):
                self._finished(item)
        if self._outbox and not self._drain_pending:
            self._drain_pending = True
            self.send(self.myAddress, _Drain())  # continue after the mailbox had a turn

    def _finished(self, result: DriverResult) -> None:
        self._tasks.pop(result.request_id, None)
        model = result.response.model if result.response else (result.error.model if result.error else None)
        common = {
            "request_id": result.request_id,
            "driver": self.name,
            "model": model,
            "attempt": result.attempt,
            "duration_s": result.latency_s,
        }
        if result.error is None:
            usage = result.response.usage if result.response else None
            self.emit("driver.call_completed", usage=usage, **common)
        else:
            self.emit(
                "driver.call_failed",
                error_type=type(result.error).__name__,
                error_message=result.error.message,
                **common,
            )
        while self._waiting and len(self._tasks) < self.max_concurrency:
            call, sender = self._waiting.popleft()
            self._launch(call, sender)

    def on_exit(self) -> None:
        super().on_exit()
        if self.loop is not None and self.driver is not None:
            loop, driver = self.loop, self.driver
            try:
                asyncio.run_coroutine_threadsafe(driver.aclose(), loop).result(timeout=2)
            except Exception:  # the process is ending; nothing more to save
                pass
            loop.call_soon_threadsafe(loop.stop)
