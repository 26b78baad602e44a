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
the call's deadline. The bridge also watches the system's root and admin processes (pidfds on
its lane's loop): when either dies, the tree is gone with it, so every call still waiting fails
at once with a retryable `NotReachableError`, and so does every later call on this bridge.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import queue
import select
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

from nova import errors
from nova.actors.lanes import LaneHub
from nova.actors.protocol import STREAM_WINDOW, Answer, Cancel, Credit, Piece, StageLost, Taken
from nova.chunks import InOrder
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


class _InOrder(InOrder):
    """A stream's messages in order: the chunks, then the answer once the `chunks` it counts have
    come (an error from the fallback stage can overtake the driver's last chunks)."""

    final: Answer | None = None

    def take(self, message: Piece | Answer) -> list[Chunk]:
        if isinstance(message, Piece):
            return self.add(message.index, message.chunk)
        self.final = message
        return []

    @property
    def done(self) -> bool:
        return self.final is not None and self.next >= self.final.chunks


class _Waiter:
    __slots__ = (
        "hub",
        "loop",
        "inbox",
        "stream",
        "message",
        "sent",
        "deadline",
        "source",
        "answered",
        "taken",
    )

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
        self.sent = time.monotonic()
        self.deadline = self.sent + timeout
        self.source = ""  # a stream's chunk source: where credit and cancels go
        self.answered = False
        self.taken: bool | None = None  # None: the router has not said; True: it holds the call


class Bridge:
    def __init__(self, lane_dir: str) -> None:
        self.lane_dir = lane_dir
        self._waiters: dict[str, _Waiter] = {}
        self._router_lost: dict[LaneHub, float] = {}  # when each lane last lost the router
        self.hub = self._new_hub(None)  # for threads
        self._loop_hubs: dict[asyncio.AbstractEventLoop, LaneHub] = {}
        self.lost: errors.NotReachableError | None = None  # set once the system has gone
        self.on_gone: Callable[[], None] = lambda: None  # then called once (lane thread)
        self._pidfds: list[int] = []

    def watch(self, processes: dict[str, int], where: str = "") -> None:
        """Fail every call, waiting or later, once any of `processes` (name -> pid) has exited."""
        for name, pid in processes.items():
            if pid <= 0:
                continue
            try:
                fd = os.pidfd_open(pid)
            except ProcessLookupError:
                self._system_lost(name, pid, where)
                return
            except OSError:  # no pidfds here: lanes still tell about the router
                continue
            self._pidfds.append(fd)
            self.hub.call(self.hub.loop.add_reader, fd, self._on_exit, fd, name, pid, where)

    def _on_exit(self, fd: int, name: str, pid: int, where: str) -> None:
        if not select.select([fd], [], [], 0)[0]:
            return
        self.hub.loop.remove_reader(fd)
        self._system_lost(name, pid, where)

    def _system_lost(self, name: str, pid: int, where: str) -> None:
        if self.lost is not None:  # the root and the admin die together: once is enough
            return
        at = f" at {where}" if where else ""
        self.lost = errors.NotReachableError(
            f"Nova{at} is not reachable: its {name} process (pid {pid}) has died", retryable=True
        )
        for request_id, waiter in list(self._waiters.items()):
            if not waiter.answered:
                self._on_message("", Answer(request_id, error=self.lost))
        self.on_gone()

    def _new_hub(self, loop: asyncio.AbstractEventLoop | None) -> LaneHub:
        name = f"caller-{os.getpid()}-{next(_names)}"
        hub = LaneHub(self.lane_dir, name, self._on_message, loop=loop)
        hub.on_lost = lambda peer, since: self._on_lost(hub, peer, since)
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
        waiter = _Waiter(self.hub, None, inbox, message, timeout, False)
        self._send(message, waiter)
        try:
            return _result(inbox.get(timeout=timeout))
        except queue.Empty:
            raise _timeout(message, timeout) from None
        finally:
            self._done(waiter)

    def stream(self, message: Any, timeout: float) -> Iterator[Chunk]:
        inbox: queue.SimpleQueue[Any] = queue.SimpleQueue()
        waiter = _Waiter(self.hub, None, inbox, message, timeout, True)
        self._send(message, waiter)
        try:
            order = _InOrder()
            while True:
                try:
                    item = inbox.get(timeout=max(0.0, waiter.deadline - time.monotonic()))
                except queue.Empty:
                    raise _timeout(message, timeout) from None
                for chunk in order.take(item):
                    yield chunk
                    self._took_chunk(waiter, order.next)
                if order.done:
                    _result(order.final)
                    return
        finally:
            self._end_stream(waiter)

    # -- asynchronous ---------------------------------------------------------------------------

    async def acall(self, message: Any, timeout: float) -> Response:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        waiter = _Waiter(self._loop_hub(), loop, future, message, timeout, False)
        self._send(message, waiter)
        try:
            async with asyncio.timeout(timeout):
                return _result(await future)
        except errors.RequestTimeoutError:  # Nova's own answer, not the wait's end
            raise
        except TimeoutError:
            raise _timeout(message, timeout) from None
        finally:
            self._done(waiter)

    async def astream(self, message: Any, timeout: float) -> AsyncIterator[Chunk]:
        inbox: asyncio.Queue[Any] = asyncio.Queue()
        waiter = _Waiter(self._loop_hub(), asyncio.get_running_loop(), inbox, message, timeout, True)
        self._send(message, waiter)
        try:
            async with asyncio.timeout(timeout):
                order = _InOrder()
                while True:
                    for chunk in order.take(await inbox.get()):
                        yield chunk
                        self._took_chunk(waiter, order.next)
                    if order.done:
                        _result(order.final)
                        return
        except errors.RequestTimeoutError:
            raise
        except TimeoutError:
            raise _timeout(message, timeout) from None
        finally:
            self._end_stream(waiter)

    # -- both -----------------------------------------------------------------------------------

    def _send(self, message: Any, waiter: _Waiter) -> None:
        self._waiters[message.request_id] = waiter
        if self.lost is not None:
            waiter.answered = True
            self._waiters.pop(message.request_id, None)
            self._deliver(waiter, Answer(message.request_id, error=self.lost))
            return
        waiter.hub.post(ROUTER, message)

    def _done(self, waiter: _Waiter) -> None:
        """The caller stopped waiting; a call still unanswered (a timeout, a cancelled task) is
        cancelled, so that no upstream request outlives its caller."""
        self._waiters.pop(waiter.message.request_id, None)
        if not waiter.answered:
            waiter.hub.post(ROUTER, Cancel(waiter.message.request_id))

    def _took_chunk(self, waiter: _Waiter, taken: int) -> None:
        """Grant credit for what the consumer has taken, half a window at a time."""
        if taken % (STREAM_WINDOW // 2) == 0 and waiter.source:
            waiter.hub.post(waiter.source, Credit(waiter.message.request_id, STREAM_WINDOW // 2))

    def _end_stream(self, waiter: _Waiter) -> None:
        if not waiter.answered and waiter.source:  # the consumer left early: stop the driver at once
            waiter.hub.post(waiter.source, Cancel(waiter.message.request_id))
        self._done(waiter)

    # -- the lane thread ------------------------------------------------------------------------

    def _on_message(self, peer: str, message: Any) -> None:
        if isinstance(message, StageLost):
            self._fail(f"Nova's {message.stage} stage died while the call may have been in it")
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

    def _on_lost(self, hub: LaneHub, peer: str, since: float) -> None:
        """The router died. Calls it had passed on are answered by others; calls it held are lost.
        A call it never acknowledged was lost with it — unless it was sent after the router was
        already known dead (into the restarting router's socket): that one is sent again."""
        if peer != ROUTER:
            return
        previous, self._router_lost[hub] = self._router_lost.get(hub), since
        for waiter in list(self._waiters.values()):
            if waiter.hub is not hub or waiter.answered or waiter.taken is False or waiter.sent >= since:
                continue
            if waiter.taken is None and previous is not None and waiter.sent >= previous:
                hub.send(ROUTER, waiter.message)
                continue
            error = errors.DriverUnavailableError("Nova's router died while it held the call", retryable=True)
            self._on_message("", Answer(waiter.message.request_id, error=error))

    def _fail(self, reason: str) -> None:
        for request_id, waiter in list(self._waiters.items()):
            if not waiter.answered:
                error = errors.DriverUnavailableError(reason, retryable=True)
                self._on_message("", Answer(request_id, error=error))

    def _on_undelivered(self, hub: LaneHub, peer: str, messages: list[Any], reason: str) -> None:
        for message in messages:
            request_id = getattr(message, "request_id", "")
            waiter = self._waiters.get(request_id)
            if waiter is None or waiter.message is not message:
                continue
            if self.lost is not None:  # not restarting: gone, with the whole tree
                self._on_message("", Answer(request_id, error=self.lost))
            elif peer == ROUTER and "not running" in reason and time.monotonic() + RETRY_S < waiter.deadline:
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
        for fd in self._pidfds:
            with contextlib.suppress(OSError):
                os.close(fd)
        self._pidfds.clear()
        for hub in self._loop_hubs.values():
            hub.close()
        self._loop_hubs.clear()


def _resolve(future: asyncio.Future[Any], value: Any) -> None:
    if not future.done():
        future.set_result(value)
