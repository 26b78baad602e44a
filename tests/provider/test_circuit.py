"""Circuit breakers: the failure-rate window, transitions, the half-open probe, Retry-After cooldowns,
which outcomes count as failures, as successes, or not at all."""

from __future__ import annotations

import asyncio

import pytest
from pydantic import ValidationError

from nova import errors
from nova.circuit import CircuitBoard, CircuitBreaker, CircuitSettings, health_verdict, is_health_failure
from nova.config import parse_config
from nova.errors import ConfigurationError
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


# A breaker that opens on its first failure: a window of one call, decided after one call.
AT_ONCE: dict[str, object] = {"window_size": 1, "minimum_calls": 1}


def states(b: CircuitBreaker) -> list[tuple[str, str]]:
    return [(t.old, t.new) for t in b.drain()]


def test_opens_when_the_failure_rate_reaches_the_threshold_and_rejects_fast() -> None:
    clock = FakeClock()
    b = breaker(clock, window_size=10, minimum_calls=4, failure_rate_threshold=50)
    for outcome in ["ok", "fail", "ok"]:
        assert b.allow()
        b.record_failure() if outcome == "fail" else b.record_success()
    assert b.state == "closed" and states(b) == []
    b.record_failure()  # 2 of 4 calls failed: 50 %
    assert b.state == "open"
    assert not b.allow()
    [t] = b.drain()
    assert (t.old, t.new, t.failures, t.calls, t.target) == (
        "closed",
        "open",
        2,
        4,
        Target("openai", "gpt-4o"),
    )
    assert t.open_until == clock.now + 30.0


def test_no_decision_before_minimum_calls() -> None:
    b = breaker(FakeClock(), window_size=10, minimum_calls=5)
    for _ in range(4):
        b.record_failure()
    assert b.state == "closed" and b.failure_rate is None  # 100 % of 4 calls: too few to judge
    b.record_failure()
    assert b.state == "open"


def test_failures_spread_among_successes_open_it_where_a_consecutive_count_would_not() -> None:
    b = breaker(FakeClock(), window_size=10, minimum_calls=10, failure_rate_threshold=50)
    for _ in range(5):  # never two failures in a row
        b.record_failure()
        b.record_success()
    assert b.failure_rate == 50.0 and b.state == "open"


def test_successes_keep_the_rate_under_the_threshold() -> None:
    b = breaker(FakeClock(), window_size=10, minimum_calls=10, failure_rate_threshold=50)
    for _ in range(4):
        b.record_failure()
    for _ in range(6):
        b.record_success()
    assert (b.failures, b.calls, b.failure_rate, b.state) == (4, 10, 40.0, "closed")


def test_old_outcomes_slide_out_of_the_window() -> None:
    b = breaker(FakeClock(), window_size=4, minimum_calls=4, failure_rate_threshold=75)
    for _ in range(2):
        b.record_failure()
    for _ in range(4):
        b.record_success()  # the two failures slide out
    assert (b.failures, b.calls) == (0, 4)
    for _ in range(2):
        b.record_failure()
    assert b.state == "closed" and b.failure_rate == 50.0
    b.record_failure()
    assert b.state == "open" and b.failure_rate == 75.0


def test_default_settings_open_at_half_of_the_last_calls() -> None:
    s = CircuitSettings()
    assert (s.window_size, s.minimum_calls, s.failure_rate_threshold) == (20, 10, 50.0)
    b = breaker(FakeClock())
    for _ in range(5):
        b.record_success()
    for _ in range(4):
        b.record_failure()
    b.record_failure()  # 5 of 10
    assert b.state == "open"


def test_half_open_after_cooldown_lets_exactly_one_probe_through() -> None:
    clock = FakeClock()
    b = breaker(clock, **AT_ONCE, cooldown_s=10)
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
    b = breaker(clock, **AT_ONCE, cooldown_s=10)
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
    b = breaker(clock, **AT_ONCE, cooldown_s=10)
    b.record_failure(retry_after_s=45)
    clock.advance(30)
    assert not b.allow() and b.state == "open"
    clock.advance(15)
    assert b.allow() and b.state == "half_open"


def test_retry_after_shorter_than_cooldown_does_not_shorten_it() -> None:
    clock = FakeClock()
    b = breaker(clock, **AT_ONCE, cooldown_s=10)
    b.record_failure(retry_after_s=2)
    clock.advance(5)
    assert not b.allow()


def test_a_late_failure_while_open_can_only_lengthen_the_pause() -> None:
    clock = FakeClock()
    b = breaker(clock, **AT_ONCE, cooldown_s=10)
    b.record_failure()
    clock.advance(5)
    b.record_failure(retry_after_s=20)  # a call let through before it opened reports back
    clock.advance(10)
    assert b.state == "open"
    clock.advance(10)
    assert b.state == "half_open"


def test_released_probe_lets_another_probe_go() -> None:
    clock = FakeClock()
    b = breaker(clock, **AT_ONCE, cooldown_s=1)
    b.record_failure()
    clock.advance(1)
    assert b.allow()
    b.release()  # e.g. the probe failed with the caller's own invalid request
    assert b.allow()
    assert b.state == "half_open"


def test_a_lost_probe_frees_its_slot_after_probe_timeout() -> None:
    clock = FakeClock()
    b = breaker(clock, **AT_ONCE, cooldown_s=1, probe_timeout_s=60)
    b.record_failure()
    clock.advance(1)
    assert b.allow()
    clock.advance(59)
    assert not b.allow()
    clock.advance(1)
    assert b.allow()


def test_more_probes_when_configured() -> None:
    clock = FakeClock()
    b = breaker(clock, **AT_ONCE, cooldown_s=1, half_open_max_probes=2)
    b.record_failure()
    clock.advance(1)
    assert b.allow() and b.allow() and not b.allow()


def test_disabled_breaker_never_opens() -> None:
    b = breaker(FakeClock(), enabled=False, **AT_ONCE)
    for _ in range(10):
        b.record_failure()
    assert b.allow() and b.state == "closed" and b.drain() == []


@pytest.mark.parametrize(
    "error, verdict",
    [
        (errors.ConnectError("refused"), "failure"),
        (errors.RequestTimeoutError("slow"), "failure"),
        (errors.ServerError("500"), "failure"),
        (errors.OverloadedError("529"), "failure"),
        (errors.RateLimitError("429"), "failure"),
        (errors.QuotaExhaustedError("quota"), "failure"),
        (errors.MalformedResponseError("truncated"), "failure"),
        (errors.IncompleteStreamError("cut"), "failure"),
        (TimeoutError(), "failure"),
        (ConnectionResetError(), "failure"),
        # The service answered, about the caller's request: it is up.
        (errors.InvalidRequestError("bad param"), "success"),
        (errors.ContextLengthExceededError("too long"), "success"),
        (errors.AuthenticationError("bad key"), "success"),
        (errors.PermissionDeniedError("no"), "success"),
        (errors.NotFoundError("no model"), "success"),
        (errors.ContentFilterError("refused"), "success"),
        # Nothing learnt about the target.
        (errors.DriverUnavailableError("actor died"), "neutral"),
        (errors.LocalOverloadError("our connection pool was full"), "neutral"),
        (errors.InvalidInputError("cannot encode"), "neutral"),
        (errors.CancelledError("cancelled"), "neutral"),
        (asyncio.CancelledError(), "neutral"),
        (errors.PluginError("plugin raised"), "neutral"),
        (errors.CircuitOpenError("open"), "neutral"),
        (errors.RateLimitExceededError("our own limiter"), "neutral"),
        (errors.UnknownDriverError("no such driver"), "neutral"),
    ],
)
def test_what_each_outcome_says_about_the_target(error: BaseException, verdict: str) -> None:
    assert health_verdict(error) == verdict
    assert is_health_failure(error) is (verdict == "failure")


def test_late_success_while_open_does_not_close_the_circuit() -> None:
    clock = FakeClock()
    b = breaker(clock, **AT_ONCE, cooldown_s=10)
    b.record_failure()
    b.record_success()  # a call let through before it opened reports back
    assert b.state == "open" and not b.allow()


def test_closing_starts_a_fresh_window() -> None:
    clock = FakeClock()
    b = breaker(clock, window_size=4, minimum_calls=2, cooldown_s=1)
    b.record_failure()
    b.record_failure()
    clock.advance(1)
    assert b.allow()
    b.record_success()
    assert (b.state, b.calls, b.failures) == ("closed", 0, 0)
    b.record_failure()  # one failure of one call: below minimum_calls, stays closed
    assert b.state == "closed"


def test_opening_transition_names_the_last_failure() -> None:
    b = breaker(FakeClock(), **AT_ONCE)
    b.record_failure(error=errors.ServerError("upstream exploded", status_code=502))
    [t] = b.drain()
    assert t.last_error == "ServerError: upstream exploded" and b.last_error == t.last_error


def test_settings_are_validated() -> None:
    with pytest.raises(ValidationError, match="minimum_calls"):
        CircuitSettings(window_size=5, minimum_calls=6)
    for bad in ({"window_size": 0}, {"failure_rate_threshold": 0}, {"failure_rate_threshold": 101}):
        with pytest.raises(ValidationError):
            CircuitSettings.model_validate(bad)


def test_the_removed_failure_threshold_key_names_its_replacements() -> None:
    with pytest.raises(ValidationError) as info:
        CircuitSettings.model_validate({"failure_threshold": 5})
    text = str(info.value)
    assert "failure_threshold" in text and "removed" in text
    assert all(key in text for key in ("window_size", "minimum_calls", "failure_rate_threshold"))


def test_an_old_config_with_failure_threshold_fails_at_start_with_the_new_keys() -> None:
    raw = {"fallback": {"circuit": {"failure_threshold": 3, "cooldown_s": 60}}}
    with pytest.raises(ConfigurationError) as info:
        parse_config(raw, source="old.toml")
    message = info.value.message
    assert message.startswith("old.toml: key 'fallback.circuit'") and "failure_threshold" in message
    assert all(key in message for key in ("window_size", "minimum_calls", "failure_rate_threshold"))


def test_board_creates_breakers_lazily_with_per_target_settings() -> None:
    clock = FakeClock()
    strict = CircuitSettings(window_size=1, minimum_calls=1)
    a, b = Target("openai", "gpt-4o"), Target("anthropic")
    board = CircuitBoard(
        CircuitSettings(window_size=5, minimum_calls=5),
        clock,
        settings_for=lambda t: strict if t == b else None,
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
