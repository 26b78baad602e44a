"""The simple facade: `nova.llm.chat(...)` and friends, from any thread or asyncio task.

The first call attaches to a running `nova run` system (found by its discovery file, else on the
configured admin port, and only if its name and configuration are this program's), or starts an
embedded one on a free admin port (stopped again when the program exits). When the system dies,
calls fail at once with a retryable `NotReachableError` until it is back: an embedded system is
started again, and an attached program attaches to the `nova run` that came back.

Per-call options beside the model parameters: `driver=`, `model=`, `cache=` (True / False /
"refresh"), `ttl=`, `conversation=`, `timeout=` (seconds, the whole call), `fallback=` (False or a
list of "driver/model" targets).
Model-specific parameters go in `extra={...}` and reach the wire unchanged.
"""

from __future__ import annotations

import atexit
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Literal, TypedDict, Unpack, cast

from pydantic import ValidationError

from nova import errors
from nova.messages import CallOptions, ChatCall, CompleteCall, StreamCall
from nova.types import ChatRequest, Chunk, CompletionRequest, Message, Response, Tool, validation_error

if TYPE_CHECKING:
    from nova.actors.bridge import Bridge

__all__ = [
    "CallKwargs",
    "Messages",
    "Session",
    "achat",
    "acomplete",
    "astream",
    "astream_complete",
    "chat",
    "complete",
    "shutdown",
    "stream",
    "stream_complete",
    "system",
    "with_driver",
]

Messages = str | Sequence[Message | dict[str, Any]]  # a prompt, or a conversation


class CallKwargs(TypedDict, total=False):
    """The keyword arguments of every call, typed so that a type checker sees a misspelt one."""

    model: str  # a model of the driver, or a model string "driver/model"
    driver: str  # a configured driver; default: [llm] driver
    temperature: float
    max_tokens: int
    top_p: float
    stop: str | Sequence[str]
    seed: int
    tools: Sequence[Tool | Mapping[str, Any]]
    tool_choice: str | Mapping[str, Any]
    response_format: Mapping[str, Any]
    extra: Mapping[str, Any]  # model-specific parameters, sent to the wire unchanged
    cache: bool | Literal["refresh"]
    ttl: float
    conversation: str
    timeout: float  # seconds, the whole call
    fallback: Literal[False] | Sequence[str]  # "driver/model" targets


_PARAMS = {
    "temperature",
    "max_tokens",
    "top_p",
    "stop",
    "seed",
    "tools",
    "tool_choice",
    "response_format",
    "extra",
}
_OPTIONS = {"driver", "cache", "ttl", "conversation", "timeout", "fallback"}

_lock = threading.Lock()
_state: dict[str, Any] = {}
# Functions that may replace each call before it is sent (nova.testing's overrides), innermost last.
_call_hooks: list[Callable[[Any], Any]] = []


def _bridge() -> Any:
    """The bridge to the running system, attaching or starting one on first use; once the
    system has gone, a new one is looked for (at most every `RECONNECT_S`) on each call."""
    with _lock:
        if "bridge" not in _state:
            from nova.config import load_config

            config = load_config()
            system = _connect(config, attached=False)
            assert system is not None
            _state.update(system=system, bridge=_open(system), config=config)
            if system.owned:
                atexit.register(shutdown)
        bridge = _state["bridge"]
    if bridge.lost is not None:
        bridge = _reconnect(bridge)
    return bridge


RECONNECT_S = 0.2  # how often calls to a system that has gone look for its successor
_reconnecting = threading.Lock()


def _connect(config: Any, attached: bool, timeout: float = 10.0) -> Any:
    """The system to talk to: `nova run` (its discovery file, or the configured admin port), else
    a new embedded one — but never for a program that was attached (None: nothing runs)."""
    from nova.supervisors.system import NovaSystem

    system = NovaSystem.attach(config, timeout=timeout)
    if system is None and not attached:
        # an embedded system takes a free port unless one is configured: two programs' systems never meet
        system = NovaSystem.start(config, free_port="admin_port" not in config.system.model_fields_set)
    return system


def _open(system: Any) -> Bridge:
    from nova.actors.bridge import Bridge

    bridge = Bridge(system.lanes)
    if system.owned:  # what is left of an embedded system goes at once, not at the next call
        bridge.on_gone = lambda: threading.Thread(target=system.stop, name="nova-stop", daemon=True).start()
    bridge.watch({"root": system.root_pid, "admin": system.admin_pid}, system.where)
    return bridge


def _reconnect(lost: Any) -> Any:
    """After the system has gone: an embedded one is started again; an attached program attaches
    to the `nova run` that came back. Meanwhile calls fail at once on the lost bridge."""
    if not _reconnecting.acquire(blocking=False):
        return lost  # another thread is at it
    try:
        with _lock:
            current = _state.get("bridge", lost)
            if current is not lost or time.monotonic() < _state.get("retry_at", 0.0):
                return current
            _state["retry_at"] = time.monotonic() + RECONNECT_S
            old, config = _state["system"], _state["config"]
        if old.owned:
            old.stop()  # whatever is left of it
        try:
            system = _connect(config, attached=not old.owned, timeout=0.5)
        except errors.SystemMismatchError:
            raise
        except errors.NovaError:
            system = None  # not back yet
        if system is None:
            return lost
        bridge = _open(system)
        with _lock:
            _state.update(system=system, bridge=bridge)
        lost.close()
        return bridge
    finally:
        _reconnecting.release()


def system() -> Any:
    """The `NovaSystem` this process talks to (attached to `nova run`, or embedded)."""
    _bridge()
    return _state["system"]


@contextmanager
def _using(system: Any) -> Iterator[None]:
    """Talk to `system` inside the block, then to whatever this process talked to before."""
    bridge = _open(system)
    with _lock:
        saved = dict(_state)
        _state.clear()
        _state.update(system=system, bridge=bridge, config=system.config)
    try:
        yield
    finally:
        with _lock:
            _state.clear()
            _state.update(saved)
        bridge.close()


def shutdown() -> None:
    """Stop the embedded system (if this process started it) and forget the connection."""
    with _lock:
        bridge, system = _state.pop("bridge", None), _state.pop("system", None)
        _state.clear()
    if bridge is not None:
        bridge.close()
    if system is not None:
        system.stop()


def _messages(messages: str | Sequence[Message | dict[str, Any]]) -> list[Any]:
    if isinstance(messages, str):
        return [{"role": "user", "content": messages}]
    if isinstance(messages, (Message, dict)) or not isinstance(messages, Iterable):
        raise errors.InvalidInputError(
            f"messages must be a string or a list of messages, not {type(messages).__name__}",
            field="messages",
        )
    return list(messages)


def _split(kwargs: Mapping[str, Any]) -> tuple[dict[str, Any], CallOptions]:
    unknown = set(kwargs) - _PARAMS - _OPTIONS - {"model"}
    if unknown:
        name = sorted(unknown)[0]
        raise errors.InvalidInputError(
            f"unknown parameter {name!r}; model-specific parameters go in extra={{{name!r}: ...}}", field=name
        )
    params = {k: v for k, v in kwargs.items() if k in _PARAMS and v is not None}
    if kwargs.get("model"):
        params["model"] = kwargs["model"]
    fallback = kwargs.get("fallback")
    try:
        options = CallOptions(
            driver=kwargs.get("driver"),
            cache=kwargs.get("cache"),
            ttl_s=kwargs.get("ttl"),
            conversation=kwargs.get("conversation"),
            timeout_s=kwargs.get("timeout"),
            fallback=tuple(fallback) if isinstance(fallback, (list, tuple)) else fallback,
            traceparent=_traceparent(),
        )
    except ValidationError as exc:
        raise _option_error(exc, kwargs) from None
    return params, options


_OPTION_NAMES = {"ttl_s": "ttl", "timeout_s": "timeout"}  # CallOptions' names -> the facade's
_OPTION_FORMS = {
    "driver": "the name of a configured driver",
    "cache": 'True, False or "refresh"',
    "ttl": "a number of seconds",
    "conversation": "a conversation id (a string)",
    "timeout": "a number of seconds greater than 0",
    "fallback": 'False or a list of "driver/model" targets',
}


def _option_error(exc: ValidationError, kwargs: Mapping[str, Any]) -> errors.InvalidInputError:
    """The facade's own option names in the message (timeout=, not timeout_s), one line each."""
    names: list[str] = []
    for err in exc.errors(include_url=False):
        name = _OPTION_NAMES.get(str(err["loc"][0]), str(err["loc"][0])) if err["loc"] else "options"
        if name not in names:
            names.append(name)
    problems = [
        f"{name}= must be {_OPTION_FORMS.get(name, 'valid')} (got {kwargs.get(name)!r:.60})" for name in names
    ]
    return errors.InvalidInputError(
        "invalid option " + "; ".join(problems),
        driver=kwargs.get("driver") if isinstance(kwargs.get("driver"), str) else None,
        field=names[0],
        problems=problems,
    )


def _traceparent() -> str | None:
    if "opentelemetry.trace" not in sys.modules:  # no tracing set up: do not pay for the import
        return None
    from opentelemetry import propagate

    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return carrier.get("traceparent")


def _build(kind: str, prompt: Any, kwargs: Mapping[str, Any]) -> Any:
    params, options = _split(kwargs)
    try:
        if kind == "complete":
            call: Any = CompleteCall(request=CompletionRequest(prompt=prompt, **params), options=options)
        elif kind == "stream_complete":
            call = StreamCall(request=CompletionRequest(prompt=prompt, **params), options=options)
        else:
            request = ChatRequest(messages=_messages(prompt), **params)  # type: ignore[arg-type]
            call = (StreamCall if kind == "stream" else ChatCall)(request=request, options=options)
    except ValidationError as exc:
        raise validation_error(exc, driver=options.driver) from None
    hooks = list(_call_hooks)
    return hooks[-1](call) if hooks else call  # the innermost override answers


def _timeout(call: Any) -> float:
    if call.options.timeout_s is not None:
        return float(call.options.timeout_s) + 1.0  # the router answers at the deadline; allow the hop
    return float(_state["config"].llm.timeout_s) + 1.0 if "config" in _state else 601.0


def complete(prompt: str, **kwargs: Unpack[CallKwargs]) -> Response:
    call = _build("complete", prompt, kwargs)
    bridge = _bridge()
    return bridge.call(call, _timeout(call))  # type: ignore[no-any-return]


def chat(messages: Messages, **kwargs: Unpack[CallKwargs]) -> Response:
    call = _build("chat", messages, kwargs)
    bridge = _bridge()
    return bridge.call(call, _timeout(call))  # type: ignore[no-any-return]


def stream(messages: Messages, **kwargs: Unpack[CallKwargs]) -> Iterator[Chunk]:
    call = _build("stream", messages, kwargs)
    bridge = _bridge()
    yield from bridge.stream(call, _timeout(call))


def stream_complete(prompt: str, **kwargs: Unpack[CallKwargs]) -> Iterator[Chunk]:
    """A text completion (`complete`), streamed."""
    call = _build("stream_complete", prompt, kwargs)
    yield from _bridge().stream(call, _timeout(call))


async def astream_complete(prompt: str, **kwargs: Unpack[CallKwargs]) -> AsyncIterator[Chunk]:
    call = _build("stream_complete", prompt, kwargs)
    async for chunk in _bridge().astream(call, _timeout(call)):
        yield chunk


async def acomplete(prompt: str, **kwargs: Unpack[CallKwargs]) -> Response:
    call = _build("complete", prompt, kwargs)
    return await _bridge().acall(call, _timeout(call))  # type: ignore[no-any-return]


async def achat(messages: Messages, **kwargs: Unpack[CallKwargs]) -> Response:
    call = _build("chat", messages, kwargs)
    return await _bridge().acall(call, _timeout(call))  # type: ignore[no-any-return]


async def astream(messages: Messages, **kwargs: Unpack[CallKwargs]) -> AsyncIterator[Chunk]:
    call = _build("stream", messages, kwargs)
    async for chunk in _bridge().astream(call, _timeout(call)):
        yield chunk


class Session:
    """The facade with some options fixed, e.g. the driver (`with_driver`)."""

    def __init__(self, **defaults: Unpack[CallKwargs]) -> None:
        self.defaults = defaults

    def _with(self, kwargs: CallKwargs) -> CallKwargs:
        return cast(CallKwargs, {**self.defaults, **kwargs})

    def complete(self, prompt: str, **kwargs: Unpack[CallKwargs]) -> Response:
        return complete(prompt, **self._with(kwargs))

    def chat(self, messages: Messages, **kwargs: Unpack[CallKwargs]) -> Response:
        return chat(messages, **self._with(kwargs))

    def stream(self, messages: Messages, **kwargs: Unpack[CallKwargs]) -> Iterator[Chunk]:
        return stream(messages, **self._with(kwargs))

    async def acomplete(self, prompt: str, **kwargs: Unpack[CallKwargs]) -> Response:
        return await acomplete(prompt, **self._with(kwargs))

    async def achat(self, messages: Messages, **kwargs: Unpack[CallKwargs]) -> Response:
        return await achat(messages, **self._with(kwargs))

    def astream(self, messages: Messages, **kwargs: Unpack[CallKwargs]) -> AsyncIterator[Chunk]:
        return astream(messages, **self._with(kwargs))

    def stream_complete(self, prompt: str, **kwargs: Unpack[CallKwargs]) -> Iterator[Chunk]:
        return stream_complete(prompt, **self._with(kwargs))

    def astream_complete(self, prompt: str, **kwargs: Unpack[CallKwargs]) -> AsyncIterator[Chunk]:
        return astream_complete(prompt, **self._with(kwargs))


@contextmanager
def with_driver(driver: str, /, **defaults: Unpack[CallKwargs]) -> Iterator[Session]:
    """`with nova.llm.with_driver("anthropic") as llm: llm.chat(...)`"""
    defaults["driver"] = driver
    yield Session(**defaults)
