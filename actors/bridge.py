"""Carries calls from ordinary Python code (threads, asyncio tasks) to the router and back.

The bridge owns this process's lane: calls go to the router's lane, and answers come straight
from whoever ends each call (a driver, the cache, the limiter, the fallback stage or the router).
Thousands of callers need no threads of their own: threads share one lane on a thread of its own,
and each answer is routed by request id to the waiting thread (a queue); asyncio tasks use a lane
on their own event loop, so their calls and answers need no hand-off between threads.

A stream's caller grants credit to the chunks' source as it takes them, so a slow reader slows
the upstream instead of filling memory; a consumer that stops early cancels the call, straight
at the driver once a chunk has named it. A router that dies fails the calls it may have held at
once, and so does a stage the router reports lost; a router that is restarting is retried until
the call's deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import queue
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

from actors.lanes import LaneHub
from actors.protocol import STREAM_WINDOW, Answer, Cancel, Credit, Piece, StageLost, Taken
from nova import errors
from nova.types import Chunk, Response

__all__ = ["Bridge"]

ROUTER = "router"
RETRY_S = 0.02  # how soon a call the router could not take (it is restarting) is sent again
_names = itertools.count()


def _timeout(message: Any, timeout: float) -> errors.RequestTimeoutError:
    given = message.options.timeout_s  # the caller waits a little longer, for the last hop
    return errors.RequestTimeoutError(
        f"no answer from Nova within the call's timeout of {given:g}s"
        if given is not None
        else f"no answer from Nova within {timeout:.3g}s",
        driver=message.options.driver,
        model=message.request.model or None,
    )


def _result(answer: Any) -> Response:
    if answer.error is not None:
        raise answer.error
    assert answer.response is not None
    return answer.response  # type: ignore[no-any-return]


class _InOrder:
    """A stream's messages put back in order: chunks by index, and the answer once the `chunks`
    it counts have come (an error from the fallback stage can overtake the driver's last chunks)."""

    def __init__(self) -> None:
        self.next = 0
        self.early: dict[int, Chunk] = {}
        self.final: Answer | None = None

    def add(self, message: Piece | Answer) -> list[Chunk]:
        if isinstance(message, Piece):
            self.early[message.index] = message.chunk
        else:
            self.final = message
        ready = []
        while self.next in self.early:
            ready.append(self.early.pop(self.next))
            self.next += 1
        return ready

    @property
    def done(self) -> bool:
        return self.final is not None and self.next >= self.final.chunks


class _Waiter:
    __slots__ = ("hub", "loop", "inbox", "stream", "message", "deadline", "source", "answered", "taken")

    def __init__(
        self,
        hub: LaneHub,
        loop: asyncio.AbstractEventLoop | None,
        inbox: Any,
        message: Any,
        timeout: float,
        stream: bool,
    ) -> None:
        self.hub = hub  # the lane the call went out on
        self.loop = loop  # None: a thread waits on `inbox`, a queue
        self.inbox = inbox  # a queue.SimpleQueue, an asyncio.Future or an asyncio.Queue
        self.stream = stream
        self.message = message
        self.deadline = time.monotonic() + timeout
        self.source = ""  # a stream's chunk source: where credit and cancels go
        self.answered = False
        self.taken: bool | None = None  # None: the router has not said; True: it holds the call


class Bridge:
    def __init__(self, lane_dir: str) -> None:
        self.lane_dir = lane_dir
        self._waiters: dict[str, _Waiter] = {}
        self.hub = self._new_hub(None)  # for threads
        self._loop_hubs: dict[asyncio.AbstractEventLoop, LaneHub] = {}

    def _new_hub(self, loop: asyncio.AbstractEventLoop | None) -> LaneHub:
        name = f"caller-{os.getpid()}-{next(_names)}"
        hub = LaneHub(self.lane_dir, name, self._on_message, self._on_lost, loop=loop)
        hub.on_undelivered = lambda peer, messages, reason: self._on_undelivered(hub, peer, messages, reason)
        hub.start()
        return hub

    def _loop_hub(self) -> LaneHub:
        """The lane of the running event loop (made on its first call; lanes of closed loops go)."""
        loop = asyncio.get_running_loop()
        hub = self._loop_hubs.get(loop)
        if hub is None:
            for old in [old for old in self._loop_hubs if old.is_closed()]:
                self._loop_hubs.pop(old).close()
            hub = self._loop_hubs[loop] = self._new_hub(loop)
        return hub

    # -- synchronous ----------------------------------------------------------------------------

    def call(self, message: Any, timeout: float) -> Response:
        inbox: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._send(message, _Waiter(self.hub, None, inbox, message, timeout, False))
        try:
            return _result(inbox.get(timeout=timeout))
        except queue.Empty:
            raise _timeout(message, timeout) from None
        finally:
            self._waiters.pop(message.request_id, None)

    def stream(self, message: Any, timeout: float) -> Iterator[Chunk]:
        inbox: queue.SimpleQueue[Any] = queue.SimpleQueue()
        waiter = _Waiter(self.hub, None, inbox, message, timeout, True)
        self._send(message, waiter)
        finished = False
        try:
            order = _InOrder()
            while True:
                try:
                    item = inbox.get(timeout=max(0.0, waiter.deadline - time.monotonic()))
                except queue.Empty:
                    finished = True
                    raise _timeout(message, timeout) from None
                for chunk in order.add(item):
                    yield chunk
                    self._took_chunk(waiter, order.next)
                if order.done:
                    finished = True
                    _result(order.final)
                    return
        finally:
            self._end_stream(message.request_id, waiter, finished)

    # -- asynchronous ---------------------------------------------------------------------------

    async def acall(self, message: Any, timeout: float) -> Response:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._send(message, _Waiter(self._loop_hub(), loop, future, message, timeout, False))
        try:
            async with asyncio.timeout(timeout):
                return _result(await future)
        except errors.RequestTimeoutError:  # Nova's own answer, not the wait's end
            raise
        except TimeoutError:
            raise _timeout(message, timeout) from None
        finally:
            self._waiters.pop(message.request_id, None)

    async def astream(self, message: Any, timeout: float) -> AsyncIterator[Chunk]:
        inbox: asyncio.Queue[Any] = asyncio.Queue()
        waiter = _Waiter(self._loop_hub(), asyncio.get_running_loop(), inbox, message, timeout, True)
        self._send(message, waiter)
        finished = False
        try:
            async with asyncio.timeout(timeout):
                order = _InOrder()
                while True:
                    for chunk in order.add(await inbox.get()):
                        yield chunk
                        self._took_chunk(waiter, order.next)
                    if order.done:
                        finished = True
                        _result(order.final)
                        return
        except errors.RequestTimeoutError:
            raise
        except TimeoutError:
            finished = True
            raise _timeout(message, timeout) from None
        finally:
            self._end_stream(message.request_id, waiter, finished)

    # -- both -----------------------------------------------------------------------------------

    def _send(self, message: Any, waiter: _Waiter) -> None:
        self._waiters[message.request_id] = waiter
        waiter.hub.post(ROUTER, message)

    def _took_chunk(self, waiter: _Waiter, taken: int) -> None:
        """Grant credit for what the consumer has taken, half a window at a time."""
        if taken % (STREAM_WINDOW // 2) == 0 and waiter.source:
            waiter.hub.post(waiter.source, Credit(waiter.message.request_id, STREAM_WINDOW // 2))

    def _end_stream(self, request_id: str, waiter: _Waiter, finished: bool) -> None:
        self._waiters.pop(request_id, None)
        if not finished:  # the consumer stopped early: stop the upstream call too
            if waiter.source:
                waiter.hub.post(waiter.source, Cancel(request_id))
            waiter.hub.post(ROUTER, Cancel(request_id))

    # -- the lane thread ------------------------------------------------------------------------

    def _on_message(self, peer: str, message: Any) -> None:
        if isinstance(message, StageLost):
            self._fail(
                f"Nova's {message.stage} stage died while the call may have been in it", lambda w: True
            )
            return
        waiter = self._waiters.get(getattr(message, "request_id", ""))
        if waiter is None:
            return  # answered already, or its caller gave up
        if isinstance(message, Taken):
            waiter.taken = message.held
            return
        if isinstance(message, Piece) and not waiter.source:
            waiter.source = message.source
        if isinstance(message, Answer):
            waiter.answered = True
            if not waiter.stream:
                del self._waiters[message.request_id]
        self._deliver(waiter, message)

    def _deliver(self, waiter: _Waiter, message: Any) -> None:
        if waiter.loop is None:
            waiter.inbox.put(message)
        elif waiter.loop is asyncio._get_running_loop():  # the task's own loop: no hand-off
            if isinstance(waiter.inbox, asyncio.Future):
                _resolve(waiter.inbox, message)
            else:
                waiter.inbox.put_nowait(message)
        elif isinstance(waiter.inbox, asyncio.Future):
            with contextlib.suppress(RuntimeError):  # the caller's loop has closed
                waiter.loop.call_soon_threadsafe(_resolve, waiter.inbox, message)
        else:
            with contextlib.suppress(RuntimeError):
                waiter.loop.call_soon_threadsafe(waiter.inbox.put_nowait, message)

    def _on_lost(self, peer: str) -> None:
        if peer == ROUTER:  # calls it passed on are answered by others; the rest are lost
            self._fail("Nova's router died while it held the call", lambda w: w.taken is not False)

    def _fail(self, reason: str, lost: Any) -> None:
        for request_id, waiter in list(self._waiters.items()):
            if not waiter.answered and lost(waiter):
                error = errors.DriverUnavailableError(reason, retryable=True)
                self._on_message("", Answer(request_id, error=error))

    def _on_undelivered(self, hub: LaneHub, peer: str, messages: list[Any], reason: str) -> None:
        for message in messages:
            request_id = getattr(message, "request_id", "")
            waiter = self._waiters.get(request_id)
            if waiter is None or waiter.message is not message:
                continue
            if peer == ROUTER and "not running" in reason and time.monotonic() + RETRY_S < waiter.deadline:
                hub.loop.call_later(RETRY_S, hub.send, ROUTER, message)  # it is restarting
            else:
                error: errors.NovaError = (
                    errors.InvalidInputError(f"the call {reason}")
                    if "cannot be sent" in reason
                    else errors.DriverUnavailableError(f"Nova's router {reason}", retryable=True)
                )
                self._on_message("", Answer(request_id, error=error))

    def close(self) -> None:
        self.hub.close()
        for hub in self._loop_hubs.values():
            hub.close()
        self._loop_hubs.clear()


def _resolve(future: asyncio.Future[Any], value: Any) -> None:
    if not future.done():
        future.set_result(value)
