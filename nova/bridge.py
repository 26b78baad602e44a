"""Carries calls from ordinary Python code (threads, asyncio) to the router and back.

Thespian's `ActorSystem` object must not be shared by threads (its `ask` returns whatever arrives
next), so one pump thread owns a single `private()` context: it sends the calls that threads and
tasks queued (together, as one `Batch`, when several are waiting), listens briefly, and routes each
reply by request id to the waiting thread or task. Thousands of callers need no threads of their
own, and calls made at the same time share messages. With nothing in flight the pump sleeps on its
queue rather than in Thespian's `listen`: an idle bridge costs no CPU, and a call is sent the
moment it is queued. A call waiting longer than a second has the pump ask the root whether its
router still lives, so a restarted router fails its lost calls at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

from nova import errors
from nova.messages import CallFailed, CallSucceeded, CancelCall, StreamCall, StreamChunk
from nova.types import Chunk, Response

__all__ = ["Bridge"]

PUMP_LISTEN_S = 0.002  # how long the pump listens before it sends what was queued meanwhile
PUMP_IDLE_S = 0.5  # how long an idle pump sleeps on its queue before it looks at `closed` again
ROUTER_CHECK_S = 1.0  # a call waiting this long asks the root whether its router still lives
_WAKE = object()  # put on the queue by close() so that an idle pump notices at once


def _timeout(message: Any, timeout: float) -> errors.RequestTimeoutError:
    return errors.RequestTimeoutError(
        f"no answer from Nova within {timeout:.3g}s",
        driver=message.options.driver,
        model=message.request.model or None,
    )


def _lost(message: Any) -> errors.DriverUnavailableError:
    return errors.DriverUnavailableError(
        "Nova's router was restarted while it held this call; the call was lost (safe to retry "
        "if the service may run it twice)",
        driver=message.options.driver,
        model=message.request.model or None,
    )


def _result(reply: Any) -> Response:
    if isinstance(reply, CallSucceeded):
        return reply.response
    if isinstance(reply, CallFailed):
        raise reply.error
    raise errors.ProviderError(f"unexpected reply from Nova: {type(reply).__name__}")


def _deliver(loop: asyncio.AbstractEventLoop | None, inbox: Any, reply: Any) -> None:
    """Hand a reply to a waiting thread (no loop) or task (on its loop)."""
    if loop is None:
        inbox.put(reply)
        return
    with contextlib.suppress(RuntimeError):  # the caller's loop has closed
        loop.call_soon_threadsafe(inbox.put_nowait, reply)


class _InOrder:
    """A stream's replies put back in order: chunks by `index`, and the final reply only once the
    `chunks` it counts have come (Thespian can deliver messages out of order under load)."""

    def __init__(self) -> None:
        self.next = 0
        self.early: dict[int, Chunk] = {}
        self.final: Any = None

    def add(self, reply: Any) -> list[Chunk]:
        """The chunks that are now next in order."""
        if isinstance(reply, StreamChunk):
            self.early[reply.index] = reply.chunk
        else:
            self.final = reply
        ready = []
        while self.next in self.early:
            ready.append(self.early.pop(self.next))
            self.next += 1
        return ready

    @property
    def done(self) -> bool:
        return self.final is not None and self.next >= getattr(self.final, "chunks", 0)


class Bridge:
    """`root` (the root supervisor) lets a waiting call notice that the router it was sent to
    died and was restarted: it then fails at once instead of at its timeout."""

    def __init__(self, asys: Any, router: Any, root: Any = None) -> None:
        self.asys = asys
        self.router = router
        self.root = root
        self._outgoing: queue.SimpleQueue[Any] = queue.SimpleQueue()
        # request id -> (the caller's loop, or None for a thread; its inbox; whether it streams)
        self._waiters: dict[str, tuple[asyncio.AbstractEventLoop | None, Any, bool]] = {}
        self._pump: threading.Thread | None = None
        self._lock = threading.Lock()
        self._closed = False

    # -- synchronous ----------------------------------------------------------------------------

    def router_replaced(self, router: Any) -> bool:
        """True when the root names another router than `router` (the bridge then uses it)."""
        if self.root is None:
            return False
        from nova.messages import RouterAddress, WhereIsRouter

        with self.asys.private() as ctx:
            reply = ctx.ask(self.root, WhereIsRouter(), ROUTER_CHECK_S)
        if not isinstance(reply, RouterAddress) or reply.router == router:
            return False  # no answer proves nothing: the heart of `nova run` handles a dead root
        self.router = reply.router
        return True

    def call(self, message: Any, timeout: float) -> Response:
        inbox = self._register_sync(message.request_id, stream=False)
        self._outgoing.put(message)
        try:
            return _result(inbox.get(timeout=timeout))
        except queue.Empty:
            raise _timeout(message, timeout) from None
        finally:
            self._waiters.pop(message.request_id, None)

    def stream(self, message: StreamCall, timeout: float) -> Iterator[Chunk]:
        inbox = self._register_sync(message.request_id, stream=True)
        self._outgoing.put(message)
        deadline = time.monotonic() + timeout
        finished = False
        try:
            order = _InOrder()
            while True:
                try:
                    reply = inbox.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    finished = True
                    raise _timeout(message, timeout) from None
                yield from order.add(reply)
                if order.done:
                    finished = True
                    _result(order.final)
                    return
        finally:
            self._waiters.pop(message.request_id, None)
            if not finished:  # the consumer stopped early: stop the upstream call too
                self._outgoing.put(CancelCall(request_id=message.request_id))

    # -- asynchronous ---------------------------------------------------------------------------

    async def acall(self, message: Any, timeout: float) -> Response:
        inbox = self._register(message.request_id, stream=False)
        self._outgoing.put(message)
        try:
            async with asyncio.timeout(timeout):
                return _result(await inbox.get())
        except TimeoutError:
            raise _timeout(message, timeout) from None
        finally:
            self._waiters.pop(message.request_id, None)

    async def astream(self, message: StreamCall, timeout: float) -> AsyncIterator[Chunk]:
        inbox = self._register(message.request_id, stream=True)
        self._outgoing.put(message)
        finished = False
        try:
            async with asyncio.timeout(timeout):
                order = _InOrder()
                while True:
                    for chunk in order.add(await inbox.get()):
                        yield chunk
                    if order.done:
                        finished = True
                        _result(order.final)
                        return
        except TimeoutError:
            finished = True
            raise _timeout(message, timeout) from None
        finally:
            self._waiters.pop(message.request_id, None)
            if not finished:
                self._outgoing.put(CancelCall(request_id=message.request_id))

    def _register_sync(self, request_id: str, *, stream: bool) -> queue.SimpleQueue[Any]:
        inbox: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._waiters[request_id] = (None, inbox, stream)
        self._ensure_pump()
        return inbox

    def _register(self, request_id: str, *, stream: bool) -> asyncio.Queue[Any]:
        loop = asyncio.get_running_loop()
        inbox: asyncio.Queue[Any] = asyncio.Queue()
        self._waiters[request_id] = (loop, inbox, stream)
        self._ensure_pump()
        return inbox

    def _ensure_pump(self) -> None:
        with self._lock:
            if self._pump is None or not self._pump.is_alive():
                self._pump = threading.Thread(target=self._run_pump, name="nova-bridge", daemon=True)
                self._pump.start()

    def _run_pump(self) -> None:
        from actors.base import Batch

        with self.asys.private() as ctx:
            checked = time.monotonic()
            while not self._closed:
                if self._waiters and time.monotonic() - checked > ROUTER_CHECK_S:
                    checked = time.monotonic()
                    self._check_router()
                outgoing: list[Any] = []
                if not self._waiters:
                    # Nothing in flight: wait on the queue, so a new call goes out at once (a
                    # listen would hold it up to PUMP_LISTEN_S) and an idle pump does not spin.
                    try:
                        outgoing.append(self._outgoing.get(timeout=PUMP_IDLE_S))
                    except queue.Empty:
                        continue
                with contextlib.suppress(queue.Empty):
                    while True:
                        outgoing.append(self._outgoing.get_nowait())
                outgoing = [m for m in outgoing if m is not _WAKE]
                if outgoing:
                    # Calls queued together travel as one message: each costs ~0.5 ms of CPU.
                    ctx.tell(self.router, outgoing[0] if len(outgoing) == 1 else Batch(outgoing))
                reply = ctx.listen(PUMP_LISTEN_S)
                while reply is not None:
                    for item in reply.messages if isinstance(reply, Batch) else (reply,):
                        self._route(item)
                    reply = ctx.listen(0)

    def _check_router(self) -> None:
        """Fail every waiting call at once if the router they were sent to was replaced."""
        router = self.router
        if not self.router_replaced(router):
            return
        for request_id, (loop, inbox, _stream) in list(self._waiters.items()):
            error = errors.DriverUnavailableError(
                "Nova's router was restarted while it held this call; the call was lost"
            )
            self._waiters.pop(request_id, None)
            _deliver(loop, inbox, CallFailed(request_id=request_id, error=error))

    def _route(self, reply: Any) -> None:
        request_id = getattr(reply, "request_id", "")
        waiter = self._waiters.get(request_id)
        if waiter is None:
            return
        loop, inbox, stream = waiter
        if not stream and isinstance(reply, (CallSucceeded, CallFailed)):
            # Done here, not when the caller's task resumes: with no call left the pump waits on
            # its queue, and sends the caller's next call at once.
            self._waiters.pop(request_id, None)
        _deliver(loop, inbox, reply)

    def close(self) -> None:
        self._closed = True
        self._outgoing.put(_WAKE)
        if self._pump is not None:
            self._pump.join(timeout=1)
