"""A call's whole path through a real system: every stage sees it, limits hold under load, a stream's
reader paces and cancels the upstream, and a stage or driver that dies answers its calls at once."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import stat
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from nova import errors
from nova.actors.bridge import Bridge
from nova.messages import CallFailed, CallSucceeded
from nova.supervisors.system import NovaSystem
from nova.types import Response
from tests.integration_helpers import (
    Calls,
    EventTap,
    actor_pid,
    chat_call,
    config_for,
    find_node,
    kill_and_wait,
    running,
    status,
    stream_call,
    wait_until,
)

pytestmark = pytest.mark.integration

SUPERVISION = {"max_restarts": 100, "max_seconds": 5.0}  # the tests kill actors on purpose, often


# -- a local OpenAI-compatible server that watches its clients ------------------------------------


class Upstream:
    """POST /v1/chat/completions, answered by the requested model's name:

    - "slow:S": a completion after S seconds (the peak of requests open at once is kept);
    - "drip": a stream of one small chunk every 20 ms, forever (`closed` counts the clients that
      hung up on one);
    - "flood:N": a stream of N chunks of 2 kB, written as fast as the client reads (`written`).
    """

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="upstream", daemon=True)
        self.lock = threading.Lock()
        self.open = self.peak = self.requests = 0
        self.closed = 0
        self.written = 0
        self.tasks: set[asyncio.Task[Any]] = set()
        self.server: asyncio.AbstractServer | None = None
        self.port = 0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def __enter__(self) -> Upstream:
        self.thread.start()
        self.server = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._serve, "127.0.0.1", 0), self.loop
        ).result(5)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    def __exit__(self, *exc: object) -> None:
        async def stop() -> None:
            assert self.server is not None
            self.server.close()
            for task in list(self.tasks):
                task.cancel()
            await asyncio.gather(*self.tasks, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(stop(), self.loop).result(5)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()

    def reset(self) -> None:
        with self.lock:
            self.peak, self.closed, self.written = self.open, 0, 0

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.tasks.add(task)
        try:
            while True:
                line = await reader.readline()
                if not line:
                    return
                headers = {}
                while (header := await reader.readline()) not in (b"\r\n", b""):
                    name, _, value = header.decode().partition(":")
                    headers[name.strip().lower()] = value.strip()
                body = json.loads(await reader.readexactly(int(headers.get("content-length", "0"))))
                model = body.get("model", "")
                with self.lock:
                    self.requests += 1
                    self.open += 1
                    self.peak = max(self.peak, self.open)
                try:
                    if model.startswith("slow:"):
                        await asyncio.sleep(float(model[5:]))
                        writer.write(_completion(model))
                        await writer.drain()
                    elif model == "drip":
                        await self._drip(writer)
                        return
                    elif model.startswith("flood:"):
                        await self._flood(writer, int(model[6:]))
                        return
                    else:
                        writer.write(b"HTTP/1.1 404 X\r\ncontent-length: 0\r\n\r\n")
                finally:
                    with self.lock:
                        self.open -= 1
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            return
        finally:
            self.tasks.discard(task)
            writer.close()

    async def _drip(self, writer: asyncio.StreamWriter) -> None:
        writer.write(_SSE_HEAD)
        try:
            while True:
                writer.write(_sse_chunk("drip", "tick "))
                await writer.drain()
                await asyncio.sleep(0.02)
        except ConnectionError:
            with self.lock:
                self.closed += 1

    async def _flood(self, writer: asyncio.StreamWriter, n: int) -> None:
        # A small send buffer, so that what the client has not read stays with the client.
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 16384)
        writer.transport.set_write_buffer_limits(high=16384)  # type: ignore[attr-defined]
        writer.write(_SSE_HEAD)
        piece = "x" * 2048
        try:
            for _ in range(n):
                writer.write(_sse_chunk("flood", piece))
                await writer.drain()
                with self.lock:
                    self.written += 1
            writer.write(_chunked(b"data: [DONE]\n\n") + b"0\r\n\r\n")
            await writer.drain()
        except ConnectionError:
            with self.lock:
                self.closed += 1


_SSE_HEAD = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"


def _chunked(data: bytes) -> bytes:
    return f"{len(data):x}\r\n".encode() + data + b"\r\n"


def _sse_chunk(model: str, text: str) -> bytes:
    data = {
        "id": "chatcmpl-up",
        "object": "chat.completion.chunk",
        "created": 0,
        "model": model,
        "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": None}],
    }
    return _chunked(f"data: {json.dumps(data)}\n\n".encode())


def _completion(model: str) -> bytes:
    body = json.dumps(
        {
            "id": "chatcmpl-up",
            "object": "chat.completion",
            "created": 0,
            "model": model,
            "choices": [
                {"index": 0, "message": {"role": "assistant", "content": "pong"}, "finish_reason": "stop"}
            ],
            "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4},
        }
    ).encode()
    head = f"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n\r\n"
    return head.encode() + body


# -- systems --------------------------------------------------------------------------------------

CAP = 4  # the concurrency limit of the "capped" driver


@pytest.fixture(scope="module")
def upstream() -> Iterator[Upstream]:
    with Upstream() as server:
        yield server


@pytest.fixture(scope="module")
def http_system(tmp_path_factory: pytest.TempPathFactory, upstream: Upstream) -> Iterator[NovaSystem]:
    def driver(**options: Any) -> dict[str, Any]:
        return {"kind": "openai_compatible", "base_url": upstream.base_url, "model": "slow:0", **options}

    config = config_for(
        tmp_path_factory.mktemp("http"),
        drivers={
            "default": driver(),
            "capped": driver(),
            "narrow": driver(max_connections=1, pool_timeout=0.05),
            "streamer": driver(),
        },
        ratelimit={"limits": {"capped": {"max_concurrent": CAP}}},
        fallback={
            "retry": {"max_attempts_per_target": 1},
            "circuit": {"minimum_calls": 3, "window_size": 5},
        },
        supervision=SUPERVISION,
    )
    with running(config) as system:
        yield system


@pytest.fixture(scope="module")
def system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NovaSystem]:
    test = {"kind": "test", "model": "test-model"}
    config = config_for(
        tmp_path_factory.mktemp("stages"),
        drivers={
            "default": test,
            "spare": test,
            "victim": test,
            "hang": {**test, "latency": 60.0},  # every call stays in flight until the driver dies
            "limited": test,
            "flaky": test,
        },
        cache={"enabled": True, "backend": "memory"},
        ratelimit={
            "default": {"max_concurrent": 3},
            "limits": {"limited": {"max_concurrent": 1}, "hang": {"max_concurrent": 100}},
        },
        fallback={
            "retry": {"max_attempts_per_target": 2, "backoff_initial_s": 30.0, "jitter": 0.0},
            "circuit": {"minimum_calls": 3, "window_size": 5},
        },
        supervision=SUPERVISION,
    )
    with running(config) as system:
        yield system


@pytest.fixture
def bridge(system: NovaSystem) -> Iterator[Bridge]:
    bridge = Bridge(system.lanes)  # one per test: a stage's death fails every call of its bridge
    yield bridge
    bridge.close()


def _outcome(bridge: Bridge, call: Any, timeout: float = 60.0) -> Response | errors.NovaError:
    try:
        return bridge.call(call, timeout)
    except errors.NovaError as exc:
        return exc


# -- every enabled stage sees every call ----------------------------------------------------------


def _slow(text: str) -> dict[str, Any]:
    return {"text": text, "delay": 0.3}


def test_every_stage_sees_every_call_and_the_limiter_ends_with_nothing_in_flight(
    system: NovaSystem, bridge: Bridge
) -> None:
    distinct = [chat_call(f"distinct {i}", test_reply=_slow(f"d{i}")) for i in range(4)]
    same = [chat_call("same", test_reply=_slow("s")) for _ in range(3)]
    streams = [stream_call(f"stream {i}", test_reply=_slow(f"one two {i}")) for i in range(2)]

    async def first_round() -> list[Any]:
        async def stream(call: Any) -> str:
            return "".join([c.text async for c in bridge.astream(call, 30)])

        return await asyncio.gather(
            *(bridge.acall(c, 30) for c in distinct + same), *(stream(c) for c in streams)
        )

    with EventTap(system) as tap:
        results = asyncio.run(first_round())
        assert [r.text for r in results[:7]] == ["d0", "d1", "d2", "d3", "s", "s", "s"]
        assert results[7:] == ["one two 0", "one two 1"]
        again = chat_call("distinct 0", test_reply=_slow("d0"))
        again_stream = stream_call("stream 1", test_reply=_slow("one two 1"))
        assert bridge.call(again, 30).cached
        assert "".join(c.text for c in bridge.stream(again_stream, 30)) == "one two 1"

        every = [*distinct, *same, *streams, again, again_stream]
        for call in every:
            tap.wait_for("request.completed", timeout=10, request_id=call.request_id)

        def names(call: Any) -> list[str]:
            return sorted(e.name for e in tap.events if e.request_id == call.request_id)

        upstream_calls = [*distinct, *streams]
        followers = [c for c in same if "cache.coalesced" in names(c)]
        leaders = [c for c in same if c not in followers]
        assert len(leaders) == 1 and len(followers) == 2
        upstream_calls += leaders
        for call in upstream_calls:
            seen = names(call)
            assert seen.count("cache.miss") == 1, seen
            for name in ("fallback.attempt", "driver.call_started", "driver.call_completed"):
                assert seen.count(name) == 1, f"{name} in {seen}"
        for call in followers:
            seen = names(call)
            assert "cache.miss" not in seen and "driver.call_started" not in seen, seen  # one lookup event
        for call in (again, again_stream):
            seen = names(call)
            assert "cache.hit" in seen and "driver.call_started" not in seen, seen
        # 7 calls went upstream at once under a limit of 3: the limiter held at least 4 of them.
        delayed = {e.request_id for e in tap.named("ratelimit.delayed")}
        assert len(delayed & {c.request_id for c in upstream_calls}) >= len(upstream_calls) - 3
        assert not tap.named("ratelimit.rejected")

        # Nothing is left in flight: the limiter admits 3 new calls at once, none of them delayed.
        assert wait_until(lambda: _node(system, "pipeline", "fallback").get("in_flight") == 0)
        assert _node(system, "pipeline", "ratelimit").get("queued") == 0
        fresh = [chat_call(f"fresh {i}", test_reply=_slow("f"), cache=False) for i in range(3)]

        async def second_round() -> list[Any]:
            return await asyncio.gather(*(bridge.acall(c, 30) for c in fresh))

        assert [r.text for r in asyncio.run(second_round())] == ["f", "f", "f"]
        for call in fresh:
            tap.wait_for("request.completed", timeout=10, request_id=call.request_id)
        assert not [
            e for e in tap.named("ratelimit.delayed") if e.request_id in {c.request_id for c in fresh}
        ]


def _node(system: NovaSystem, *path: str) -> dict[str, Any]:
    return find_node(status(system), *path)


# -- limits hold under many callers ---------------------------------------------------------------


def test_a_concurrency_limit_holds_under_many_concurrent_callers(
    http_system: NovaSystem, upstream: Upstream
) -> None:
    upstream.reset()
    bridge = Bridge(http_system.lanes)
    calls = [chat_call(f"load {i}", model="slow:0.05", driver="capped") for i in range(120)]

    async def everyone() -> list[Any]:
        async def one(call: Any) -> Any:
            try:
                return await bridge.acall(call, 60)
            except errors.NovaError as exc:
                return exc

        return await asyncio.gather(*(one(c) for c in calls))

    try:
        results = asyncio.run(everyone())
    finally:
        bridge.close()
    failed = [r for r in results if not isinstance(r, Response)]
    assert not failed, f"{len(failed)} calls failed, e.g. {failed[0]!r}"
    assert all(r.text == "pong" for r in results)
    assert upstream.peak <= CAP, f"{upstream.peak} requests were open at once, the limit is {CAP}"
    assert upstream.peak >= 2  # the calls did overlap: the limit, not the test, kept them apart


def test_the_lanes_live_in_a_directory_only_the_user_can_open(http_system: NovaSystem) -> None:
    lanes = Path(http_system.lanes)
    assert stat.S_IMODE(lanes.stat().st_mode) == 0o700
    sockets = list(lanes.glob("*.sock"))
    assert {"router.sock", "fallback.sock", "driver-capped-0.sock"} <= {s.name for s in sockets}
    assert all(stat.S_IMODE(s.stat().st_mode) == 0o600 for s in sockets)


# -- breakers count the service's failures only ---------------------------------------------------


def test_a_full_local_connection_pool_is_a_retryable_overload_and_keeps_the_circuit_closed(
    http_system: NovaSystem, upstream: Upstream
) -> None:
    bridge = Bridge(http_system.lanes)
    calls = [chat_call(f"crowd {i}", model="slow:0.5", driver="narrow") for i in range(8)]
    try:
        with EventTap(http_system) as tap, ThreadPoolExecutor(len(calls)) as pool:
            results = list(pool.map(lambda c: _outcome(bridge, c), calls))
            overloads = [r for r in results if isinstance(r, errors.LocalOverloadError)]
            answered = [r for r in results if isinstance(r, Response)]
            assert len(overloads) + len(answered) == len(calls), results
            assert overloads and answered
            assert all(e.retryable for e in overloads)
            after = _outcome(bridge, chat_call("after the crowd", model="slow:0", driver="narrow"))
            assert isinstance(after, Response), after
            tap.wait_for("request.completed", timeout=10, driver="narrow", model="slow:0")
            assert not tap.named("circuit.opened")
    finally:
        bridge.close()


def test_a_driver_killed_mid_call_again_and_again_never_opens_its_circuit(
    system: NovaSystem, bridge: Bridge
) -> None:
    with EventTap(system) as tap:
        for i in range(5):  # more than minimum_calls (3) failures in a window of 5
            pid = actor_pid(system, "drivers", "victim")
            call = chat_call(f"doomed {i}", driver="victim", test_reply={"text": "never", "delay": 60})
            with ThreadPoolExecutor(1) as pool:
                result = pool.submit(_outcome, bridge, call)
                assert wait_until(lambda: _node(system, "drivers", "victim").get("in_flight") == 1, 10)
                kill_and_wait(pid)
                error = result.result()
            assert isinstance(error, errors.DriverUnavailableError), error
            assert "died mid-call" in error.message
            assert wait_until(lambda old=pid: live_pid_changed(system, old), 10)
        answer = bridge.call(chat_call("alive again", driver="victim", test_reply={"text": "yes"}), 30)
        assert answer.text == "yes"
        # The events of every failed call have come (a circuit event would be among them).
        assert wait_until(lambda: len(tap.named("request.failed", driver="victim")) >= 5, 10)
        assert not tap.named("circuit.opened")


def live_pid_changed(system: NovaSystem, old: int) -> bool:
    node = _node(system, "drivers", "victim")
    return bool(node["alive"] and node["pid"] != old)


# -- a stream's reader paces and cancels the upstream ---------------------------------------------


@pytest.mark.parametrize("flavour", ["sync", "async"])
def test_a_stream_the_reader_stops_closes_its_upstream_connection(
    http_system: NovaSystem, upstream: Upstream, flavour: str
) -> None:
    upstream.reset()
    bridge = Bridge(http_system.lanes)
    call = stream_call("forever", model="drip", driver="streamer")
    try:
        if flavour == "sync":
            chunks = bridge.stream(call, 60)
            taken = [next(chunks).text for _ in range(3)]
            chunks.close()
        else:

            async def take() -> list[str]:
                async with contextlib.aclosing(bridge.astream(call, 60)) as chunks:
                    return [(await anext(chunks)).text for _ in range(3)]

            taken = asyncio.run(take())
        assert taken == ["tick "] * 3
        assert wait_until(lambda: upstream.closed >= 1, 10), "the server still streams to nobody"
        assert wait_until(lambda: _node(http_system, "drivers", "streamer").get("in_flight") == 0, 10)
    finally:
        bridge.close()


@pytest.mark.parametrize("flavour", ["sync", "async"])
def test_a_caller_that_stops_waiting_cancels_its_upstream_request(
    http_system: NovaSystem, upstream: Upstream, flavour: str
) -> None:
    bridge = Bridge(http_system.lanes)
    call = chat_call("too slow for me", model="slow:60", driver="streamer")  # the call itself may wait 600 s
    try:
        with pytest.raises(errors.RequestTimeoutError):
            if flavour == "sync":
                bridge.call(call, 1.0)
            else:
                asyncio.run(bridge.acall(call, 1.0))
        assert wait_until(lambda: _node(http_system, "drivers", "streamer").get("in_flight") == 0, 10), (
            "the upstream request outlived its caller"
        )
    finally:
        bridge.close()


def test_a_slow_reader_holds_the_upstream_back(http_system: NovaSystem, upstream: Upstream) -> None:
    upstream.reset()
    total = 10_000
    bridge = Bridge(http_system.lanes)
    chunks = bridge.stream(stream_call("flood", model=f"flood:{total}", driver="streamer"), 120)
    try:
        assert [len(next(chunks).text) for _ in range(5)] == [2048] * 5
        written = _settled(lambda: upstream.written)
        assert written < total // 2, f"the server wrote {written} of {total} chunks to a paused reader"
        print(f"\nflood: the server wrote {written} of {total} chunks while the reader held at 5")
        chunks.close()
        assert wait_until(lambda: upstream.closed >= 1, 10)
        assert upstream.written < total
    finally:
        chunks.close()
        bridge.close()


def _settled(value: Callable[[], int], quiet: float = 0.5, timeout: float = 20.0) -> int:
    """`value()` once it has not changed for `quiet` seconds (within `timeout`)."""
    last, since = value(), time.monotonic()
    end = since + timeout
    while time.monotonic() < end:
        current = value()
        if current != last:
            last, since = current, time.monotonic()
        elif time.monotonic() - since >= quiet:
            return current
        time.sleep(0.02)  # polling a counter of the server's, with the deadline above
    raise AssertionError(f"the server kept writing for {timeout}s (at {last} chunks)")


# -- a stage or driver that dies answers its calls at once ----------------------------------------


class Mixed:
    """The same calls from the facade's bridge (threads) and from an actor (Thespian), in flight
    together; every caller's answers are gathered, duplicates included."""

    def __init__(self, system: NovaSystem, bridge: Bridge, make: Callable[[int], Any], n: int) -> None:
        self.lane_calls = [make(i) for i in range(n)]
        self.actor_calls = [make(n + i) for i in range(n)]
        self.pool = ThreadPoolExecutor(n + 1)
        self.lane = [self.pool.submit(_outcome, bridge, c) for c in self.lane_calls]
        self.actor = self.pool.submit(Calls(system).many, self.actor_calls, 60.0, 2.0)

    def results(self) -> tuple[list[Any], list[Any]]:
        """(the bridge's results, the actor's single final replies)."""
        try:
            lane = [f.result() for f in self.lane]
            replies = self.actor.result()
        finally:
            self.pool.shutdown()
        finals = []
        for call in self.actor_calls:
            got = [m for m in replies[call.request_id] if isinstance(m, (CallSucceeded, CallFailed))]
            assert len(got) == 1, f"an actor's call got {len(got)} answers: {got}"
            finals.append(got[0].response if isinstance(got[0], CallSucceeded) else got[0].error)
        return lane, finals


def _no_timeouts(results: list[Any]) -> None:
    late = [r for r in results if isinstance(r, errors.RequestTimeoutError)]
    assert not late, f"{len(late)} callers waited out their timeout: {late[0]!r}"


def test_a_killed_driver_answers_its_calls_at_once(system: NovaSystem, bridge: Bridge) -> None:
    def make(i: int) -> Any:
        fallback = ["spare"] if i % 2 else False
        return chat_call(f"in flight {i}", driver="hang", test_reply={"text": "saved"}, fallback=fallback)

    pid = actor_pid(system, "drivers", "hang")
    mixed = Mixed(system, bridge, make, 10)  # 20 calls in flight in one driver process
    assert wait_until(lambda: _node(system, "drivers", "hang").get("in_flight") == 20, 10)
    kill_and_wait(pid)
    lane, actor = mixed.results()
    for call, result in zip(mixed.lane_calls + mixed.actor_calls, lane + actor, strict=True):
        if call.options.fallback:  # the spare has no latency of its own: it answers at once
            assert isinstance(result, Response) and result.driver == "spare", result
            assert result.text == "saved"
        else:
            assert isinstance(result, errors.DriverUnavailableError), result
    _no_timeouts(lane + actor)


def test_a_killed_rate_limit_stage_answers_the_calls_queued_in_it(system: NovaSystem, bridge: Bridge) -> None:
    def make(i: int) -> Any:
        return chat_call(
            f"queued {i}", driver="limited", test_reply={"text": "late", "delay": 1.5}, cache=False
        )

    pid = actor_pid(system, "pipeline", "ratelimit")
    mixed = Mixed(system, bridge, make, 4)
    assert wait_until(lambda: _node(system, "pipeline", "ratelimit").get("queued") == 7, 10)
    kill_and_wait(pid)
    lane, actor = mixed.results()
    _no_timeouts(lane + actor)
    failed = [r for r in lane + actor if isinstance(r, errors.NovaError)]
    assert len(failed) >= 7 and all(isinstance(e, errors.DriverUnavailableError) for e in failed), failed


def test_a_killed_cache_stage_answers_the_calls_coalesced_in_it(system: NovaSystem, bridge: Bridge) -> None:
    def make(i: int) -> Any:
        return chat_call("the same question", test_reply={"text": "shared", "delay": 1.5})

    pid = actor_pid(system, "pipeline", "cache")
    with EventTap(system) as tap:
        mixed = Mixed(system, bridge, make, 4)
        ids = {c.request_id for c in mixed.lane_calls + mixed.actor_calls}
        assert wait_until(
            lambda: len([e for e in tap.named("cache.coalesced") if e.request_id in ids]) >= 7, 10
        )
        kill_and_wait(pid)
        lane, actor = mixed.results()
    _no_timeouts(lane + actor)
    failed = [r for r in lane + actor if isinstance(r, errors.NovaError)]
    assert len(failed) >= 7 and all(isinstance(e, errors.DriverUnavailableError) for e in failed), failed


def test_a_killed_fallback_stage_answers_the_calls_waiting_out_a_retry_delay(
    system: NovaSystem, bridge: Bridge
) -> None:
    def make(i: int) -> Any:
        scripted = {"error": "ServerError", "message": "try later", "status_code": 503}
        return chat_call(f"flaky {i}", driver="flaky", test_reply=scripted, cache=False)

    pid = actor_pid(system, "pipeline", "fallback")
    with EventTap(system) as tap:
        # Two calls: fewer failures than the breaker's minimum_calls, so both wait for their retry.
        mixed = Mixed(system, bridge, make, 1)
        ids = {c.request_id for c in mixed.lane_calls + mixed.actor_calls}
        # The first attempts failed; each call now waits 30 s before its retry.
        assert wait_until(
            lambda: len([e for e in tap.named("driver.call_failed") if e.request_id in ids]) >= 2, 10
        )
        kill_and_wait(pid)
        lane, actor = mixed.results()
    _no_timeouts(lane + actor)
    assert all(isinstance(r, errors.DriverUnavailableError) for r in lane + actor), lane + actor
