"""The event contract: real calls through the actor system emit only events that keep their
declaration in nova.events (sender, required fields, `data` keys and types)."""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest

from nova import errors
from nova.events import CATALOGUE, Event, violations
from nova.supervisors.system import NovaSystem
from tests.integration_helpers import (
    Calls,
    EventTap,
    actor_pid,
    chat_call,
    config_for,
    kill_and_wait,
    running,
    stream_call,
)

pytestmark = pytest.mark.integration

HANDLERS = "tests.actors.handlers"
RECORD = {"kind": "test", "handler": f"{HANDLERS}:record"}
BROKEN = {"kind": "test", "handler": f"{HANDLERS}:broken"}


@pytest.fixture(scope="module")
def system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NovaSystem]:
    config = config_for(
        tmp_path_factory.mktemp("contract"),
        drivers={
            "default": RECORD,
            "spare": RECORD,
            "down": BROKEN,
            "gone": BROKEN,
            "queue": RECORD,
            "strict": RECORD,
            "paused": RECORD,
        },
        cache={"enabled": True},
        ratelimit={
            "limits": {
                "queue": {"max_concurrent": 1},
                "strict": {"requests_per_minute": 1, "on_limit": "reject"},
                "paused": {"requests_per_minute": 1000},
            }
        },
        fallback={
            "retry": {"max_attempts_per_target": 1, "backoff_initial_s": 0.01, "jitter": 0},
            "circuit": {
                "window_size": 2,
                "minimum_calls": 2,
                "failure_rate_threshold": 100,
                "cooldown_s": 60,
            },
        },
        plugins=[{"use": f"{HANDLERS}:FaultyPlugin"}],
    )
    with running(config) as system:
        yield system


def _unique(text: str) -> str:
    return f"{text} {uuid.uuid4().hex[:8]}"


def _broken(events: list[Event]) -> list[str]:
    return [f"{e.name} from {e.sender}: {problem}" for e in events for problem in violations(e)]


def test_every_event_of_real_calls_keeps_its_declaration(system: NovaSystem) -> None:
    calls = Calls(system)
    with EventTap(system) as tap:
        prompt = _unique("success")
        first = chat_call(prompt)
        calls.ok(first)  # success: request.*, cache.miss, fallback.attempt, driver.call_*
        calls.ok(chat_call(prompt))  # a cache hit
        calls.stream(stream_call(_unique("a stream of words")))
        calls.ok(chat_call(_unique("move on"), driver="down", fallback=["spare"]))  # next target
        error = calls.error(chat_call(_unique("nobody"), driver="down", fallback=["gone"]))
        assert isinstance(error, errors.AllTargetsFailedError | errors.CircuitOpenError)
        calls.many(
            [
                chat_call(_unique("one at a time"), driver="queue", script={"text": "ok", "delay": 0.2})
                for _ in range(2)
            ]
        )
        calls.ok(chat_call(_unique("allowed"), driver="strict"))
        assert isinstance(
            calls.error(chat_call(_unique("refused"), driver="strict")), errors.RateLimitExceededError
        )
        limited = {"error": "RateLimitError", "status_code": 429, "retry_after": 0.2, "message": "slow down"}
        calls.error(chat_call(_unique("too fast"), driver="paused", script=limited))
        calls.ok(chat_call(_unique("after the pause"), driver="paused"))
        plugin = chat_call(_unique("plugin trouble"))
        plugin = plugin.model_copy(
            update={"request": plugin.request.model_copy(update={"extra": {"fail_in": "before_request"}})}
        )
        calls.error(plugin)
        kill_and_wait(actor_pid(system, "drivers", "spare"))
        expected = [
            *("request.started", "request.completed", "request.failed", "stream.first_chunk"),
            *("cache.hit", "cache.miss", "fallback.attempt", "fallback.next_target", "fallback.exhausted"),
            *("circuit.opened", "driver.call_started", "driver.call_completed", "driver.call_failed"),
            *("ratelimit.delayed", "ratelimit.rejected", "ratelimit.paused", "ratelimit.resumed"),
            *("plugin.failed", "supervisor.child_exited", "supervisor.child_restarted"),
        ]
        for name in expected:
            tap.wait_for(name)
        tap.wait_for("request.completed", request_id=first.request_id)
        events = list(tap.events)
    assert {e.name for e in events} <= CATALOGUE.keys()
    broken = _broken(events)
    assert not broken, "\n".join(broken)


def test_a_coalesced_call_is_neither_a_miss_nor_a_hit(system: NovaSystem) -> None:
    prompt = _unique("everyone asks this")
    script: dict[str, Any] = {"text": "the one answer", "delay": 0.5}
    waiting = [chat_call(prompt, script=script) for _ in range(5)]
    with EventTap(system, topics=("cache.",)) as tap:
        Calls(system).many(waiting)
        tap.wait_for("cache.coalesced", count=4)
        tap.wait_for("cache.miss")
        ids = {c.request_id for c in waiting}
        events = [e for e in list(tap.events) if e.request_id in ids]
    per_call = Counter(e.request_id for e in events)
    assert set(per_call.values()) == {1}, "each lookup emits exactly one cache event"
    assert Counter(e.name for e in events) == {"cache.miss": 1, "cache.coalesced": 4}
    broken = _broken(events)
    assert not broken, "\n".join(broken)
