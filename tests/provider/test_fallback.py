"""FallbackPlan: retries, backoff, Retry-After, target order, circuits, deadlines, streams, attempts."""

from __future__ import annotations

import pickle
import random

import pytest
from pydantic import ValidationError

from nova import errors
from nova.circuit import CircuitBoard, CircuitSettings
from nova.fallback import (
    FallbackPlan,
    FallbackSettings,
    GiveUp,
    RetrySettings,
    Step,
    Target,
    Try,
    backoff_delay,
    resolve_targets,
)
from nova.types import Response, Usage

A, B, C = Target("openai", "gpt-4o"), Target("anthropic", "claude-3-5-sonnet"), Target("ollama", "llama3")
SAME = Target("openai", "gpt-4o-mini")
WINDOWS = {A: 128_000, B: 200_000, C: 8_192, SAME: 128_000}


class FakeClock:
    def __init__(self) -> None:
        self.now = 500.0

    def __call__(self) -> float:
        return self.now


def plan(
    targets: list[Target] | None = None,
    clock: FakeClock | None = None,
    board: CircuitBoard | None = None,
    *,
    deadline: float | None = None,
    windows: dict[Target, int | None] | None = None,
    **retry: object,
) -> FallbackPlan:
    clock = clock or FakeClock()
    settings = FallbackSettings(retry=RetrySettings(**retry))
    table = WINDOWS if windows is None else windows
    return FallbackPlan(
        targets if targets is not None else [A, B],
        settings,
        board if board is not None else CircuitBoard(clock=clock),
        context_window=lambda t: table.get(t),
        rng=random.Random(7),
        clock=clock,
        deadline=deadline,
    )


def tried(step: Step) -> Target:
    assert isinstance(step, Try), step
    return step.target


def error(step: Step) -> errors.NovaError:
    assert isinstance(step, GiveUp), step
    return step.error


def test_first_step_is_the_first_target_at_once() -> None:
    step = plan().start()
    assert step == Try(target=A, delay_s=0.0, attempt=1, timeout_s=None, reason="first")


def test_retryable_error_retried_on_same_target_then_next_target() -> None:
    p = plan(max_attempts_per_target=3)
    p.start()
    s1 = p.on_failure(errors.ServerError("boom"), 0.2)
    s2 = p.on_failure(errors.OverloadedError("busy"), 0.2)
    s3 = p.on_failure(errors.ConnectError("refused"), 0.2)
    assert [tried(s) for s in (s1, s2, s3)] == [A, A, B]
    assert [s.reason for s in (s1, s2, s3)] == ["retry", "retry", "next_target"]  # type: ignore[union-attr]
    assert [s.attempt for s in (s1, s2, s3)] == [2, 3, 4]  # type: ignore[union-attr]
    assert s3.delay_s == 0.0  # type: ignore[union-attr]  # no waiting when changing target


def test_backoff_is_jittered_exponential_and_capped() -> None:
    settings = RetrySettings(backoff_initial_s=0.5, backoff_max_s=8.0, jitter=0.25)
    rng = random.Random(1)
    for retry, high in [(0, 0.5), (1, 1.0), (2, 2.0), (3, 4.0), (4, 8.0), (5, 8.0), (10, 8.0)]:
        for _ in range(200):
            assert high * 0.75 <= backoff_delay(retry, settings, rng) <= high
    no_jitter = RetrySettings(jitter=0)
    assert [backoff_delay(n, no_jitter, rng) for n in range(6)] == [0.5, 1.0, 2.0, 4.0, 8.0, 8.0]


def test_plan_backoff_grows_per_retry_on_a_target() -> None:
    p = plan([A], max_attempts_per_target=4, jitter=0)
    p.start()
    delays = [p.on_failure(errors.ServerError("x"), 0.1).delay_s for _ in range(3)]  # type: ignore[union-attr]
    assert delays == [0.5, 1.0, 2.0]


def test_retry_after_is_honoured_exactly() -> None:
    p = plan()
    p.start()
    step = p.on_failure(errors.RateLimitError("slow down", retry_after=7.5), 0.1)
    assert tried(step) == A and step.delay_s == 7.5  # type: ignore[union-attr]


def test_retry_after_above_the_cap_moves_to_next_target_without_waiting() -> None:
    p = plan(retry_after_cap_s=60)
    p.start()
    step = p.on_failure(errors.RateLimitError("come back later", retry_after=61), 0.1)
    assert tried(step) == B and step.delay_s == 0.0  # type: ignore[union-attr]


def test_zero_retry_after_falls_back_to_backoff() -> None:
    p = plan(jitter=0)
    p.start()
    assert p.on_failure(errors.RateLimitError("x", retry_after=0), 0.1).delay_s == 0.5  # type: ignore[union-attr]


def test_x_should_retry_false_is_not_retried_but_moves_on() -> None:
    p = plan()
    p.start()
    step = p.on_failure(errors.ServerError("do not retry", retryable=False), 0.1)
    assert tried(step) == B


def test_a_driver_that_died_mid_call_is_never_retried_but_the_caller_may_retry() -> None:
    died = errors.DriverUnavailableError("the driver actor died mid-call", retryable=True)
    p = plan()
    p.start()
    assert tried(p.on_failure(died, 0.1)) == B  # the next target, not the same one again
    alone = plan([A])
    alone.start()
    step = alone.on_failure(died, 0.1)
    assert isinstance(step, GiveUp) and step.error.retryable


def test_x_should_retry_true_retries_an_otherwise_final_error() -> None:
    p = plan()
    p.start()
    assert tried(p.on_failure(errors.MidStreamError("overloaded event", retryable=True), 0.1)) == A


@pytest.mark.parametrize(
    "cls",
    [
        errors.AuthenticationError,
        errors.PermissionDeniedError,
        errors.NotFoundError,
        errors.InvalidRequestError,
        errors.RequestTooLargeError,
        errors.ContentFilterError,
        errors.InvalidInputError,
        errors.PluginError,
        errors.CancelledError,
    ],
)
def test_caller_errors_are_final_and_given_back_unwrapped(cls: type[errors.NovaError]) -> None:
    p = plan([A, B, C])
    p.start()
    original = cls("no", driver="openai", model="gpt-4o", retryable=True)  # even if marked retryable
    assert error(p.on_failure(original, 0.1)) is original
    assert p.done and len(p.attempts) == 1


def test_caller_error_after_earlier_failures_is_still_the_original() -> None:
    p = plan([A, B])
    p.start()
    p.on_failure(errors.ServerError("down", retryable=False), 0.1)
    auth = errors.AuthenticationError("bad key for anthropic")
    assert error(p.on_failure(auth, 0.1)) is auth
    assert [a.error_type for a in p.attempts] == ["ServerError", "AuthenticationError"]


def test_quota_exhausted_skips_the_target_at_once() -> None:
    p = plan(max_attempts_per_target=5)
    p.start()
    step = p.on_failure(errors.QuotaExhaustedError("billing", retry_after=1), 0.1)
    assert tried(step) == B and step.reason == "next_target"  # type: ignore[union-attr]


def test_context_length_jumps_to_a_larger_window() -> None:
    p = plan([A, C, SAME, B])  # C (8k) is smaller than A (128k), SAME is as small: both skipped
    p.start()
    step = p.on_failure(errors.ContextLengthExceededError("prompt is too long"), 0.1)
    assert tried(step) == B


def test_context_length_tries_unknown_windows() -> None:
    unknown = Target("openai_compatible", "mystery")
    p = plan([A, C, unknown, B])
    p.start()
    assert tried(p.on_failure(errors.ContextLengthExceededError("long"), 0.1)) == unknown


def test_context_length_with_unknown_failed_window_tries_the_next_target() -> None:
    p = plan([A, C], windows={A: None, C: 8_192})
    p.start()
    assert tried(p.on_failure(errors.ContextLengthExceededError("long"), 0.1)) == C


def test_context_length_with_no_larger_target_gives_up_with_all_targets_failed() -> None:
    p = plan([A, C])
    p.start()
    err = error(p.on_failure(errors.ContextLengthExceededError("long"), 0.1))
    assert isinstance(err, errors.AllTargetsFailedError)
    assert "context window too small" in err.message
    assert [type(e) for e in err.errors] == [errors.ContextLengthExceededError]


def test_open_circuit_skips_target_and_records_it() -> None:
    clock = FakeClock()
    board = CircuitBoard(CircuitSettings(window_size=1, minimum_calls=1, cooldown_s=30), clock)
    board.breaker(A).record_failure()
    p = plan([A, B], clock, board)
    assert tried(p.start()) == B
    [skip] = p.attempts
    assert (skip.driver, skip.ok, skip.error_type, skip.latency_s) == (
        "openai",
        False,
        "CircuitOpenError",
        0.0,
    )
    assert isinstance(p.errors[0], errors.CircuitOpenError) and p.errors[0].retry_after == 30


def test_failures_of_one_call_can_open_the_circuit_and_stop_its_retries() -> None:
    clock = FakeClock()
    board = CircuitBoard(CircuitSettings(window_size=2, minimum_calls=2, failure_rate_threshold=100), clock)
    p = plan([A, B], clock, board, max_attempts_per_target=5)
    p.start()
    assert tried(p.on_failure(errors.ServerError("x"), 0.1)) == A
    assert tried(p.on_failure(errors.ServerError("x"), 0.1)) == B  # A opened: no third try there
    assert [a.error_type for a in p.attempts] == ["ServerError", "ServerError", "CircuitOpenError"]
    assert [t.new for t in board.drain_transitions()] == ["open"]


def test_caller_errors_do_not_count_against_the_circuit() -> None:
    clock = FakeClock()
    board = CircuitBoard(CircuitSettings(window_size=1, minimum_calls=1), clock)
    for _ in range(3):
        p = plan([A], clock, board)
        p.start()
        p.on_failure(errors.InvalidRequestError("bad temperature"), 0.1)
    assert board.breaker(A).state == "closed"


def test_a_caller_error_on_a_probe_closes_the_circuit_as_the_service_answered() -> None:
    clock = FakeClock()
    board = CircuitBoard(CircuitSettings(window_size=1, minimum_calls=1, cooldown_s=10), clock)
    board.breaker(A).record_failure()
    clock.now += 10
    first = plan([A], clock, board)
    assert tried(first.start()) == A  # the probe
    assert isinstance(plan([A], clock, board).start(), GiveUp)  # one probe at a time
    first.on_failure(errors.InvalidRequestError("bad temperature"), 0.1)
    assert board.breaker(A).state == "closed"


@pytest.mark.parametrize(
    "neutral",
    [
        errors.DriverUnavailableError("the driver actor died mid-call", retryable=False),
        errors.LocalOverloadError("no free connection in this process", retryable=False),
        errors.InvalidInputError("cannot encode the image"),
        errors.CancelledError("the caller cancelled"),
    ],
)
def test_outcomes_that_say_nothing_about_the_target_neither_count_nor_keep_the_probe(
    neutral: errors.NovaError,
) -> None:
    clock = FakeClock()
    settings = CircuitSettings(window_size=2, minimum_calls=2, cooldown_s=10)
    board = CircuitBoard(settings, clock)
    for _ in range(3):
        p = plan([A], clock, board)
        p.start()
        p.on_failure(neutral, 0.1)
    breaker = board.breaker(A)
    assert (breaker.state, breaker.calls) == ("closed", 0)  # not failures, and not successes either
    breaker.record_failure()
    breaker.record_failure()
    clock.now += 10
    probe = plan([A], clock, board)
    assert tried(probe.start()) == A
    probe.on_failure(neutral, 0.1)
    assert breaker.state == "half_open"  # the probe slot is free again, the circuit unjudged
    assert tried(plan([A], clock, board).start()) == A


def test_a_failed_half_open_probe_gives_up_with_the_real_error() -> None:
    clock = FakeClock()
    board = CircuitBoard(CircuitSettings(window_size=1, minimum_calls=1, cooldown_s=10), clock)
    board.breaker(A).record_failure()
    clock.now += 10
    p = plan([A], clock, board)
    assert tried(p.start()) == A
    real = errors.ServerError("still down", driver="openai", status_code=503)
    assert error(p.on_failure(real, 0.1)) is real
    assert board.breaker(A).state == "open"


def test_circuit_open_error_says_why_the_circuit_is_open() -> None:
    clock = FakeClock()
    board = CircuitBoard(CircuitSettings(window_size=4, minimum_calls=2, cooldown_s=30), clock)
    board.breaker(A).record_success()
    board.breaker(A).record_failure(error=errors.OverloadedError("Overloaded"))
    p = plan([A, B], clock, board)
    assert tried(p.start()) == B
    skip = p.errors[0]
    assert isinstance(skip, errors.CircuitOpenError)
    assert skip.details == {"failures": 1, "calls": 2, "last_error": "OverloadedError: Overloaded"}
    assert "1 of the last 2 calls failed" in skip.message and "OverloadedError: Overloaded" in skip.message


def test_all_targets_failed_counts_skipped_targets_apart() -> None:
    clock = FakeClock()
    board = CircuitBoard(CircuitSettings(window_size=1, minimum_calls=1, cooldown_s=30), clock)
    board.breaker(B).record_failure()
    p = plan([A, B], clock, board, max_attempts_per_target=1)
    p.start()
    err = error(p.on_failure(errors.ServerError("down"), 0.1))
    assert isinstance(err, errors.AllTargetsFailedError)
    assert err.message.startswith("2 targets: 1 failed, 1 skipped (circuit open): openai/gpt-4o: ServerError")
    assert "all 2 targets failed" not in err.message


def test_all_targets_failed_names_each_kind_of_skip() -> None:
    clock = FakeClock()
    board = CircuitBoard(CircuitSettings(window_size=1, minimum_calls=1, cooldown_s=30), clock)
    board.breaker(B).record_failure()
    p = plan([A, C, B], clock, board)
    p.start()
    err = error(p.on_failure(errors.ContextLengthExceededError("long"), 0.1))
    assert isinstance(err, errors.AllTargetsFailedError)
    assert err.message.startswith(
        "3 targets: 1 failed, 2 skipped (1 circuit open, 1 context window too small)"
    )


def test_success_closes_a_half_open_circuit_and_fills_attempts() -> None:
    clock = FakeClock()
    board = CircuitBoard(CircuitSettings(window_size=1, minimum_calls=1, cooldown_s=10), clock)
    board.breaker(B).record_failure()
    clock.now += 10
    p = plan([A, B], clock, board)
    p.start()
    p.on_failure(errors.QuotaExhaustedError("billing"), 0.3, Usage(input_tokens=3))
    usage = Usage(input_tokens=10, output_tokens=5)
    resp = p.on_success(Response(text="hi", usage=usage, driver="anthropic"), 1.5)
    assert board.breaker(B).state == "closed"
    assert resp.text == "hi" and len(resp.attempts) == 2
    failed, ok = resp.attempts
    assert (failed.driver, failed.model, failed.ok, failed.error_type) == (
        "openai",
        "gpt-4o",
        False,
        "QuotaExhaustedError",
    )
    assert failed.error_message == "billing" and failed.latency_s == 0.3 and failed.usage.input_tokens == 3
    assert (ok.driver, ok.model, ok.ok, ok.error_type, ok.latency_s, ok.usage) == (
        "anthropic",
        "claude-3-5-sonnet",
        True,
        None,
        1.5,
        usage,
    )
    assert p.done


def test_abandon_frees_a_held_probe() -> None:
    clock = FakeClock()
    board = CircuitBoard(CircuitSettings(window_size=1, minimum_calls=1, cooldown_s=1), clock)
    board.breaker(A).record_failure()
    clock.now += 1
    p = plan([A], clock, board)
    p.start()
    p.abandon()
    assert tried(plan([A], clock, board).start()) == A


def test_stream_after_first_chunk_never_falls_back() -> None:
    p = plan([A, B])
    p.start()
    cut = errors.IncompleteStreamError("stream ended without [DONE]")
    step = p.on_failure(cut, 2.0, after_first_chunk=True)
    assert error(step) is cut and p.done
    assert p.attempts[0].error_type == "IncompleteStreamError"


def test_stream_before_first_chunk_falls_back_like_any_call() -> None:
    p = plan([A, B], max_attempts_per_target=1)
    p.start()
    assert tried(p.on_failure(errors.IncompleteStreamError("cut"), 0.1)) == B


def test_deadline_is_never_passed_by_a_wait() -> None:
    clock = FakeClock()
    p = plan([A], clock, deadline=clock.now + 5)
    p.start()
    clock.now += 1
    err = error(p.on_failure(errors.RateLimitError("wait", retry_after=10), 1.0))
    assert isinstance(err, errors.RequestTimeoutError)
    assert [type(e) for e in err.details["errors"]] == [errors.RateLimitError]
    assert "RateLimitError" in err.message


def test_a_wait_that_would_pass_the_deadline_moves_to_the_next_target() -> None:
    clock = FakeClock()
    p = plan([A, B], clock, deadline=clock.now + 5)
    p.start()
    step = p.on_failure(errors.RateLimitError("wait", retry_after=10), 1.0)
    assert tried(step) == B and step.delay_s == 0  # type: ignore[union-attr]


def test_deadline_already_passed_gives_up_with_timeout() -> None:
    clock = FakeClock()
    p = plan([A, B], clock, deadline=clock.now + 5)
    p.start()
    clock.now += 6
    assert isinstance(error(p.on_failure(errors.ServerError("slow"), 6.0)), errors.RequestTimeoutError)


def test_attempt_timeout_is_bounded_by_the_time_left() -> None:
    clock = FakeClock()
    p = plan([A], clock, deadline=clock.now + 10, attempt_timeout_s=30, jitter=0)
    assert p.start().timeout_s == 10  # type: ignore[union-attr]
    clock.now += 4
    assert p.on_failure(errors.ServerError("x"), 4.0).timeout_s == pytest.approx(5.5)  # type: ignore[union-attr]
    assert plan([A], attempt_timeout_s=30).start().timeout_s == 30  # type: ignore[union-attr]


def test_total_timeout_setting_applies_unless_the_call_gives_a_deadline() -> None:
    clock = FakeClock()
    assert plan([A], clock, total_timeout_s=20).deadline == clock.now + 20
    assert plan([A], clock, total_timeout_s=20, deadline=clock.now + 3).deadline == clock.now + 3


def test_single_target_gives_back_its_own_last_error() -> None:
    p = plan([A], max_attempts_per_target=2)
    p.start()
    p.on_failure(errors.ServerError("first"), 0.1)
    last = errors.ServerError("second")
    assert error(p.on_failure(last, 0.1)) is last


def test_all_targets_failed_carries_every_error_and_pickles() -> None:
    p = plan([A, B], max_attempts_per_target=2)
    p.start()
    sent = [
        errors.ServerError("a1", driver="openai", status_code=500),
        errors.RateLimitError("a2", driver="openai", retry_after=1),
        errors.OverloadedError("b1", driver="anthropic", status_code=529),
        errors.ConnectError("b2", driver="anthropic"),
    ]
    steps = [p.on_failure(e, 0.1) for e in sent]
    err = error(steps[-1])
    assert isinstance(err, errors.AllTargetsFailedError)
    assert err.errors == sent
    assert "all 2 targets failed" in err.message
    assert "openai/gpt-4o: ServerError, RateLimitError" in err.message and "last: b2" in err.message
    copy = pickle.loads(pickle.dumps(err))
    assert type(copy) is errors.AllTargetsFailedError and str(copy) == str(err)
    assert [(type(e), e.message, e.driver) for e in copy.errors] == [
        (type(e), e.message, e.driver) for e in sent
    ]
    assert [a.ok for a in p.attempts] == [False] * 4


def test_empty_or_duplicate_targets() -> None:
    with pytest.raises(errors.InvalidInputError):
        plan([])
    assert plan([A, A, B]).targets == [A, B]


def test_steps_out_of_order_are_programming_errors() -> None:
    p = plan()
    with pytest.raises(RuntimeError):
        p.on_failure(errors.ServerError("x"), 0.1)
    p.start()
    with pytest.raises(RuntimeError):
        p.start()
    p.on_success(Response(text="ok"), 0.1)
    with pytest.raises(RuntimeError):
        p.on_success(Response(text="again"), 0.1)


def test_circuit_disabled_per_call_ignores_breakers() -> None:
    clock = FakeClock()
    board = CircuitBoard(CircuitSettings(window_size=1, minimum_calls=1), clock)
    board.breaker(A).record_failure()
    settings = FallbackSettings(circuit=CircuitSettings(enabled=False))
    p = FallbackPlan([A], settings, board, clock=clock)
    assert tried(p.start()) == A


def test_settings_parse_targets_from_strings_and_forbid_unknown_keys() -> None:
    s = FallbackSettings.model_validate(
        {"targets": ["openai/gpt-4o", {"driver": "anthropic"}], "retry": {"retry_after_cap_s": 120}}
    )
    assert s.targets == [A, Target("anthropic")] and s.retry.retry_after_cap_s == 120
    with pytest.raises(ValidationError, match="max_attempts"):
        FallbackSettings.model_validate({"retry": {"max_attempts": 3}})
    with pytest.raises(ValidationError):
        RetrySettings(max_attempts_per_target=0)


def test_resolve_targets() -> None:
    settings = FallbackSettings(targets=[B, C])
    assert resolve_targets(A, None, settings) == [A, B, C]
    assert resolve_targets("openai/gpt-4o", False, settings) == [A]
    assert resolve_targets(A, ["ollama/llama3", "openai/gpt-4o"], settings) == [A, C]
    assert resolve_targets(A, None, FallbackSettings()) == [A]


def test_a_target_without_model_gets_its_own_drivers_default_model() -> None:
    defaults = {"x": "gpt-4o-mini", "broken": "claude-3-5-haiku-latest", "bare": ""}
    targets = resolve_targets(Target("x", "gpt-4o-mini"), ["broken", "bare"], FallbackSettings(), defaults)
    assert targets == [
        Target("x", "gpt-4o-mini"),
        Target("broken", "claude-3-5-haiku-latest"),  # never the failing driver's gpt-4o-mini
        Target("bare"),  # no default: the driver decides, still not gpt-4o-mini
    ]
    # A call without a model is its driver's default too, and the same target as one naming it.
    assert resolve_targets(Target("x"), ["x/gpt-4o-mini"], FallbackSettings(), defaults) == [
        Target("x", "gpt-4o-mini")
    ]


def test_default_models_from_the_configured_drivers() -> None:
    from nova.config import DriverConfig
    from nova.fallback import default_models

    drivers = {
        "main": DriverConfig(kind="openai", options={"model": "gpt-4o-mini"}),
        "local": DriverConfig(kind="ollama"),
    }
    assert default_models(drivers) == {"main": "gpt-4o-mini", "local": ""}


def test_attempt_model_is_the_model_used_never_empty() -> None:
    p = plan([Target("openai")], max_attempts_per_target=2)
    p.start()
    p.on_failure(errors.ServerError("down", model="gpt-4o-mini"), 0.1)
    response = p.on_success(Response(text="hi", model="gpt-4o-mini-2024-07-18"), 0.2)
    assert [a.model for a in response.attempts] == ["gpt-4o-mini", "gpt-4o-mini-2024-07-18"]


def test_each_attempt_is_priced_by_the_driver_that_made_it() -> None:
    priced: list[tuple[str, str]] = []

    def price(driver: str, model: str, usage: Usage) -> float | None:
        priced.append((driver, model))
        return {"anthropic": 0.002, "openai": 0.001}.get(driver)

    settings = FallbackSettings(retry=RetrySettings(max_attempts_per_target=1))
    p = FallbackPlan([C, B, A], settings, price=price)
    p.start()
    p.on_failure(errors.OverloadedError("busy"), 0.1)  # no tokens used: costs nothing, priced or not
    p.on_failure(errors.IncompleteStreamError("cut"), 0.1, Usage(input_tokens=5))  # partial usage
    answered = p.on_success(Response(text="hi", model="gpt-4o", usage=Usage(input_tokens=10)), 0.3)
    assert [a.cost_usd for a in answered.attempts] == [0.0, 0.002, 0.001]
    assert priced == [("anthropic", "claude-3-5-sonnet"), ("openai", "gpt-4o")]


def test_without_a_price_function_attempts_are_unpriced() -> None:
    p = plan([A])
    p.start()
    assert p.on_success(Response(text="hi", usage=Usage(input_tokens=3)), 0.1).attempts[0].cost_usd is None
