"""GatewayActor: Nova's OpenAI-compatible HTTP front door, a supervised child of the root.

It serves `aiohttp.web` on an asyncio thread of its own and is a caller of the router like any
other: its calls go out through a `Bridge` on that loop (the facade's machinery), so every
provider feature applies and answers, stream chunks, credit and cancels travel on its lane. The
wire formats live in `nova/gateway.py`; this module only moves bytes.

- A client that disconnects cancels its call: aiohttp cancels the handler's task, and the bridge
  sends `Cancel`, which ends the upstream request.
- A stream's status is decided by its first chunk: an error before it gets a plain error reply
  (404, 429…); an error after it ends the stream with an error event and no `[DONE]`, so that a
  truncated stream is never taken for a complete one.
- `/health` answers 503 until the root says the router and every driver are up.
- `/metrics` asks the event bus through Thespian (the actor's thread, woken by the outbox).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hmac
import importlib
import json
import logging
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from nova import errors
from nova import gateway as wire
from nova.actors.base import PARENT
from nova.actors.lane_actor import LaneActor
from nova.messages import GetMetrics, MetricsReply

__all__ = ["GatewayActor", "GatewayInit", "TreeReady"]

log = logging.getLogger("nova.gateway")
METRICS_WAIT_S = 2.0
TIMEOUT_HEADER = "X-Nova-Timeout"  # seconds for the whole call


@dataclass(frozen=True)
class GatewayInit:
    config: Any  # NovaConfig


@dataclass(frozen=True)
class TreeReady:
    """Root → gateway: whether the router and every configured driver are up."""

    ready: bool


class GatewayActor(LaneActor):
    init_message = GatewayInit

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.server: GatewayServer | None = None

    def handlers(self) -> dict[type, Any]:
        return {
            **super().handlers(),
            GatewayInit: self.on_init,
            TreeReady: self.on_ready,
            MetricsReply: self.on_metrics,
        }

    def entitled(self) -> dict[type, str]:
        return {**super().entitled(), GatewayInit: PARENT, TreeReady: PARENT}

    def sender_name(self) -> str:
        return "gateway"

    def on_init(self, message: GatewayInit, sender: Any) -> None:
        self.server = GatewayServer(message.config, ask_metrics=self._ask_metrics)
        self.server.start()

    def on_ready(self, message: TreeReady, sender: Any) -> None:
        if self.server is not None:
            self.server.ready = message.ready

    def _ask_metrics(self) -> None:  # loop thread
        if self.event_bus is not None:
            self.to_thespian(self.event_bus, GetMetrics())

    def on_metrics(self, message: MetricsReply, sender: Any) -> None:
        if self.server is not None:
            self.server.metrics_arrived(message.snapshot)

    def status_info(self) -> dict[str, Any]:
        return {"in_flight": self.server.in_flight if self.server else 0}

    def on_exit(self) -> None:
        if self.server is not None:
            self.server.stop()
        super().on_exit()


def _sse(data: Any, event: str | None = None) -> bytes:
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


class _Route:
    """One route's format: how its body is read, its answers written, its errors shaped."""

    def __init__(
        self,
        name: str,
        parse: Callable[..., wire.GatewayCall],
        answer: Callable[..., dict[str, Any]],
        error: Callable[[errors.NovaError], tuple[int, dict[str, Any]]],
        kind: str,
    ) -> None:
        self.name, self.parse, self.answer, self.error, self.kind = name, parse, answer, error, kind


class GatewayServer:
    """The aiohttp application and its loop thread; usable without the actor (tests, embedding)."""

    def __init__(self, config: Any, ask_metrics: Callable[[], None] | None = None) -> None:
        self.config = config
        self.settings = config.server
        self.ready = False
        self.in_flight = 0
        self.counts: Counter[tuple[str, int]] = Counter()
        self._ask_metrics = ask_metrics
        self._metric_waiters: list[asyncio.Future[dict[str, Any]]] = []
        self._keys = [k.reveal().encode() for k in self.settings.api_keys]
        self.loop = _new_loop()
        self._thread: threading.Thread | None = None
        self._runner: Any = None
        self._bridge: Any = None
        self._started = threading.Event()
        self.error: BaseException | None = None
        self.routes = {
            "chat": _Route("chat", wire.parse_chat, wire.chat_completion, wire.openai_error, "chat"),
            "completions": _Route(
                "completions", wire.parse_completion, wire.text_completion, wire.openai_error, "text"
            ),
            "messages": _Route(
                "messages",
                wire.parse_anthropic_messages,
                wire.anthropic_message,
                wire.anthropic_error,
                "anthropic",
            ),
        }

    # -- life -----------------------------------------------------------------------------------

    def start(self, timeout: float = 10.0) -> None:
        self._thread = threading.Thread(target=self._run, name="nova-gateway", daemon=True)
        self._thread.start()
        self._started.wait(timeout)
        if self.error is not None:
            raise self.error

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_until_complete(self._serve())
        except BaseException as exc:  # the port is taken, say: the actor's init fails with it
            self.error = exc
            log.error(
                "the HTTP gateway could not start on %s:%s: %s", self.settings.host, self.settings.port, exc
            )
            self._started.set()
            return
        self._started.set()
        self.loop.run_forever()

    async def _serve(self) -> None:
        from aiohttp import web

        from nova.actors.bridge import Bridge

        self._bridge = Bridge(self.config.system.lane_dir)
        app = web.Application(
            client_max_size=self.settings.max_body_bytes, middlewares=[web.middleware(self._json_errors)]
        )
        for path, route in (
            ("/v1/chat/completions", "chat"),
            ("/v1/completions", "completions"),
            ("/v1/messages", "messages"),
        ):
            app.router.add_post(path, functools.partial(self._handle, route=self.routes[route]))
        app.router.add_get("/v1/models", self._models)
        app.router.add_get("/health", self._health)
        app.router.add_get("/metrics", self._metrics)
        # handler_cancellation: a client that goes away cancels its handler, hence its call
        self._runner = web.AppRunner(app, handler_cancellation=True, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.settings.host, self.settings.port, reuse_address=True)
        await site.start()

    @staticmethod
    async def _json_errors(request: Any, handler: Callable[[Any], Any]) -> Any:
        """An unknown path or a wrong method answers in the API's error shape, not aiohttp's text,
        so that an SDK shows what was wrong (a base URL without /v1, say)."""
        from aiohttp import web

        try:
            return await handler(request)
        except (web.HTTPNotFound, web.HTTPMethodNotAllowed) as exc:
            if exc.status == 404:
                message = (
                    f"no route {request.method} {request.path} (the API is under /v1: /v1/chat/completions…)"
                )
            else:
                allowed = ", ".join(sorted(getattr(exc, "allowed_methods", ()) or ()))
                message = f"{request.method} is not allowed on {request.path} (use {allowed})"
            kind = "not_found_error" if exc.status == 404 else "invalid_request_error"
            if request.path.startswith("/v1/messages"):
                body: dict[str, Any] = {"type": "error", "error": {"type": kind, "message": message}}
            else:
                error = {
                    "message": message,
                    "type": kind,
                    "code": exc.reason.lower().replace(" ", "_"),
                    "param": None,
                }
                body = {"error": error}
            headers = {k: v for k, v in exc.headers.items() if k == "Allow"}
            return web.json_response(body, status=exc.status, headers=headers)

    def stop(self, timeout: float = 3.0) -> None:
        if self._thread is None or not self._thread.is_alive():
            return

        async def close() -> None:
            if self._runner is not None:
                await self._runner.cleanup()
            if self._bridge is not None:
                self._bridge.close()

        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(close(), self.loop).result(timeout)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout)

    # -- requests -------------------------------------------------------------------------------

    def _count(self, route: str, status: int) -> None:
        self.counts[(route, status)] += 1

    def _authorized(self, request: Any) -> bool:
        if not self._keys:
            return True
        given = request.headers.get("Authorization", "")
        token = given[7:].strip() if given[:7].lower() == "bearer " else request.headers.get("x-api-key", "")
        token_bytes = token.encode()
        # compare against every key, so that the time taken says nothing about which matched
        return any([hmac.compare_digest(token_bytes, key) for key in self._keys])

    def _error(self, route: _Route, error: errors.NovaError) -> Any:
        from aiohttp import web

        status, body = route.error(error)
        headers = {}
        if status == 429 or status == 503:
            after = wire.retry_after(error)
            if after is not None:
                headers["Retry-After"] = after
        self._count(route.name, status)
        return web.json_response(body, status=status, headers=headers)

    def _unauthorized(self, route: _Route) -> Any:
        from aiohttp import web

        error = errors.InvalidInputError("a valid gateway API key is required (Authorization: Bearer …)")
        _, body = route.error(error)
        if route.kind == "anthropic":
            body["error"]["type"] = "authentication_error"
        else:
            body["error"].update(type="authentication_error", code="invalid_api_key", param=None)
        self._count(route.name, 401)
        return web.json_response(body, status=401, headers={"WWW-Authenticate": "Bearer"})

    def _timeout(self, request: Any) -> float | None:
        given = request.headers.get(TIMEOUT_HEADER)
        if given is None:
            return None
        try:
            value = float(given)
        except ValueError:
            value = -1.0
        if not 0 < value < float("inf"):
            raise errors.InvalidInputError(
                f"the {TIMEOUT_HEADER} header must be a number of seconds above 0", field=TIMEOUT_HEADER
            )
        return value

    async def _handle(self, request: Any, route: _Route) -> Any:
        try:
            return await self._handle_call(request, route)
        except Exception as exc:  # a bug here still answers in the route's error shape
            log.exception("the HTTP gateway failed on %s", request.path)
            return self._error(route, errors.NovaError(f"the gateway failed: {type(exc).__name__}"))

    async def _handle_call(self, request: Any, route: _Route) -> Any:
        from aiohttp import web

        if not self._authorized(request):
            return self._unauthorized(route)
        try:
            if (request.content_length or 0) > self.settings.max_body_bytes:
                raise web.HTTPRequestEntityTooLarge(self.settings.max_body_bytes, request.content_length)
            raw = await request.read()
        except web.HTTPRequestEntityTooLarge:
            limit = self.settings.max_body_bytes
            too_large = errors.RequestTooLargeError(
                f"the request body is larger than {limit} bytes (server.max_body_bytes)"
            )
            return self._error(route, too_large)
        try:
            try:
                body = json.loads(raw)
            except ValueError as exc:
                raise errors.InvalidInputError(
                    f"the request body is not valid JSON: {exc}", field="body"
                ) from None
            except RecursionError:
                raise errors.InvalidInputError(
                    "the request body is nested too deeply", field="body"
                ) from None
            model = body.get("model") if isinstance(body, dict) else None
            if isinstance(model, str) and model in self.config.drivers:
                # /v1/models lists each driver by its name alone: that id is the driver and its model
                body = {**body, "model": f"{model}/"}
            call = route.parse(body, self._timeout(request), request.headers)
        except errors.NovaError as exc:
            return self._error(route, exc)
        wait = self._wait_s(call)
        self.in_flight += 1
        try:
            if call.stream:
                return await self._stream(request, route, call, wait)
            try:
                response = await self._bridge.acall(call.call, wait)
            except errors.NovaError as exc:
                return self._error(route, exc)
            self._count(route.name, 200)
            request_id = call.call.request_id
            headers = wire.nova_headers(response, request_id)
            return web.json_response(route.answer(response, call.model, request_id), headers=headers)
        finally:
            self.in_flight -= 1

    def _wait_s(self, call: wire.GatewayCall) -> float:
        given = call.call.options.timeout_s
        return float(given if given is not None else self.config.llm.timeout_s) + 1.0

    async def _stream(self, request: Any, route: _Route, call: wire.GatewayCall, wait: float) -> Any:
        from aiohttp import web

        chunks: AsyncIterator[Any] = self._bridge.astream(call.call, wait)
        request_id = call.call.request_id
        if route.kind == "anthropic":
            shaper: Any = wire.AnthropicStream(call.model, request_id)
        else:
            shaper = wire.OpenAIStream(
                call.model, request_id, chat=route.kind == "chat", include_usage=call.include_usage
            )
        try:
            try:  # the status depends on whether the call fails before its first chunk
                first = await anext(chunks)
            except StopAsyncIteration:
                first = None
            except errors.NovaError as exc:
                return self._error(route, exc)
            response = web.StreamResponse(
                status=200,
                headers={
                    "Content-Type": "text/event-stream",
                    "Cache-Control": "no-cache",
                    "X-Accel-Buffering": "no",
                    "X-Request-Id": request_id,
                },
            )
            await response.prepare(request)
            self._count(route.name, 200)
            try:
                if first is not None:
                    await response.write(self._encode(route, shaper.chunk(first)))
                    async for chunk in chunks:
                        data = self._encode(route, shaper.chunk(chunk))
                        if data:
                            await response.write(data)
                tail = self._encode(route, shaper.end(None))
                if route.kind != "anthropic":
                    tail += b"data: [DONE]\n\n"
                await response.write(tail)
            except errors.NovaError as exc:  # after the first chunk: say so in the stream
                _, body = route.error(exc)
                await response.write(_sse(body, "error" if route.kind == "anthropic" else None))
            except ConnectionError:  # the client left; closing `chunks` cancels the call
                return response
            with contextlib.suppress(ConnectionError):
                await response.write_eof()
            return response
        finally:
            await chunks.aclose()  # type: ignore[attr-defined]

    def _encode(self, route: _Route, items: list[Any]) -> bytes:
        if route.kind == "anthropic":
            return b"".join(_sse(data, name) for name, data in items)
        return b"".join(_sse(data) for data in items)

    async def _models(self, request: Any) -> Any:
        from aiohttp import web

        if not self._authorized(request):
            return self._unauthorized(
                _Route("models", wire.parse_chat, wire.chat_completion, wire.openai_error, "chat")
            )
        drivers = {name: (d.kind, str(d.options.get("model", ""))) for name, d in self.config.drivers.items()}
        self._count("models", 200)
        return web.json_response(wire.model_list(drivers, created=int(time.time())))

    async def _health(self, request: Any) -> Any:
        from aiohttp import web

        status = 200 if self.ready else 503
        self._count("health", status)
        return web.json_response(
            {"status": "ok" if self.ready else "starting", "ready": self.ready}, status=status
        )

    async def _metrics(self, request: Any) -> Any:
        from aiohttp import web

        snapshot: dict[str, Any] = {}
        if self._ask_metrics is not None:
            future: asyncio.Future[dict[str, Any]] = self.loop.create_future()
            self._metric_waiters.append(future)
            if len(self._metric_waiters) == 1:
                self._ask_metrics()
            try:
                snapshot = await asyncio.wait_for(asyncio.shield(future), METRICS_WAIT_S)
            except TimeoutError:
                with contextlib.suppress(ValueError):
                    self._metric_waiters.remove(future)
                self._count("metrics", 503)
                return web.Response(status=503, text="# the event bus did not answer\n")
        self._count("metrics", 200)
        text = wire.prometheus_text(snapshot, dict(self.counts))
        return web.Response(
            text=text, content_type="text/plain", charset="utf-8", headers={"X-Prometheus": "0.0.4"}
        )

    def metrics_arrived(self, snapshot: dict[str, Any]) -> None:
        """From the actor's thread: answer every `/metrics` request waiting."""

        def resolve() -> None:
            waiters, self._metric_waiters = self._metric_waiters, []
            for future in waiters:
                if not future.done():
                    future.set_result(snapshot)

        with contextlib.suppress(RuntimeError):
            self.loop.call_soon_threadsafe(resolve)


def _new_loop() -> asyncio.AbstractEventLoop:
    """uvloop when installed (the `http` extra): measured about 0.4 ms less added latency per
    call at concurrency 1 than asyncio's own loop (docs/benchmarks.md)."""
    try:  # by name, so that type checking is the same with or without the extra
        uvloop = importlib.import_module("uvloop")
    except ImportError:
        return asyncio.new_event_loop()
    loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
    return loop
