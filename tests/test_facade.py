"""nova.llm from many threads and asyncio tasks at once, against an embedded system it starts itself."""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from nova import errors, llm
from nova.config import load_config
from nova.supervisors.system import NovaSystem
from tests.conftest import arun
from tests.integration_helpers import (
    EventTap,
    find_node,
    log_lines,
    next_port,
    session_of,
    session_pids,
    status,
    wait_until,
)

pytestmark = pytest.mark.integration

CONFIG = """
[llm]
driver = "default"

[drivers.default]
kind = "test"
handler = "tests.actors.handlers:record"

[drivers.other]
kind = "test"
model = "other-model"

[drivers.failing]
kind = "test"

[drivers.sleepy]
kind = "test"

[drivers.trickle]
kind = "test"
chunk_delay = 0.2

[system]
admin_port = {port}
state_dir = "{state}"
"""


@pytest.fixture(scope="module")
def embedded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NovaSystem]:
    """The facade's own system (started by the first call); a second, attached handle to look in."""
    tmp = tmp_path_factory.mktemp("facade")
    path = tmp / "config.toml"
    path.write_text(CONFIG.format(port=next_port(), state=tmp))
    saved = os.environ.get("NOVA_CONFIG")
    os.environ["NOVA_CONFIG"] = str(path)
    llm.shutdown()  # forget any system an earlier test attached to
    try:
        assert llm.chat("warm up").text == "echo: warm up"  # starts the system from this thread
        config = load_config()
        sid = session_of(config.system.admin_port)
        assert sid is not None
        handle = NovaSystem.attach(config)
        assert handle is not None and not handle.owned
        yield handle
        llm.shutdown()
        assert wait_until(lambda: not session_pids(sid), timeout=10), "llm.shutdown() left processes"
    finally:
        llm.shutdown()
        if saved is None:
            os.environ.pop("NOVA_CONFIG", None)
        else:
            os.environ["NOVA_CONFIG"] = saved


def test_chat_complete_and_stream(embedded: NovaSystem) -> None:
    response = llm.chat("hello")
    assert (response.text, response.driver, response.cost_usd) == ("echo: hello", "default", None)
    assert llm.complete("a prompt").text == "echo: a prompt"
    assert "".join(c.text for c in llm.stream("one two three", driver="other")) == "echo: one two three"
    assert llm.chat([{"role": "user", "content": "as messages"}]).text == "echo: as messages"


def test_a_text_completion_streams_sync_and_async(embedded: NovaSystem) -> None:
    chunks = list(llm.stream_complete("once upon a time"))
    assert len(chunks) > 1 and "".join(c.text for c in chunks) == "echo: once upon a time"
    assert chunks[-1].finish_reason == "stop"

    async def collect() -> str:
        return "".join([c.text async for c in llm.astream_complete("async prompt", driver="other")])

    assert arun(collect()) == "echo: async prompt"


def test_with_driver_fixes_the_driver(embedded: NovaSystem) -> None:
    with llm.with_driver("other") as other:
        response = other.chat("hi")
        assert (response.driver, response.model) == ("other", "other-model")
        assert arun(other.achat("hi async")).driver == "other"
        assert other.chat("override", driver="default").driver == "default"


def test_model_strings_pick_the_driver_in_calls_and_fallback_lists(embedded: NovaSystem) -> None:
    response = llm.chat("hi", model="other/a-model")
    assert (response.driver, response.model, response.text) == ("other", "a-model", "echo: hi")
    assert (
        llm.chat("hi", driver="other", model="org/a-model").model == "org/a-model"
    )  # with driver=: as given
    with pytest.raises(errors.UnknownDriverError) as raised:
        llm.chat("hi", model="org/a-model")
    assert (
        "'org'" in raised.value.message
        and "other" in raised.value.message
        and "openai" in raised.value.message
    )
    failing = {"script": {"error": "QuotaExhaustedError"}}  # read by the default driver's handler only
    rescued = llm.chat("hi", extra=failing, fallback=["other/b-model"])
    assert (rescued.driver, rescued.model) == ("other", "b-model")
    assert [a.driver for a in rescued.attempts][-1] == "other"


def test_many_threads_and_tasks_at_once_each_get_their_own_answer(embedded: NovaSystem) -> None:
    results: dict[str, str] = {}
    failures: list[BaseException] = []

    def worker(n: int) -> None:
        try:
            for i in range(5):
                prompt = f"thread {n} call {i}"
                if i % 2:
                    results[prompt] = "".join(c.text for c in llm.stream(prompt))
                else:
                    results[prompt] = llm.chat(prompt).text
        except BaseException as exc:  # reported below, not lost in the thread
            failures.append(exc)

    async def tasks() -> None:
        async def one(i: int) -> None:
            prompt = f"task {i}"
            if i % 3 == 0:
                results[prompt] = "".join([c.text async for c in llm.astream(prompt)])
            elif i % 3 == 1:
                results[prompt] = (await llm.acomplete(prompt)).text
            else:
                results[prompt] = (await llm.achat(prompt)).text

        await asyncio.gather(*(one(i) for i in range(60)))

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(12)]
    for t in threads:
        t.start()
    arun(tasks())
    for t in threads:
        t.join(60)
    assert not failures, failures
    assert len(results) == 12 * 5 + 60
    wrong = {k: v for k, v in results.items() if v != f"echo: {k}"}
    assert not wrong, f"{len(wrong)} callers got someone else's answer: {list(wrong.items())[:3]}"


def test_typed_errors_from_the_facade(embedded: NovaSystem) -> None:
    with pytest.raises(errors.UnknownDriverError):
        llm.chat("hi", driver="nope")
    with pytest.raises(errors.InvalidInputError) as raised:
        llm.chat("hi", temprature=0.2)
    assert "temprature" in str(raised.value)
    with pytest.raises(errors.InvalidInputError):
        llm.chat([])
    with pytest.raises(errors.RateLimitError):
        llm.chat(
            "hi",
            fallback=False,
            extra={"test_reply": {"error": "RateLimitError", "retry_after": 0.01}},
            driver="other",
        )


def test_errors_name_the_configured_driver_as_responses_do(embedded: NovaSystem) -> None:
    with pytest.raises(errors.RateLimitError) as raised:
        llm.chat("hi", fallback=False, extra={"test_reply": {"error": "RateLimitError"}}, driver="failing")
    assert raised.value.driver == "failing"  # the configured name, not the driver's kind ("test")
    broken = {"test_reply": {"text": "a b c", "fail_after_chunks": 1}}
    with pytest.raises(errors.IncompleteStreamError) as raised_in_stream:
        list(llm.stream("a b c", fallback=False, extra=broken, driver="failing"))
    assert raised_in_stream.value.driver == "failing"


def test_a_call_timeout_gives_novas_own_timeout_error_sync_and_async(embedded: NovaSystem) -> None:
    slow = {"test_reply": {"text": "too late", "delay": 30}}

    async def achat() -> None:
        await llm.achat("slow", timeout=0.5, fallback=False, extra=slow, driver="sleepy")

    async def astream() -> None:
        async for _ in llm.astream("slow", timeout=0.5, fallback=False, extra=slow, driver="sleepy"):
            pass

    calls = {
        "chat": lambda: llm.chat("slow", timeout=0.5, fallback=False, extra=slow, driver="sleepy"),
        "achat": lambda: arun(achat()),
        "astream": lambda: arun(astream()),
    }
    for name, call in calls.items():
        with pytest.raises(errors.RequestTimeoutError) as raised:
            call()
        # the driver enforced the deadline and said so; the facade did not replace its error
        assert raised.value.driver == "sleepy", (name, raised.value)
        assert "no answer from Nova" not in raised.value.message, (name, raised.value)


def test_a_silent_nova_times_out_naming_the_timeout_the_caller_gave() -> None:
    from nova.actors.bridge import Bridge
    from nova.actors.lanes import LaneHub

    lane_dir = tempfile.mkdtemp(prefix="silent-")
    router = LaneHub(lane_dir, "router", lambda peer, message: None)  # takes calls, never answers
    router.start()
    bridge = Bridge(lane_dir)
    try:
        call = llm._build("chat", "anyone?", {"timeout": 0.3})
        with pytest.raises(errors.RequestTimeoutError) as raised:
            bridge.call(call, llm._timeout(call))
        assert "timeout of 0.3s" in raised.value.message

        async def acall() -> None:
            await bridge.acall(call.model_copy(update={"request_id": "second"}), llm._timeout(call))

        with pytest.raises(errors.RequestTimeoutError) as raised:
            arun(acall())
        assert "timeout of 0.3s" in raised.value.message
    finally:
        bridge.close()
        router.close()
        shutil.rmtree(lane_dir, ignore_errors=True)


def test_conversation_by_id(embedded: NovaSystem, tmp_path: Path) -> None:
    log = tmp_path / "upstream.jsonl"
    llm.chat("my name is Ada", conversation="facade-c1", extra={"log": str(log)})
    llm.chat("what is my name?", conversation="facade-c1", extra={"log": str(log)})
    assert log_lines(log)[1]["messages"] == [
        ["user", "my name is Ada"],
        ["assistant", "echo: my name is Ada"],
        ["user", "what is my name?"],
    ]


def _trickle_in_flight(system: NovaSystem) -> int:
    node = find_node(status(system), "drivers", "trickle")
    return int(node.get("in_flight", 0))


def test_a_stream_consumer_that_stops_early_cancels_the_upstream_call(embedded: NovaSystem) -> None:
    text = " ".join(f"w{i}" for i in range(50))  # 50 chunks, 0.2 s apart: 10 s if not cancelled
    with EventTap(embedded, topics=("driver.call_failed",)) as tap:
        stream = llm.stream(text, driver="trickle", extra={"test_reply": {"text": text}})
        assert next(stream).text == "w0 "
        assert _trickle_in_flight(embedded) == 1
        stream.close()
        assert wait_until(lambda: _trickle_in_flight(embedded) == 0, timeout=5), "upstream call still running"
        failed = tap.wait_for("driver.call_failed", driver="trickle")[0]
    assert failed.error_type == "CancelledError"


def test_an_async_stream_consumer_that_stops_early_cancels_too(embedded: NovaSystem) -> None:
    text = " ".join(f"a{i}" for i in range(50))

    async def first_chunk() -> str:
        async for chunk in llm.astream(text, driver="trickle", extra={"test_reply": {"text": text}}):
            return chunk.text
        return ""

    assert arun(first_chunk()) == "a0 "
    assert wait_until(lambda: _trickle_in_flight(embedded) == 0, timeout=5), "upstream call still running"
