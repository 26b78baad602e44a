"""A pipeline stage that dies fails only the calls it held: the calls already past it (in a later
stage, at a driver) go on and get their normal answers, and the stage is back for new calls.

Fifty calls (a few from a user's actor, whose calls the router keeps) are spread over the
pipeline before each kill, against a slow local upstream: twenty at the driver, nine waiting in
the cache behind an identical call, sixteen queued in the rate limiter (that identical call among
them), and five in the fallback stage, waiting out a retry.
"""

from __future__ import annotations

import collections
import itertools
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from nova import errors
from nova.actors.bridge import Bridge
from nova.actors.lanes import LaneHub
from nova.actors.protocol import Answer
from nova.messages import CallFailed, CallSucceeded
from nova.supervisors.system import NovaSystem
from nova.types import Response
from tests.fakeserver import FakeServer, Reply
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
    wait_until,
)

pytestmark = pytest.mark.integration

SLOW_S = 3.0  # the upstream's answer time: the calls at the driver are still there at the kill
AT_DRIVER = 20  # the "up" driver's concurrency limit: the calls beyond it queue in the limiter
_ids = itertools.count()


def _completion(text: str) -> dict[str, Any]:
    return {
        "id": "chatcmpl-up",
        "object": "chat.completion",
        "created": 0,
        "model": "slow",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4},
    }


@pytest.fixture(scope="module")
def upstream() -> Iterator[FakeServer]:
    with FakeServer() as server:
        server.default["/v1/chat/completions"] = Reply(
            body=_completion("slow answer"), delay=SLOW_S, hang_up_ends=True
        )
        server.default["/v2/chat/completions"] = Reply(body=_completion("quick answer"))
        yield server


@pytest.fixture(scope="module")
def system(tmp_path_factory: pytest.TempPathFactory, upstream: FakeServer) -> Iterator[NovaSystem]:
    config = config_for(
        tmp_path_factory.mktemp("stage-death"),
        drivers={
            "up": {"kind": "openai_compatible", "base_url": f"{upstream.url}/v1", "model": "slow"},
            "flaky": {"kind": "test", "model": "test-model"},
            "second": {"kind": "openai_compatible", "base_url": f"{upstream.url}/v2", "model": "slow"},
        },
        llm={"driver": "up"},
        cache={"enabled": True, "backend": "memory"},
        ratelimit={"limits": {"up": {"max_concurrent": AT_DRIVER}}},
        fallback={
            "retry": {"max_attempts_per_target": 2, "backoff_initial_s": SLOW_S, "jitter": 0.0},
            "circuit": {"minimum_calls": 1000, "window_size": 1000},
        },
        supervision={"max_restarts": 100, "max_seconds": 5.0},
    )
    with running(config) as system:
        yield system


class CountingBridge(Bridge):
    """A bridge that counts every answer each call gets, its own failures included."""

    def __init__(self, lane_dir: str) -> None:
        self.answers: collections.Counter[str] = collections.Counter()
        self.lock = threading.Lock()
        super().__init__(lane_dir)

    def _on_message(self, peer: str, message: Any, *hub: LaneHub | None) -> None:
        if isinstance(message, Answer):
            with self.lock:
                self.answers[message.request_id] += 1
        super()._on_message(peer, message, *hub)


def _prompt(call: Any) -> str:
    return str(call.request.messages[0].content)


def _outcome(bridge: Bridge, call: Any) -> Response | errors.NovaError:
    try:
        return bridge.call(call, 60)
    except errors.NovaError as exc:
        return exc


def _lost(result: Any, stage: str) -> bool:
    return (
        isinstance(result, errors.DriverUnavailableError)
        and result.retryable
        and f"{stage} stage died" in str(result)
    )


def _node(system: NovaSystem, *path: str) -> dict[str, Any]:
    try:
        return find_node(status(system), *path)
    except Exception:  # e.g. a stage restarting as we look
        return {}


@pytest.mark.parametrize("stage", ["cache", "ratelimit", "fallback"])
def test_a_dead_stage_fails_only_the_calls_it_held(
    system: NovaSystem, upstream: FakeServer, stage: str
) -> None:
    run = next(_ids)
    slow = [chat_call(f"at the driver {run}.{i}", driver="up") for i in range(AT_DRIVER)]
    same = [chat_call(f"the same question {run}", driver="up") for _ in range(10)]
    queued = [chat_call(f"queued {run}.{i}", driver="up") for i in range(15)]
    scripted = {"error": "ServerError", "message": "try later", "status_code": 503}
    flaky = [
        chat_call(f"flaky {run}.{i}", driver="flaky", test_reply=scripted, cache=False) for i in range(5)
    ]
    calls = slow + same + queued + flaky
    # A few calls come from a user's actor: the router holds those (its own probe decides them).
    by_actor = {c.request_id for c in slow[:4] + queued[:2]}
    bridge = CountingBridge(system.lanes)
    pool = ThreadPoolExecutor(len(calls))
    answered_at: dict[str, float] = {}  # for the report below, not asserted

    def outcome(call: Any) -> Any:
        result = _outcome(bridge, call)
        answered_at[call.request_id] = time.monotonic()
        return result

    try:
        with EventTap(system) as tap:
            futures = {c.request_id: pool.submit(outcome, c) for c in slow[4:]}
            from_actor = [pool.submit(Calls(system).many, slow[:4], 60, 1.0)]
            assert wait_until(lambda: _node(system, "drivers", "up").get("in_flight") == AT_DRIVER, 15)
            later = same + queued[2:] + flaky
            futures |= {c.request_id: pool.submit(outcome, c) for c in later}
            from_actor.append(pool.submit(Calls(system).many, queued[:2], 60, 1.0))
            same_ids = {c.request_id for c in same}
            flaky_ids = {c.request_id for c in flaky}
            assert wait_until(
                lambda: (
                    len([e for e in tap.named("cache.coalesced") if e.request_id in same_ids]) == 9
                    and len([e for e in tap.named("driver.call_failed") if e.request_id in flaky_ids]) == 5
                    and _node(system, "pipeline", "ratelimit").get("queued") == 16
                    and _node(system, "pipeline", "fallback").get("in_flight") == AT_DRIVER + 5
                ),
                15,
            ), "the calls did not spread over the stages as planned"
            pid = actor_pid(system, "pipeline", stage)
            kill_and_wait(pid)
            killed_at = time.monotonic()
            results = {request_id: future.result(60) for request_id, future in futures.items()}
            for replies in [f.result(60) for f in from_actor]:
                for request_id, messages in replies.items():
                    finals = [m for m in messages if isinstance(m, (CallSucceeded, CallFailed))]
                    assert len(finals) == 1, f"an actor's call got {len(finals)} answers: {finals}"
                    final = finals[0]
                    results[request_id] = final.response if isinstance(final, CallSucceeded) else final.error

        def lost(group: list[Any]) -> list[Any]:
            return [c for c in group if _lost(results[c.request_id], stage)]

        def answered(group: list[Any]) -> list[Any]:
            return [
                c
                for c in group
                if isinstance(results[c.request_id], Response) and results[c.request_id].text == "slow answer"
            ]

        waits = [at - killed_at for rid, at in answered_at.items() if _lost(results[rid], stage)]
        print(
            f"SIGKILL of the {stage} stage -> its calls failed within {max(waits, default=0) * 1000:.0f} ms"
        )
        # past every stage: the driver answers them as usual
        assert answered(slow) == slow, [results[c.request_id] for c in slow][:3]
        if stage == "cache":  # the calls waiting behind the identical one are lost; it goes on
            assert len(lost(same)) == 9 and len(answered(same)) == 1
            assert answered(queued) == queued
        elif stage == "ratelimit":  # the queued calls are lost; the cache sends the next identical one
            assert len(lost(same)) == 1 and len(answered(same)) == 9
            assert lost(queued) == queued
        else:  # the retries it waited out are lost; the calls before it reach its successor
            assert answered(same) == same and answered(queued) == queued
            assert lost(flaky) == flaky
        if stage != "fallback":  # their retry failed too: the service's own error
            assert all(isinstance(results[c.request_id], errors.ServerError) for c in flaky)

        # Nothing of a failed call goes on upstream, and every call got exactly one answer.
        failed = {_prompt(c) for c in calls if _lost(results[c.request_id], stage)}
        failed -= {_prompt(c) for c in calls if not _lost(results[c.request_id], stage)}
        assert wait_until(lambda: not upstream.open, 15), "upstream requests were left open"
        assert not failed & {r.json["messages"][0]["content"] for r in upstream.replied}
        assert {bridge.answers[c.request_id] for c in calls if c.request_id not in by_actor} == {1}

        # The stage is back: a new call goes through it.
        assert wait_until(
            lambda: (
                _node(system, "pipeline", stage).get("alive")
                and _node(system, "pipeline", stage).get("pid") != pid
            ),
            10,
        )
        again = bridge.call(chat_call(f"again {run}", driver="up"), 30)
        assert again.text == "slow answer"
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
        bridge.close()


def test_a_call_at_a_driver_that_fails_after_its_fallback_stage_restarted_gets_the_error(
    system: NovaSystem, upstream: FakeServer
) -> None:
    """The restarted fallback stage does not know the call: the driver answers its failure itself,
    even once the new stage has sent it calls of its own."""
    run = next(_ids)
    error = {"error": {"message": "the service broke", "type": "server_error"}}
    upstream.add("/v2/chat/completions", Reply(status=500, body=error, delay=SLOW_S, hang_up_ends=True))
    bridge = Bridge(system.lanes)
    pool = ThreadPoolExecutor(1)
    try:
        doomed = chat_call(f"breaks {run}", driver="second", cache=False, timeout=30)
        future = pool.submit(_outcome, bridge, doomed)
        assert wait_until(lambda: _node(system, "drivers", "second").get("in_flight") == 1, 15)
        pid = actor_pid(system, "pipeline", "fallback")
        kill_and_wait(pid)
        assert wait_until(lambda: _node(system, "pipeline", "fallback").get("pid") not in (None, pid), 10)
        # the new fallback stage's own call reaches the same driver before the first one fails
        assert (
            bridge.call(chat_call(f"meanwhile {run}", driver="second", cache=False), 30).text
            == "quick answer"
        )
        result = future.result(60)
        assert isinstance(result, errors.ServerError) and "the service broke" in str(result), result
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
        bridge.close()
