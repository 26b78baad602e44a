"""What every driver is, and the HTTP plumbing the HTTP drivers share.

A driver talks to one service. It turns a `ChatRequest` / `CompletionRequest` into the service's
wire format, sends it, and turns the reply into one `Response` (or `Chunk`s), raising a
`nova.errors` error for anything else. It knows nothing of actors, events or retries.

`HTTPDriver` owns one connection pool (httpx over the aiohttp transport: measured much faster
under concurrency than httpx's own, see DESIGN §3) and is the only place outside a driver's own
error mapping that touches httpx exception types.
"""

from __future__ import annotations

import abc
import asyncio
import json
from collections.abc import AsyncIterator, Mapping
from typing import Any, ClassVar

import httpx

from nova import errors
from nova.drivers._errors import api_error, error_fields, malformed
from nova.secrets import Secret
from nova.types import ChatRequest, Chunk, CompletionRequest, Response

__all__ = ["Driver", "HTTPDriver"]


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

    Timeouts (seconds): `connect_timeout`; `read_timeout` between bytes of a reply;
    `timeout` for a whole non-streamed call; `stream_idle_timeout` between chunks of a stream.
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
        connect_timeout: float = 5.0,
        read_timeout: float = 600.0,
        stream_idle_timeout: float = 120.0,
        max_connections: int = 1000,
        headers: Mapping[str, str] | None = None,
        **options: Any,
    ) -> None:
        super().__init__(model=model, **options)
        self.api_key = api_key if isinstance(api_key, Secret) or api_key is None else Secret(api_key)
        self.base_url = (base_url or self.default_base_url).rstrip("/")
        self.timeout = timeout
        self.stream_idle_timeout = stream_idle_timeout
        self._httpx_timeout = httpx.Timeout(read_timeout, connect=connect_timeout, pool=timeout)
        self._max_connections = max_connections
        self._extra_headers = dict(headers or {})
        self._client: httpx.AsyncClient | None = None

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
        return api_error(
            status,
            message,
            type=kind,
            code=code,
            headers=headers,
            driver=self.name,
            model=model,
            request_id=headers.get(self.request_id_header),
        )

    # -- plumbing -------------------------------------------------------------------------------

    @property
    def client(self) -> httpx.AsyncClient:
        if self._client is None:
            from httpx_aiohttp import AiohttpTransport  # imported late: aiohttp is slow to import

            limits = httpx.Limits(
                max_connections=self._max_connections, max_keepalive_connections=self._max_connections
            )
            self._client = httpx.AsyncClient(
                transport=AiohttpTransport(limits=limits, trust_env=False),
                base_url=self.base_url,
                timeout=self._httpx_timeout,
                headers={"content-type": "application/json", **self._extra_headers},
            )
        return self._client

    async def aclose(self) -> None:
        if self._client is not None:
            client, self._client = self._client, None
            await client.aclose()

    def _transport_error(self, exc: Exception, model: str, *, reading: bool) -> errors.NovaError:
        detail = f"{type(exc).__name__}: {exc}".strip().rstrip(":")
        if isinstance(exc, (httpx.TimeoutException, TimeoutError)) and not _is_disconnect(exc):
            return errors.RequestTimeoutError(
                f"timed out talking to {self.base_url} ({detail})", driver=self.name, model=model
            )
        if reading:
            return errors.MalformedResponseError(
                f"the reply was cut short ({detail})", driver=self.name, model=model
            )
        return errors.ConnectError(
            f"could not reach {self.base_url} ({detail})", driver=self.name, model=model
        )

    async def post_json(self, path: str, body: dict[str, Any], model: str) -> tuple[Any, Mapping[str, str]]:
        """POST `body`; return the decoded JSON reply and its headers, or raise a Nova error."""
        headers = self.auth_headers()
        reading = False
        try:
            async with asyncio.timeout(self.timeout):
                async with self.client.stream("POST", path, json=body, headers=headers) as reply:
                    reading = True
                    raw = await reply.aread()
        except (httpx.HTTPError, OSError, TimeoutError) as exc:
            raise self._transport_error(exc, model, reading=reading) from None
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
        `IncompleteStreamError`."""
        headers = self.auth_headers()
        try:
            async with asyncio.timeout(self.timeout):  # covers the wait for the status line only
                context = self.client.stream("POST", path, json=body, headers=headers)
                reply = await context.__aenter__()
        except (httpx.HTTPError, OSError, TimeoutError) as exc:
            raise self._transport_error(exc, model, reading=False) from None
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
            await context.__aexit__(None, None, None)


def _is_disconnect(exc: BaseException) -> bool:
    # httpx-aiohttp maps aiohttp's ServerDisconnectedError to ConnectTimeout; it is no timeout.
    import aiohttp

    cause = exc.__cause__ or exc.__context__
    return isinstance(cause, aiohttp.ServerDisconnectedError | aiohttp.ClientOSError)
