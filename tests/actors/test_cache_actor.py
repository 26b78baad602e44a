"""The cache stage in the real actor system: hits, replayed streams, coalescing, no cached errors."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from nova import errors
from nova.messages import CallFailed, CallSucceeded
from nova.supervisors.system import NovaSystem
from tests.integration_helpers import Calls, EventTap, chat_call, config_for, log_lines, running, stream_call

pytestmark = pytest.mark.integration

HANDLER = "tests.actors.handlers:record"


def _config(tmp: Path, backend: str) -> Any:
    return config_for(
        tmp,
        drivers={"default": {"kind": "test", "handler": HANDLER}},
        cache={"enabled": True, "backend": backend, "path": str(tmp / "cache.sqlite3")},
        fallback={"retry": {"max_attempts_per_target": 1}},
    )


@pytest.fixture(scope="module", params=["memory", "sqlite"])
def system(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[NovaSystem]:
    with running(_config(tmp_path_factory.mktemp(f"cache-{request.param}"), request.param)) as system:
        yield system


@pytest.fixture
def log(tmp_path: Path) -> Path:
    return tmp_path / "upstream.jsonl"


def _unique(text: str) -> str:
    return f"{text} {uuid.uuid4().hex[:8]}"


def test_a_repeated_call_is_answered_from_the_cache_at_no_cost(system: NovaSystem, log: Path) -> None:
    prompt = _unique("cache me")
    with EventTap(system, topics=("cache.",)) as tap:
        first = Calls(system).ok(chat_call(prompt, log=log))
        second_call = chat_call(prompt, log=log)
        second = Calls(system).ok(second_call)
        tap.wait_for("cache.hit", request_id=second_call.request_id)
        assert len(tap.named("cache.miss")) == 1
    assert len(log_lines(log, prompt)) == 1
    assert (first.cached, second.cached) == (False, True)
    assert second.text == first.text and second.usage == first.usage  # usage is kept
    assert second.cost_usd == 0
    assert second.driver == "default"


def test_per_call_cache_false_and_refresh_go_upstream(system: NovaSystem, log: Path) -> None:
    prompt = _unique("options")
    Calls(system).ok(chat_call(prompt, log=log))
    assert Calls(system).ok(chat_call(prompt, log=log, cache=False)).cached is False
    assert Calls(system).ok(chat_call(prompt, log=log, cache="refresh")).cached is False
    assert Calls(system).ok(chat_call(prompt, log=log)).cached is True
    assert len(log_lines(log, prompt)) == 3


def test_a_stream_is_stored_once_complete_and_replayed_as_chunks(system: NovaSystem, log: Path) -> None:
    prompt = _unique("stream words to keep")
    chunks, final = Calls(system).stream(stream_call(prompt, log=log))
    assert isinstance(final, CallSucceeded) and final.response.cached is False
    replayed, again = Calls(system).stream(stream_call(prompt, log=log))
    assert isinstance(again, CallSucceeded) and again.response.cached is True
    assert len(replayed) > 1, "a cached stream must still arrive as chunks"
    assert "".join(c.text for c in replayed) == "".join(c.text for c in chunks) == f"echo: {prompt}"
    assert again.response.cost_usd == 0
    assert Calls(system).ok(chat_call(prompt, log=log)).cached is True  # one entry serves both kinds
    assert len(log_lines(log, prompt)) == 1


def test_identical_concurrent_calls_make_one_upstream_call(system: NovaSystem, log: Path) -> None:
    prompt = _unique("everyone asks this")
    script = {"text": "the one answer", "delay": 0.5}
    calls = [chat_call(prompt, log=log, script=script) for _ in range(20)]
    with EventTap(system, topics=("cache.",)) as tap:
        replies = Calls(system).many(calls, timeout=30)
        tap.wait_for("cache.coalesced", count=19)
    answers = [r[-1] for r in replies.values()]
    assert all(isinstance(a, CallSucceeded) and a.response.text == "the one answer" for a in answers)
    assert len(log_lines(log, prompt)) == 1


def test_errors_are_never_cached_and_coalesced_callers_share_the_error(system: NovaSystem, log: Path) -> None:
    prompt = _unique("failing")
    script = {"error": "ServerError", "message": "upstream down", "delay": 0.3}
    replies = Calls(system).many([chat_call(prompt, log=log, script=script) for _ in range(5)])
    finals = [r[-1] for r in replies.values()]
    assert all(isinstance(f, CallFailed) and isinstance(f.error, errors.ServerError) for f in finals)
    assert len(log_lines(log, prompt)) == 1  # coalesced
    error = Calls(system).error(chat_call(prompt, log=log, script=script))
    assert isinstance(error, errors.ServerError)
    assert len(log_lines(log, prompt)) == 2  # the error was not stored


def test_the_sqlite_cache_outlives_the_system(tmp_path: Path) -> None:
    log = tmp_path / "upstream.jsonl"
    with running(_config(tmp_path, "sqlite")) as system:
        assert Calls(system).ok(chat_call("remember me", log=log)).cached is False
    with running(_config(tmp_path, "sqlite")) as system:
        assert Calls(system).ok(chat_call("remember me", log=log)).cached is True
    assert len(log_lines(log)) == 1


def test_a_call_waiting_behind_a_cancelled_identical_call_goes_upstream_itself(
    system: NovaSystem, log: Path
) -> None:
    from nova.messages import CancelCall

    prompt = _unique("asked twice, the first gives up")
    script = {"text": "answered", "delay": 1.0}
    first, second = chat_call(prompt, log=log, script=script), chat_call(prompt, log=log, script=script)
    with EventTap(system, topics=("cache.",)) as tap, system.asys.private() as ctx:
        ctx.tell(system.router, first)
        tap.wait_for("cache.miss", request_id=first.request_id)
        ctx.tell(system.router, second)
        tap.wait_for("cache.coalesced", request_id=second.request_id)
        ctx.tell(system.router, CancelCall(request_id=first.request_id))
        replies: dict[str, Any] = {}
        deadline = 15.0  # far less than the calls' own 600 s deadline
        while second.request_id not in replies and deadline > 0:
            message = ctx.listen(1.0)
            deadline -= 1.0
            if isinstance(message, (CallSucceeded, CallFailed)):
                replies[message.request_id] = message
    assert isinstance(replies.get(first.request_id), CallFailed)
    assert isinstance(replies.get(second.request_id), CallSucceeded), replies
    assert replies[second.request_id].response.text == "answered"
    assert len(log_lines(log, prompt)) == 2  # the cancelled call's and its own
