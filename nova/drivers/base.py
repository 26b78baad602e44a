"""What every driver is, and the HTTP plumbing the HTTP drivers share.

A driver talks to one service. It turns a `ChatRequest` / `CompletionRequest` into the service's
wire format, sends it, and turns the reply into one `Response` (or `Chunk`s), raising a
`nova.errors` error for anything else. It knows nothing of actors, events or retries.

`HTTPDriver` owns one connection pool (httpx over the aiohttp transport: measured much faster
under concurrency than httpx's own) and is the only place outside a driver's own error mapping
that touches httpx and aiohttp exception types.

Waiting for the pool and connecting are timed apart, because they mean different things. A call
first waits for one of the driver's `max_connections` slots; that wait is this process's own
load, bounded by `pool_timeout` (default: the call's `timeout`), and running out of it raises
`LocalOverloadError`, which no circuit counts against the service. Only then does
`connect_timeout` start, for the DNS lookup, TCP connect and TLS handshake alone; running out of
it is the service's (or the network's) fault: `RequestTimeoutError`. The slots are the driver's
own semaphore rather than aiohttp's pool limit, since aiohttp reports a full pool and a slow
connect as the same exception. `connect_timeout` defaults to 10 s rather than the SDKs' 5 s: when a
burst opens hundreds of connections at once, the handshakes queue behind each other on one event
loop, and a connect that is slow for that reason must not open a circuit; a host that never
answers costs 5 s more to detect.
"""

from __future__ import annotations

import abc
import asyncio
import json
import logging
import math
from collections.abc import AsyncIterator, Mapping
from typing import Any, ClassVar

import httpx

from nova import errors
from nova.drivers._errors import api_error, error_fields, malformed
from nova.drivers._headers import parse_rate_limits
from nova.secrets import Secret
from nova.types import ChatRequest, Chunk, CompletionRequest, Response

__all__ = ["Driver", "HTTPDriver", "with_rate_limits"]


class Driver(abc.ABC):
    """One LLM service. Subclasses set `name` and implement `chat`, `complete` and `stream`."""

    name: ClassVar[str] = ""

    def __init__(self, *, model: str = "", **unknown: Any) -> None:
        if unknown:
            raise errors.ConfigurationError(
                f"unknown option(s) for driver {self.name!r}: {', '.join(sorted(unknown))}", driver=self.name
            )
        self.default_model = model

    def model_for(self, request: ChatRequest | CompletionRequest) -> str:
        model = request.model or self.default_model
        if not model:
            raise errors.InvalidInputError(
                "no model given and the driver has no default model", driver=self.name, field="model"
            )
        return model

    @abc.abstractmethod
    async def chat(self, request: ChatRequest) -> Response: ...

    @abc.abstractmethod
    async def complete(self, request: CompletionRequest) -> Response: ...

    @abc.abstractmethod
    def stream(self, request: ChatRequest | CompletionRequest) -> AsyncIterator[Chunk]:
        """Yields chunks; the last one has `finish_reason` and `usage`. A stream that ends
        without the service's end marker raises `IncompleteStreamError`. A `CompletionRequest`
        streams the way the service streams completions (a service without a completion API
        streams it as a chat of one user message, as `complete` does)."""

    async def aclose(self) -> None:  # noqa: B027 - optional for drivers without resources
        """Release connections. The driver is unusable afterwards."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}(model={self.default_model!r})"


class HTTPDriver(Driver):
    """A driver that speaks JSON over HTTP to `base_url`.

    Timeouts (seconds): `pool_timeout` to wait for a free connection of this driver's own pool
    (None: as long as `timeout` allows); `connect_timeout` to connect once a connection is free;
    `read_timeout` between bytes of a reply; `timeout` for a whole non-streamed call (the wait
    for the pool included); `stream_idle_timeout` between chunks of a stream.
    """

    default_base_url: ClassVar[str] = ""
    request_id_header: ClassVar[str] = "x-request-id"

    def __init__(
        self,
        *,
        api_key: str | Secret | None = None,
        base_url: str | None = None,
        model: str = "",
        timeout: float = 600.0,
        connect_timeout: float = 10.0,
        read_timeout: float = 600.0,
        stream_idle_timeout: float = 120.0,
        pool_timeout: float | None = None,
        max_connections: int = 1000,
        headers: Mapping[str, str] | None = None,
        **options: Any,
    ) -> None:
        super().__init__(model=model, **options)
        if pool_timeout is not None and not pool_timeout >= 0:
            raise errors.ConfigurationError(
                f"pool_timeout must be None or a number of seconds >= 0, not {pool_timeout!r}",
                driver=self.name,
            )
        if max_connections < 1:
            raise errors.ConfigurationError(
                f"max_connections must be at least 1, not {max_connections!r}", driver=self.name
            )
        self.api_key = api_key if isinstance(api_key, Secret) or api_key is None else Secret(api_key)
        self.base_url = (base_url or self.default_base_url).rstrip("/")
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self.stream_idle_timeout = stream_idle_timeout
        self.pool_timeout = pool_timeout
        # aiohttp's pool timeout covers its own pool wait *and* the connect; the wait never
        # happens (our slots come first), so bounding it by connect_timeout bounds the connect.
        self._httpx_timeout = httpx.Timeout(read_timeout, connect=connect_timeout, pool=connect_timeout)
        self._max_connections = max_connections
        self._extra_headers = dict(headers or {})
        self._client: httpx.AsyncClient | None = None
        self._slots: asyncio.Semaphore | None = None

    def __repr__(self) -> str:
        return f"{type(self).__name__}(base_url={self.base_url!r}, model={self.default_model!r})"

    # -- what a subclass provides ---------------------------------------------------------------

    def auth_headers(self) -> dict[str, str]:
        """Headers that carry the key; never logged."""
        return {}

    def map_error(
        self, status: int, body: Any, raw_text: str, headers: Mapping[str, str], model: str
    ) -> errors.NovaError:
        """The error for an error reply; the default reads the common {"error": {...}} shapes."""
        message, kind, code = error_fields(body, raw_text)
        return self.service_error(status, message, kind, code, headers, model)

    def service_error(
        self,
        status: int,
        message: str,
        kind: str | None,
        code: str | None,
        headers: Mapping[str, str],
        model: str,
        request_id: str | None = None,
    ) -> errors.NovaError:
        """The error for a service's error reply, with this driver's name and the reply's id."""
        return api_error(
            status,
            message,
            type=kind,
            code=code,
            headers=headers,
            driver=self.name,
            model=model,
            request_id=request_id or headers.get(self.request_id_header),
        )

    # -- plumbing -------------------------------------------------------------------------------

    @property
    def client(self) -> httpx.AsyncClient:
        if self._client is None:
            from httpx_aiohttp import AiohttpTransport  # imported late: aiohttp is slow to import

            _quiet_http_loggers()
            limits = httpx.Limits(
                max_connections=self._max_connections, max_keepalive_connections=self._max_connections
            )
            self._client = httpx.AsyncClient(
                transport=AiohttpTransport(limits=limits, trust_env=False),
                base_url=self.base_url,
                timeout=self._httpx_timeout,
                headers={"content-type": "application/json", **self._extra_headers},
            )
            self._slots = asyncio.Semaphore(self._max_connections)
        return self._client

    async def aclose(self) -> None:
        if self._client is not None:
            client, self._client = self._client, None
            self._slots = None
            await client.aclose()

    def encode_body(self, body: dict[str, Any], model: str) -> bytes:
        """The request body as JSON bytes, or `InvalidInputError` naming the value that cannot
        be sent (a lone surrogate, a set, NaN, …): found before any connection is used."""
        try:
            return json.dumps(body, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode()
        except (TypeError, ValueError, RecursionError) as exc:  # UnicodeEncodeError is a ValueError
            where, what = _unencodable(body, "", set()) or ("", f"{type(exc).__name__}: {exc}")
            raise errors.InvalidInputError(
                f"cannot encode the request as JSON: {where or 'the body'} holds {what}",
                driver=self.name,
                model=model,
                field=where or None,
            ) from None

    def _where(self) -> str:
        """HOST:PORT of the service, for messages."""
        url = httpx.URL(self.base_url)
        port = url.port or {"https": 443, "http": 80}.get(url.scheme)
        host = f"[{url.host}]" if ":" in url.host else url.host
        return f"{host}:{port}" if port else host

    async def _take_slot(self, model: str) -> asyncio.Semaphore:
        """Wait for one of this driver's connections; the caller releases the returned slots."""
        if self._slots is None:
            _ = self.client  # creates the client and its slots
        slots = self._slots
        assert slots is not None
        if slots.locked():
            try:
                async with asyncio.timeout(self.pool_timeout):
                    await slots.acquire()
            except TimeoutError:
                assert self.pool_timeout is not None  # no deadline of its own: only the call's
                raise self._pool_full(model, self.pool_timeout) from None
        else:
            await slots.acquire()  # free: returns at once
        return slots

    def _pool_full(self, model: str, waited: float) -> errors.LocalOverloadError:
        return errors.LocalOverloadError(
            f"no free connection to {self._where()} in this driver's connection pool within {waited}s: "
            f"all {self._max_connections} are in use by this process (raise max_connections or "
            "send fewer calls at once)",
            driver=self.name,
            model=model,
        )

    def _transport_error(self, exc: BaseException, model: str, *, reading: bool) -> errors.NovaError:
        """The Nova error for a failed exchange, named by what happened: aiohttp's own exception
        says it (httpx's wrapper around it often names the wrong thing, e.g. ConnectTimeout for
        a refused port)."""
        import aiohttp

        chain = _chain(exc)
        aio = next((e for e in chain if isinstance(e, aiohttp.ClientError)), None)
        where = self._where()
        fields: dict[str, Any] = {"driver": self.name, "model": model}
        if isinstance(aio, aiohttp.ClientConnectorError):
            os_error = aio.os_error
            if isinstance(aio, aiohttp.ClientConnectorDNSError):
                why = f"could not resolve the host {aio.host!r} ({os_error.strerror or os_error})"
            elif isinstance(aio, aiohttp.ClientConnectorCertificateError):
                why = f"the TLS certificate of {where} was not accepted ({aio.certificate_error})"
            elif isinstance(aio, aiohttp.ClientSSLError):
                why = f"the TLS handshake with {where} failed ({os_error})"
            elif isinstance(os_error, ConnectionRefusedError):
                why = f"connection refused at {where}"
            else:
                why = f"could not connect to {where} ({os_error.strerror or os_error})"
            return errors.ConnectError(why, **fields)
        if any(isinstance(e, httpx.PoolTimeout) for e in chain):  # httpx's own pool, were it used
            return self._pool_full(model, self.connect_timeout)
        if isinstance(aio, aiohttp.ConnectionTimeoutError):
            return errors.RequestTimeoutError(
                f"could not connect to {where} within {self.connect_timeout}s", **fields
            )
        if isinstance(aio, aiohttp.ServerDisconnectedError) or (
            isinstance(exc, httpx.RemoteProtocolError) and not reading
        ):
            if reading:
                return errors.MalformedResponseError(
                    f"the reply from {where} was cut short: the server closed the connection", **fields
                )
            # The request went out and the server hung up: not a connect failure, and no answer.
            return errors.TransportError(
                f"the server at {where} closed the connection without replying", **fields
            )
        if any(isinstance(e, httpx.TimeoutException | TimeoutError) for e in chain):
            doing = "reading the reply from" if reading else "waiting for a reply from"
            return errors.RequestTimeoutError(f"timed out {doing} {where}", **fields)
        detail = f"{type(aio or exc).__name__}: {aio or exc}".strip().rstrip(":")
        if reading:
            return errors.MalformedResponseError(f"the reply from {where} was cut short ({detail})", **fields)
        if any(isinstance(e, ConnectionResetError) for e in chain):
            return errors.TransportError(f"the connection to {where} was reset before the reply", **fields)
        return errors.TransportError(f"the request to {where} failed ({detail})", **fields)

    async def post_json(self, path: str, body: dict[str, Any], model: str) -> tuple[Any, Mapping[str, str]]:
        """POST `body`; return the decoded JSON reply and its headers, or raise a Nova error."""
        headers = self.auth_headers()
        content = self.encode_body(body, model)
        reading = False
        slots: asyncio.Semaphore | None = None
        try:
            async with asyncio.timeout(self.timeout):
                slots = await self._take_slot(model)
                async with self.client.stream("POST", path, content=content, headers=headers) as reply:
                    reading = True
                    raw = await reply.aread()
        except (httpx.HTTPError, OSError, TimeoutError) as exc:
            if slots is None and isinstance(exc, TimeoutError):  # the call's time ran out in the queue
                raise self._pool_full(model, self.timeout) from None
            raise self._transport_error(exc, model, reading=reading) from None
        finally:
            if slots is not None:
                slots.release()
        text = raw.decode("utf-8", errors="replace")
        try:
            data = json.loads(text) if text.strip() else None
        except ValueError:
            data = None
        if reply.status_code >= 400:
            raise self.map_error(reply.status_code, data, text, reply.headers, model)
        request_id = reply.headers.get(self.request_id_header)
        if data is None:
            why = "empty reply body" if not text.strip() else f"reply is not JSON: {text[:200]!r}"
            raise malformed(
                why, driver=self.name, model=model, status=reply.status_code, request_id=request_id
            )
        if not isinstance(data, dict):
            raise malformed(
                f"reply is not a JSON object: {text[:200]!r}",
                driver=self.name,
                model=model,
                status=reply.status_code,
                request_id=request_id,
            )
        if data.get("error"):
            # A 200 whose body is an error object: classify it like the error it is.
            error = self.map_error(reply.status_code, data, text, reply.headers, model)
            error.details["in_successful_reply"] = True
            raise error
        return data, reply.headers

    async def post_stream(self, path: str, body: dict[str, Any], model: str) -> AsyncIterator[bytes]:
        """POST `body` and yield the raw bytes of a streamed reply as they arrive.

        Error statuses raise before the first byte; a read that stalls longer than
        `stream_idle_timeout` raises `RequestTimeoutError`; a broken connection raises
        `IncompleteStreamError`. The stream holds one of the pool's connections until it ends
        or is closed."""
        headers = self.auth_headers()
        content = self.encode_body(body, model)
        slots: asyncio.Semaphore | None = None
        try:
            async with asyncio.timeout(self.timeout):  # covers the wait for the status line only
                slots = await self._take_slot(model)
                context = self.client.stream("POST", path, content=content, headers=headers)
                reply = await context.__aenter__()
        except BaseException as exc:
            if slots is not None:
                slots.release()
            if not isinstance(exc, httpx.HTTPError | OSError | TimeoutError):
                raise
            if slots is None and isinstance(exc, TimeoutError):
                raise self._pool_full(model, self.timeout) from None
            raise self._transport_error(exc, model, reading=False) from None
        held = slots
        try:
            if reply.status_code >= 400:
                try:
                    raw = await reply.aread()
                except (httpx.HTTPError, OSError) as exc:
                    raise self._transport_error(exc, model, reading=True) from None
                text = raw.decode("utf-8", errors="replace")
                try:
                    data = json.loads(text)
                except ValueError:
                    data = None
                raise self.map_error(reply.status_code, data, text, reply.headers, model)
            chunks = reply.aiter_raw().__aiter__()
            while True:
                try:
                    async with asyncio.timeout(self.stream_idle_timeout):
                        piece = await chunks.__anext__()
                except StopAsyncIteration:
                    return
                except TimeoutError:
                    raise errors.RequestTimeoutError(
                        f"no data for {self.stream_idle_timeout}s in the stream",
                        driver=self.name,
                        model=model,
                    ) from None
                except (httpx.HTTPError, OSError) as exc:
                    raise errors.IncompleteStreamError(
                        f"the stream broke off ({type(exc).__name__}: {exc})",
                        driver=self.name,
                        model=model,
                        request_id=reply.headers.get(self.request_id_header),
                    ) from None
                yield piece
        finally:
            try:
                await context.__aexit__(None, None, None)
            finally:
                held.release()


def with_rate_limits(response: Response, headers: Mapping[str, str]) -> Response:
    """The response with what the service's rate-limit headers said, when they said anything: a
    success with a budget at zero pauses its target too."""
    snapshot = parse_rate_limits(headers)
    return response.model_copy(update={"rate_limits": snapshot}) if snapshot else response


_HTTP_LOGGERS = ("httpx", "httpcore", "aiohttp")


def _quiet_http_loggers() -> None:
    """httpx logs one INFO line per request: at thousands of calls a second that drowns an
    application's own log. Loggers the application set a level on are left as they are."""
    for name in _HTTP_LOGGERS:
        logger = logging.getLogger(name)
        if logger.level == logging.NOTSET:
            logger.setLevel(logging.WARNING)


def _chain(exc: BaseException) -> list[BaseException]:
    """`exc` and the exceptions it was raised from, outermost first."""
    chain: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in chain and len(chain) < 20:
        chain.append(current)
        current = current.__cause__ or current.__context__
    return chain


def _unencodable(value: Any, path: str, seen: set[int]) -> tuple[str, str] | None:
    """(where, what) for the first value in `value` that JSON (as UTF-8) cannot hold."""
    if value is None or isinstance(value, bool | int):
        return None
    if isinstance(value, str):
        try:
            value.encode()
        except UnicodeEncodeError as exc:
            return path, f"a lone surrogate {value[exc.start]!r} at character {exc.start} (not valid UTF-8)"
        return None
    if isinstance(value, float):
        return None if math.isfinite(value) else (path, f"{value!r} (JSON has no NaN or infinity)")
    if isinstance(value, dict | list | tuple):
        if id(value) in seen:
            return path, "a reference to itself"
        seen.add(id(value))
        items = value.items() if isinstance(value, dict) else enumerate(value)
        for key, item in items:
            where = f"{path}.{key}" if path else str(key)
            if isinstance(value, dict) and not isinstance(key, str | int | float | bool | None):
                return path, f"a key of type {type(key).__name__}"
            if isinstance(key, str) and (found := _unencodable(key, where, seen)):
                return found
            if found := _unencodable(item, where, seen):
                return found
        seen.discard(id(value))
        return None
    return path, f"a {type(value).__name__}, which JSON cannot hold"
