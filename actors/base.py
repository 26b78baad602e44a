"""The base of every Nova actor: safe dispatch, batched events, and no life after its parent.

- A handler that raises is caught here: Thespian would re-deliver the message once (running an
  LLM call twice) and then bounce it as a PoisonMessage. `on_crash` answers instead.
- Events are batched: an actor sends one `EventBatch` to the event bus per `EVENT_FLUSH_S` (or
  per `EVENT_BATCH_MAX` events), so observing a request adds no hop to its path, and a message
  per call only when calls are rarer than that.
- A message without a handler is logged and answered with a typed error (`InvalidInputError`):
  its sender may be waiting for a reply. Thespian's own messages and errors are not answered.
- Thespian orphans the children of a killed parent; each actor asks the kernel to kill it when
  its parent process dies (PR_SET_PDEATHSIG) and checks that its parent is still there.
- Control messages (inits, wiring, a drain) are taken only from the sender entitled to send them
  (`entitled()`): any local process of the user can reach an actor's port, and one stray init or
  "stage down" would break the actor until it restarted. Anything else is dropped and logged,
  unanswered. The sender is the address Thespian gives, which its sender states itself: this
  stops a message sent by mistake or from the wrong place, not a process of the same user that
  sets out to impersonate a parent (only the owner's processes are heard at all, see
  actors/patches.py).
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from thespian.actors import Actor, ActorExitRequest, ActorSystemMessage, WakeupMessage

from nova.errors import InvalidInputError, NovaError
from nova.events import Event, checked

__all__ = [
    "PARENT",
    "SELF",
    "STARTER",
    "STARTER_PID",
    "Batch",
    "EventBatch",
    "ExitingNormally",
    "NovaActor",
    "Ping",
    "Pong",
    "SetEventBus",
    "from_starter",
]

log = logging.getLogger("nova.actors")
EVENT_FLUSH_S = 0.2  # events wait at most this long: each batch is a Thespian message (~0.5 ms CPU)
EVENT_BATCH_MAX = 256  # or leave as soon as this many are waiting
_FLUSH = "nova:flush-events"
_PR_SET_PDEATHSIG = 1

# Who may send a control message (see `NovaActor.entitled`):
PARENT = "its parent"  # the actor's supervisor
SELF = "the actor itself"  # or Thespian on its behalf (wakeups, watched sockets)
STARTER = "the process that started the system"  # (`nova run`), from any of its contexts
STARTER_PID = "NOVA_STARTER_PID"  # set by the starter before its actor system forks


@dataclass(frozen=True)
class EventBatch:
    """Events from one actor, in the order they happened."""

    events: list[Event]


@dataclass(frozen=True)
class Batch:
    """Several messages for one receiver in one Thespian message.

    Every Thespian message costs both ends about half a millisecond of CPU here, whatever its
    size, so an actor handling a burst (a batch, or a driver's finished calls) sends what it has
    for each receiver as one `Batch`. Nova's actors and the facade's bridge unpack it; a user's
    actor never gets one.
    """

    messages: list[Any]


@dataclass(frozen=True)
class Ping:
    """Are you there? Every actor answers with a `Pong` (used by `nova status` and the heart)."""

    token: int = 0


@dataclass(frozen=True)
class Pong:
    token: int
    pid: int
    name: str
    children: dict[str, Any]
    restarts: dict[str, int]
    info: dict[str, Any]


@dataclass(frozen=True)
class SetEventBus:
    address: Any


@dataclass(frozen=True)
class ExitingNormally:
    """Child → its supervisor, just before it exits because it chose to (it stopped itself): a
    normal exit, after which OTP restarts only a permanent child."""


def die_with_parent() -> None:
    """Have the kernel SIGKILL this process when its parent dies; exit now if it already has."""
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL("libc.so.6", use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        except OSError:
            log.warning("could not set PR_SET_PDEATHSIG; orphans are possible")
    if os.getppid() == 1:
        os._exit(0)


def _tcp_endpoint(address: Any) -> tuple[str, int] | None:
    try:
        host, port = address.addressDetails.connectArgs[0]
        return str(host), int(port)
    except (AttributeError, IndexError, TypeError, ValueError):
        return None  # not a TCP address (a local one, or None)


def from_starter(address: Any) -> bool:
    """Whether the Thespian address `address` listens in the process that started the system:
    the socket listening on its port (in /proc/net/tcp) is one of that process's files."""
    endpoint, starter = _tcp_endpoint(address), os.environ.get(STARTER_PID, "")
    if endpoint is None or not starter.isdigit():
        return False
    from nova.actors.patches import listening_inode

    inode = listening_inode(endpoint)
    if inode is None:
        return False
    try:
        fds = os.scandir(f"/proc/{starter}/fd")
    except OSError:
        return False
    with fds:
        for fd in fds:
            try:
                if os.readlink(fd.path) == f"socket:[{inode}]":
                    return True
            except OSError:
                continue
    return False


class _ToCurrentRoot(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        logging.root.handle(record)


def adopt_stale_loggers() -> None:
    """Send the records of loggers created before this process was forked to Thespian's logger.

    Thespian gives each actor process a fresh logging root that forwards to its logger process,
    but every module's `log = logging.getLogger(...)` made before the fork still hangs on the old
    root, so actor warnings and tracebacks went nowhere. Point the old root at the new one.
    """
    old_root: logging.Logger = log
    while old_root.parent is not None:
        old_root = old_root.parent
    if old_root is not logging.root:
        old_root.handlers = [_ToCurrentRoot()]
        old_root.setLevel(logging.root.level)


class NovaActor(Actor):  # type: ignore[misc]
    """Dispatches messages to `handlers()` by type; subclasses stay message shells.

    An actor whose `init_message` type is set keeps every other message until that one has
    arrived: messages from different senders are not ordered, so a call can overtake the init.
    """

    init_message: type | None = None
    refuses_unentitled_exits = True  # see actors/patches.py, entitled_exit
    burst_messages: tuple[type, ...] = ()  # handlers that send many messages: batch what they send

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        die_with_parent()
        adopt_stale_loggers()
        self.event_bus: Any = None
        self._events: list[Event] = []
        self._handlers: dict[type, Callable[[Any, Any], Any]] = self.handlers()
        self._entitled: dict[type, str] = self.entitled()
        self._early: list[tuple[Any, Any]] | None = [] if self.init_message is not None else None
        self._batches: list[tuple[Any, list[Any]]] | None = None  # per receiver, while batching
        self.in_batch = False  # the message being handled came in a Batch (its sender unpacks them)

    def handlers(self) -> dict[type, Callable[[Any, Any], Any]]:
        return {}

    def entitled(self) -> dict[type, str]:
        """Who alone may send each control message (PARENT, SELF, STARTER, or what
        `is_entitled` of a subclass knows); any other message may come from anyone."""
        return {SetEventBus: PARENT, WakeupMessage: SELF}

    def is_entitled(self, who: str, message: Any, sender: Any) -> bool:
        if who == SELF:
            return bool(sender == self.myAddress)
        if who == PARENT:
            parent = self.parent_address()
            return parent is not None and bool(sender == parent)
        if who == STARTER:
            return from_starter(sender)
        return False

    def parent_address(self) -> Any:
        """The address of the actor that created this one (None for a system's own context)."""
        return getattr(getattr(self, "_myRef", None), "_parentAddr", None)

    def refused(self, message: Any, sender: Any) -> bool:
        """Whether `message` came from a sender not entitled to it (then it is logged, dropped)."""
        for cls in type(message).__mro__:
            who = self._entitled.get(cls)
            if who is not None:
                break
        else:
            return False
        try:
            if self.is_entitled(who, message, sender):
                return False
        except Exception:  # a check that fails refuses; it never takes the actor down
            log.exception("%s could not check the sender of a %s", self.sender_name(), type(message).__name__)
        log.warning(
            "%s dropped a %s from %s: only %s may send it",
            self.sender_name(),
            type(message).__name__,
            sender,
            who,
        )
        return True

    # -- dispatch -------------------------------------------------------------------------------

    def receiveMessage(self, message: Any, sender: Any) -> Any:  # noqa: N802 - Thespian's name
        if self._batches is not None or not isinstance(message, (Batch, *self.burst_messages)):
            self._receive(message, sender)
            return self.watch()
        self._batches = []
        try:
            if isinstance(message, Batch):
                self.in_batch = True
                for item in message.messages:
                    self._receive(item, sender)
            else:
                self._receive(message, sender)
        finally:
            batches, self._batches, self.in_batch = self._batches, None, False
            for target, messages in batches:
                super().send(target, messages[0] if len(messages) == 1 else Batch(messages))
        return self.watch()

    def send(self, target: Any, message: Any, batch: bool = True) -> None:
        """Send now, or, while handling a burst, add to that receiver's batch (`batch=False`: a
        receiver that cannot unpack batches, such as a user's actor)."""
        if self._batches is None or not batch:
            super().send(target, message)
            return
        for address, messages in self._batches:
            if address == target:  # Thespian addresses are unhashable: compare
                messages.append(message)
                return
        self._batches.append((target, [message]))

    def _receive(self, message: Any, sender: Any) -> None:
        if self.refused(message, sender):
            return
        try:
            if isinstance(message, WakeupMessage) and message.payload == _FLUSH:
                self._flush_events()
            elif isinstance(message, SetEventBus):
                self.event_bus = message.address
            elif isinstance(message, ActorExitRequest):
                if sender == self.myAddress and self.exits_normally():
                    parent = self.parent_address()
                    if parent is not None:  # before Thespian's own word of the exit, on the same way
                        self.send(parent, ExitingNormally(), batch=False)
                self.on_exit()
            elif isinstance(message, Ping):
                self.send(
                    sender, Pong(message.token, os.getpid(), self.sender_name(), {}, {}, self.status_info())
                )
            elif self._early is not None and not isinstance(message, self.init_message or ()):
                if not isinstance(message, WakeupMessage):
                    self._early.append((message, sender))
            else:
                handler = self._handler_for(type(message))
                try:
                    if handler is not None:
                        handler(message, sender)
                    else:
                        self.unexpected(message, sender)
                finally:
                    # Replay even when the init failed: the actor then answers what waited (with
                    # an error) instead of holding those messages, and their callers, for ever.
                    if self._early is not None:
                        early, self._early = self._early, None
                        for queued, queued_sender in early:
                            self._replay(queued, queued_sender)
        except Exception as exc:  # never let Thespian re-run a handler
            log.exception("%s failed on %s", type(self).__name__, type(message).__name__)
            try:
                self.on_crash(message, sender, exc)
            except Exception:
                log.exception("%s.on_crash failed", type(self).__name__)

    def _replay(self, message: Any, sender: Any) -> None:
        if isinstance(message, Batch):
            for item in message.messages:
                self._receive(item, sender)
        else:
            self._receive(message, sender)

    def _handler_for(self, kind: type) -> Callable[[Any, Any], Any] | None:
        for cls in kind.__mro__:
            if cls in self._handlers:
                return self._handlers[cls]
        return None

    def unexpected(self, message: Any, sender: Any) -> None:
        """A message this actor has no handler for: logged, and answered with a typed error, since
        its sender may be waiting for a reply (an ask) that would otherwise never come. Thespian's
        own messages, the actor's own and errors are not answered (no error ping-pong)."""
        if isinstance(message, ActorSystemMessage):  # e.g. a wakeup or exit it need not act on
            log.debug("%s ignored a %s", self.sender_name(), type(message).__name__)
            return
        log.warning("%s got an unexpected %s from %s", self.sender_name(), type(message).__name__, sender)
        if isinstance(message, NovaError) or sender == self.myAddress:
            return
        error = InvalidInputError(
            f"{self.sender_name()} does not take {type(message).__name__} messages",
            message_type=type(message).__name__,
        )
        self.send(sender, error, batch=False)

    def exits_normally(self) -> bool:
        """Whether stopping itself now is a normal exit (its supervisor restarts only a permanent
        child then); a supervisor that escalates exits abnormally."""
        return True

    def watch(self) -> Any:
        """What receiveMessage returns: a ThespianWatch for actors that watch file descriptors."""
        return None

    def status_info(self) -> dict[str, Any]:
        """What `nova status` shows about this actor besides its pid."""
        return {}

    def on_crash(self, message: Any, sender: Any, exc: Exception) -> None:
        """Answer a message whose handler raised; the default only logs."""

    def on_exit(self) -> None:
        """Release resources before the process ends."""
        self._flush_events()

    # -- events ---------------------------------------------------------------------------------

    def emit(self, name: str, **fields: Any) -> None:
        if self.event_bus is None or not checked(name):
            return
        if not self._events:
            self.wakeupAfter(EVENT_FLUSH_S, payload=_FLUSH)
        self._events.append(Event(name=name, sender=self.sender_name(), **fields))

    def sender_name(self) -> str:
        return type(self).__name__

    def _flush_events(self) -> None:
        if self._events and self.event_bus is not None:
            batch, self._events = self._events, []
            self.send(self.event_bus, EventBatch(batch))
