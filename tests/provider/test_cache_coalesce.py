"""Coalescer: N concurrent identical calls make one upstream call and all N get its outcome."""

from __future__ import annotations

import asyncio

import pytest

from nova.cache import Coalescer
from nova.errors import ServerError
from tests.conftest import arun


def test_the_first_caller_works_the_others_wait() -> None:
    table: Coalescer[str] = Coalescer()
    assert table.join("k", "r1") is True
    assert table.join("k", "r2") is False
    assert table.join("k", "r3") is False
    assert table.join("other", "r4") is True
    assert table.pending("k") and "k" in table and len(table) == 2
    assert table.coalesced == 2
    assert table.resolve("k") == ["r1", "r2", "r3"]  # arrival order, the first included
    assert not table.pending("k") and table.resolve("k") == []
    assert table.join("k", "r5") is True  # a later call starts afresh


def test_a_caller_who_leaves_is_dropped_and_the_call_runs_on() -> None:
    table: Coalescer[str] = Coalescer()
    for waiter in ("r1", "r2", "r3"):
        table.join("k", waiter)
    assert table.drop("r1") == "k"  # even the one making the call
    assert table.pending("k") and table.waiters("k") == ["r2", "r3"]
    assert table.drop("r3", key="k") == "k"
    assert table.drop("r9") is None
    assert table.drop("r2", key="elsewhere") is None
    assert table.resolve("k") == ["r2"]


def test_every_waiter_gone_still_leaves_the_call_pending() -> None:
    table: Coalescer[str] = Coalescer()
    table.join("k", "r1")
    table.drop("r1")
    assert table.pending("k")  # the upstream call is still running: a new caller joins it
    assert table.join("k", "r2") is False
    assert table.resolve("k") == ["r2"]


def test_unhashable_waiters_work() -> None:
    table: Coalescer[dict[str, str]] = Coalescer()
    table.join("k", {"id": "1"})
    table.join("k", {"id": "2"})
    assert table.drop({"id": "1"}) == "k"
    assert table.resolve("k") == [{"id": "2"}]


@pytest.mark.parametrize("fails", [False, True], ids=["answer", "error"])
def test_a_hundred_identical_concurrent_calls_make_one_upstream_call(fails: bool) -> None:
    async def main() -> list[str | BaseException]:
        table: Coalescer[asyncio.Future[str]] = Coalescer()
        upstream_calls = 0
        release = asyncio.Event()

        async def upstream() -> str:
            nonlocal upstream_calls
            upstream_calls += 1
            await release.wait()
            if fails:
                raise ServerError("upstream failed")
            return "answer"

        async def call() -> str:
            waiter: asyncio.Future[str] = asyncio.get_running_loop().create_future()
            if table.join("key", waiter):
                try:
                    result = await upstream()
                except ServerError as exc:
                    for w in table.resolve("key"):
                        w.set_exception(exc)
                else:
                    for w in table.resolve("key"):
                        w.set_result(result)
            return await waiter

        tasks = [asyncio.create_task(call()) for _ in range(100)]

        async def all_arrived() -> None:
            while table.coalesced < 99:
                await asyncio.sleep(0)

        await asyncio.wait_for(all_arrived(), timeout=10)  # every caller joins before the call ends
        release.set()
        outcomes = await asyncio.gather(*tasks, return_exceptions=True)
        assert upstream_calls == 1 and not table.pending("key")
        return outcomes

    outcomes = arun(main())
    if fails:
        assert len(outcomes) == 100 and all(isinstance(o, ServerError) for o in outcomes)
    else:
        assert outcomes == ["answer"] * 100
