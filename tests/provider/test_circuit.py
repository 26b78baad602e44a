"""Circuit breakers: transitions, the single half-open probe, Retry-After cooldowns, which errors count."""

from __future__ import annotations

import pytest

from nova import errors
from nova.circuit import CircuitBoard, CircuitBreaker, CircuitSettings, is_health_failure
from nova.models import Target


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def breaker(clock: FakeClock, **settings: object) -> CircuitBreaker:
    return CircuitBreaker(CircuitSettings(**settings), clock, target=Target("openai", "gpt-4o"))


def states(b: CircuitBreaker) -> list[tuple[str, str]]:
    return [(t.old, t.new) for t in b.drain()]


def test_opens_after_threshold_consecutive_failures_and_rejects_fast() -> None:
    clock = FakeClock()
    b = breaker(clock, failure_threshold=3)
    for _ in range(2):
        assert b.allow()
        b.record_failure()
    assert b.state == "closed" and states(b) == []
    b.record_failure()
    assert b.state == "open"
    assert not b.allow()
    [t] = b.drain()
    assert (t.old, t.new, t.failures, t.target) == ("closed", "open", 3, Target("openai", "gpt-4o"))
    assert t.open_until == clock.now + 30.0


def test_a_success_resets_the_consecutive_count() -> None:
    b = breaker(FakeClock(), failure_threshold=3)
    b.record_failure()
    b.record_failure()
    b.record_success()
    b.record_failure()
    b.record_failure()
    assert b.state == "closed" and b.failures == 2


def test_half_open_after_cooldown_lets_exactly_one_probe_through() -> None:
    clock = FakeClock()
    b = breaker(clock, failure_threshold=1, cooldown_s=10)
    b.record_failure()
    clock.advance(9.9)
    assert not b.allow() and b.state == "open"
    clock.advance(0.1)
    assert b.allow()  # the probe
    assert b.state == "half_open"
    assert not b.allow() and not b.allow()  # everyone else is still rejected while it runs
    b.record_success()
    assert b.state == "closed"
    assert b.allow() and b.allow()
    assert states(b) == [("closed", "open"), ("open", "half_open"), ("half_open", "closed")]


def test_failed_probe_reopens_for_a_fresh_cooldown() -> None:
    clock = FakeClock()
    b = breaker(clock, failure_threshold=1, cooldown_s=10)
    b.record_failure()
    clock.advance(10)
    assert b.allow()
    b.record_failure()
    assert b.state == "open" and not b.allow()
    clock.advance(9)
    assert not b.allow()
    clock.advance(1)
    assert b.allow()
    assert states(b) == [
        ("closed", "open"),
        ("open", "half_open"),
        ("half_open", "open"),
        ("open", "half_open"),
    ]


def test_retry_after_longer_than_cooldown_extends_the_open_period() -> None:
    clock = FakeClock()
    b = breaker(clock, failure_threshold=1, cooldown_s=10)
    b.record_failure(retry_after_s=45)
    clock.advance(30)
    assert not b.allow() and b.state == "open"
    clock.advance(15)
    assert b.allow() and b.state == "half_open"


def test_retry_after_shorter_than_cooldown_does_not_shorten_it() -> None:
    clock = FakeClock()
    b = breaker(clock, failure_threshold=1, cooldown_s=10)
    b.record_failure(retry_after_s=2)
    clock.advance(5)
    assert not b.allow()


def test_a_late_failure_while_open_can_only_lengthen_the_pause() -> None:
    clock = FakeClock()
    b = breaker(clock, failure_threshold=1, cooldown_s=10)
    b.record_failure()
    clock.advance(5)
    b.record_failure(retry_after_s=20)  # a call let through before it opened reports back
    clock.advance(10)
    assert b.state == "open"
    clock.advance(10)
    assert b.state == "half_open"


def test_released_probe_lets_another_probe_go() -> None:
    clock = FakeClock()
    b = breaker(clock, failure_threshold=1, cooldown_s=1)
    b.record_failure()
    clock.advance(1)
    assert b.allow()
    b.release()  # e.g. the probe failed with the caller's own invalid request
    assert b.allow()
    assert b.state == "half_open"


def test_a_lost_probe_frees_its_slot_after_probe_timeout() -> None:
    clock = FakeClock()
    b = breaker(clock, failure_threshold=1, cooldown_s=1, probe_timeout_s=60)
    b.record_failure()
    clock.advance(1)
    assert b.allow()
    clock.advance(59)
    assert not b.allow()
    clock.advance(1)
    assert b.allow()


def test_more_probes_when_configured() -> None:
    clock = FakeClock()
    b = breaker(clock, failure_threshold=1, cooldown_s=1, half_open_max_probes=2)
    b.record_failure()
    clock.advance(1)
    assert b.allow() and b.allow() and not b.allow()


def test_disabled_breaker_never_opens() -> None:
    b = breaker(FakeClock(), enabled=False, failure_threshold=1)
    for _ in range(10):
        b.record_failure()
    assert b.allow() and b.state == "closed" and b.drain() == []


@pytest.mark.parametrize(
    "error, counts",
    [
        (errors.ConnectError("refused"), True),
        (errors.RequestTimeoutError("slow"), True),
        (errors.ServerError("500"), True),
        (errors.OverloadedError("529"), True),
        (errors.RateLimitError("429"), True),
        (errors.QuotaExhaustedError("quota"), True),
        (errors.MalformedResponseError("truncated"), True),
        (errors.IncompleteStreamError("cut"), True),
        (errors.DriverUnavailableError("actor died"), True),
        (TimeoutError(), True),
        (errors.InvalidRequestError("bad param"), False),
        (errors.ContextLengthExceededError("too long"), False),
        (errors.AuthenticationError("bad key"), False),
        (errors.PermissionDeniedError("no"), False),
        (errors.NotFoundError("no model"), False),
        (errors.ContentFilterError("refused"), False),
        (errors.InvalidInputError("bad call"), False),
        (errors.PluginError("plugin raised"), False),
        (errors.CancelledError("cancelled"), False),
        (errors.CircuitOpenError("open"), False),
        (errors.RateLimitExceededError("our own limiter"), False),
    ],
)
def test_only_errors_about_the_target_count(error: BaseException, counts: bool) -> None:
    assert is_health_failure(error) is counts


def test_board_creates_breakers_lazily_with_per_target_settings() -> None:
    clock = FakeClock()
    strict = CircuitSettings(failure_threshold=1)
    a, b = Target("openai", "gpt-4o"), Target("anthropic")
    board = CircuitBoard(
        CircuitSettings(failure_threshold=5), clock, settings_for=lambda t: strict if t == b else None
    )
    assert len(board) == 0
    board.breaker(a).record_failure()
    board.breaker(b).record_failure()
    assert board.breaker(a) is board[a]
    assert board.states() == {a: "closed", b: "open"}
    clock.advance(30)
    assert board.breaker(b).allow()
    assert [(t.target, t.new) for t in board.drain_transitions()] == [(b, "open"), (b, "half_open")]
    assert board.drain_transitions() == []
