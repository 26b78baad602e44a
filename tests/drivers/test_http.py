"""The HTTP plumbing every HTTP driver shares (`HTTPDriver`), against a real local server:
how transport failures are named and classed, the driver's own connection pool, and logging."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest

from nova import errors
from nova.drivers.ollama import OllamaDriver
from nova.types import ChatRequest, Chunk
from tests.conftest import arun
from tests.fakeserver import FakeServer, Reply

HI = ChatRequest(messages=[{"role": "user", "content": "hi"}])
NDJSON = {"content-type": "application/x-ndjson"}
ANSWER = {
    "model": "m",
    "message": {"role": "assistant", "content": "hello"},
    "done": True,
    "done_reason": "stop",
}


def line(content: str, *, done: bool = False) -> bytes:
    body: dict[str, Any] = {"model": "m", "message": {"role": "assistant", "content": content}, "done": done}
    if done:
        body["done_reason"] = "stop"
    return json.dumps(body).encode() + b"\n"


def make(url: str, **options: Any) -> OllamaDriver:
    options.setdefault("timeout", 10.0)
    return OllamaDriver(base_url=url, model="m", **options)


def failure(url: str, kind: str, **options: Any) -> errors.NovaError:
    async def go() -> None:
        driver = make(url, **options)
        try:
            if kind == "chat":
                await driver.chat(HI)
            else:
                async for _ in driver.stream(HI):
                    pass
        finally:
            await driver.aclose()

    with pytest.raises(errors.NovaError) as caught:
        arun(go())
    return caught.value


# -- naming transport failures -----------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["chat", "stream"])
def test_a_server_that_closes_without_replying_is_named_and_not_a_connect_error(
    server: FakeServer, kind: str
) -> None:
    server.add("/api/chat", Reply(reset_before_reply=True))
    error = failure(server.url, kind)
    assert type(error) is errors.TransportError and error.retryable
    assert "closed the connection without replying" in error.message
    assert f"127.0.0.1:{server.port}" in error.message
    assert "ConnectTimeout" not in error.message


@pytest.mark.parametrize("kind", ["chat", "stream"])
def test_a_refused_port_says_connection_refused_at_host_and_port(kind: str) -> None:
    with FakeServer() as gone:
        url, port = gone.url, gone.port
    error = failure(url, kind)
    assert type(error) is errors.ConnectError and error.retryable
    assert f"connection refused at 127.0.0.1:{port}" in error.message
    assert "ssl:default" not in error.message and "ConnectTimeout" not in error.message


# -- input that cannot go on the wire ------------------------------------------------------------------


# -- the driver's own connection pool ------------------------------------------------------------------


def test_waiting_longer_than_the_pool_timeout_is_a_local_overload(server: FakeServer) -> None:
    # One connection, held by a stream that stops sending: the next call waits for our own pool.
    server.add("/api/chat", Reply(chunks=[line("a"), line("b")], hang_after_chunks=1, headers=NDJSON))
    server.add("/api/chat", Reply(body=ANSWER))

    async def go() -> tuple[errors.NovaError, str]:
        driver = make(server.url, max_connections=1, pool_timeout=0.2)
        try:
            chunks = driver.stream(HI)
            assert (await anext(chunks)).text == "a"
            with pytest.raises(errors.NovaError) as caught:
                await driver.chat(HI)
            await chunks.aclose()  # type: ignore[attr-defined]
            # The slot the stream held is free again, and the one the failed wait never got is not lost.
            return caught.value, (await driver.chat(HI)).text
        finally:
            await driver.aclose()

    error, after = arun(go())
    assert type(error) is errors.LocalOverloadError and error.retryable
    assert "connection pool" in error.message and (error.driver, error.model) == ("ollama", "m")
    assert after == "hello"
    assert len(server.requests) == 2  # the call that found the pool full never reached the service


def test_the_call_timeout_running_out_in_the_pool_queue_is_a_local_overload(server: FakeServer) -> None:
    server.add("/api/chat", Reply(chunks=[line("a"), line("b")], hang_after_chunks=1, headers=NDJSON))

    async def go() -> errors.NovaError:
        driver = make(server.url, max_connections=1, timeout=0.3)
        try:
            chunks = driver.stream(HI)
            await anext(chunks)
            with pytest.raises(errors.NovaError) as caught:
                await driver.chat(HI)
            await chunks.aclose()  # type: ignore[attr-defined]
            return caught.value
        finally:
            await driver.aclose()

    assert type(arun(go())) is errors.LocalOverloadError
    assert len(server.requests) == 1


def test_a_stream_waiting_for_the_pool_is_a_local_overload_too(server: FakeServer) -> None:
    server.add("/api/chat", Reply(chunks=[line("a"), line("b")], hang_after_chunks=1, headers=NDJSON))

    async def go() -> errors.NovaError:
        driver = make(server.url, max_connections=1, pool_timeout=0.2)
        first: AsyncIterator[Chunk] = driver.stream(HI)
        try:
            await anext(first)
            with pytest.raises(errors.NovaError) as caught:
                async for _ in driver.stream(HI):
                    pass
            return caught.value
        finally:
            await first.aclose()  # type: ignore[attr-defined]
            await driver.aclose()

    assert type(arun(go())) is errors.LocalOverloadError


def test_an_httpx_pool_timeout_is_a_local_overload_too() -> None:
    # Not reachable with the aiohttp transport (our own slots come first), but a pool timeout
    # from httpx must never read as the service's failure.
    driver = make("http://127.0.0.1:1")
    error = driver._transport_error(httpx.PoolTimeout("no connection"), "m", reading=False)
    assert type(error) is errors.LocalOverloadError


def test_a_negative_pool_timeout_is_a_configuration_error() -> None:
    with pytest.raises(errors.ConfigurationError, match="pool_timeout must be"):
        make("http://127.0.0.1:1", pool_timeout=-1)


# -- logging ---------------------------------------------------------------------------------------------


@pytest.fixture
def unconfigured_http_loggers() -> Iterator[None]:
    names = ("httpx", "httpcore", "aiohttp")
    saved = {name: logging.getLogger(name).level for name in names}
    for name in names:
        logging.getLogger(name).setLevel(logging.NOTSET)  # as in a program that never touched them
    yield
    for name, level in saved.items():
        logging.getLogger(name).setLevel(level)


@pytest.mark.usefixtures("unconfigured_http_loggers")
def test_requests_do_not_log_a_line_each_at_info(
    server: FakeServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)  # an application that logs everything at the root
    server.add("/api/chat", Reply(body=ANSWER))
    server.add("/api/chat", Reply(chunks=[line("a"), line("", done=True)], headers=NDJSON))

    async def go() -> None:
        driver = make(server.url)
        try:
            await driver.chat(HI)
            async for _ in driver.stream(HI):
                pass
        finally:
            await driver.aclose()

    arun(go())
    assert len(server.requests) == 2
    chatter = [r for r in caplog.records if r.name.split(".")[0] in ("httpx", "httpcore", "aiohttp")]
    assert [r.getMessage() for r in chatter if r.levelno < logging.WARNING] == []


def test_a_logger_the_application_configured_is_left_alone(
    server: FakeServer, caplog: pytest.LogCaptureFixture, unconfigured_http_loggers: None
) -> None:
    logging.getLogger("httpx").setLevel(logging.INFO)  # someone debugging on purpose
    caplog.set_level(logging.INFO)
    server.add("/api/chat", Reply(body=ANSWER))

    async def go() -> None:
        driver = make(server.url)
        try:
            await driver.chat(HI)
        finally:
            await driver.aclose()

    arun(go())
    assert logging.getLogger("httpx").level == logging.INFO
    assert any(r.name == "httpx" and "HTTP Request" in r.getMessage() for r in caplog.records)
