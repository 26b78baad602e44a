"""A success whose rate-limit headers say a budget is spent pauses its target, with or without
configured limits (then the fallback stage keeps the pause), and the next call waits it out."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.drivers.fixtures_openai import chat_reply
from tests.fakeserver import FakeServer, Reply
from tests.integration_helpers import Calls, EventTap, chat_call, config_for, running

pytestmark = pytest.mark.integration

SPENT = {"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "1s"}


@pytest.fixture
def server() -> Iterator[FakeServer]:
    with FakeServer() as server:
        yield server


@pytest.mark.parametrize("limits", [True, False], ids=["rate-limit stage", "no limits configured"])
def test_rate_headers_at_zero_on_a_success_pause_the_target(
    server: FakeServer, tmp_path: Path, limits: bool
) -> None:
    server.add(
        "/v1/chat/completions",
        Reply(body=chat_reply("first"), headers=SPENT),
        Reply(body=chat_reply("second")),
    )
    api = {"kind": "openai", "base_url": f"{server.url}/v1", "api_key": "sk-test-headers", "model": "gpt-x"}
    sections = {"ratelimit": {"limits": {"api": {"requests_per_minute": 1000}}}} if limits else {}
    config = config_for(tmp_path, drivers={"api": api}, llm={"driver": "api"}, **sections)
    with running(config) as system, EventTap(system, topics=("ratelimit.",)) as tap:
        first = Calls(system).ok(chat_call("one"))
        assert first.text == "first"
        paused = tap.wait_for("ratelimit.paused")[0]
        waiting = chat_call("two")
        assert Calls(system).ok(waiting).text == "second"
        delayed = tap.wait_for("ratelimit.delayed", request_id=waiting.request_id)[0]
    assert paused.data["reason"] == "rate_limit_headers" and "api" in paused.data["target"]
    assert delayed.data["wait_s"] > 0  # it waited for the pause instead of calling a spent budget
    assert len(server.requests) == 2
