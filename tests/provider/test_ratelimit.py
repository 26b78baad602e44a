"""The rate limiter as a plain object: limits, scopes, fairness, waiting, pauses; a fake clock, no sleeps."""

from __future__ import annotations

import random
from collections import defaultdict

import pytest
from pydantic import ValidationError

from nova.errors import (
    InvalidInputError,
    QuotaExhaustedError,
    RateLimitError,
    RateLimitExceededError,
    ServerError,
)
from nova.ratelimit import (
    Admitted,
    Limits,
    PollResult,
    Queued,
    RateLimiter,
    RateLimitSettings,
    Rejected,
    Ticket,
    Transition,
    estimate_text_tokens,
    estimate_tokens,
    pause_from_error,
    pause_from_snapshot,
    pauses_target,
)
from nova.types import ChatRequest, CompletionRequest


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def limiter(limits: dict[str, Limits], **settings: object) -> tuple[RateLimiter, Clock]:
    clock = Clock()
    return RateLimiter(RateLimitSettings(limits=limits, **settings), clock=clock), clock


def t(rid: str, driver: str = "openai", model: str = "gpt-4o", tokens: int = 10) -> Ticket:
    return Ticket(rid, driver, model, tokens)


def ids(tickets: list[Ticket]) -> list[str]:
    return [x.request_id for x in tickets]


# -- settings ---------------------------------------------------------------------------------


def test_settings_error_names_the_key_and_suggests_the_field() -> None:
    with pytest.raises(ValidationError) as exc:
        RateLimitSettings(limits={"openai/gpt-4o": {"request_per_minute": 5}})
    assert "'openai/gpt-4o'" in str(exc.value)
    assert "did you mean 'requests_per_minute'" in str(exc.value)


@pytest.mark.parametrize("key", ["", "/gpt-4o", "openai/", " openai"])
def test_settings_reject_malformed_scope_keys(key: str) -> None:
    with pytest.raises(ValidationError, match="must be 'driver' or 'driver/model'"):
        RateLimitSettings(limits={key: {"requests_per_minute": 5}})


def test_settings_reject_nonpositive_limits_naming_the_key() -> None:
    with pytest.raises(ValidationError, match="'anthropic'.*requests_per_minute"):
        RateLimitSettings(limits={"anthropic": {"requests_per_minute": 0}})


def test_model_names_may_contain_slashes() -> None:
    rl, _ = limiter({"together/meta-llama/Llama-3-8b": Limits(requests_per_minute=1, max_wait_s=60)})
    assert rl.submit(t("1", "together", "meta-llama/Llama-3-8b")) == Admitted()
    assert isinstance(rl.submit(t("2", "together", "meta-llama/Llama-3-8b")), Queued)
    assert rl.submit(t("3", "together", "other")) == Admitted()


# -- each limit alone -------------------------------------------------------------------------


def test_requests_per_minute_queues_then_admits_when_the_oldest_leaves_the_window() -> None:
    rl, clock = limiter({"openai": Limits(requests_per_minute=2, max_wait_s=120)})
    assert rl.submit(t("1")) == Admitted()
    clock.advance(10)
    assert rl.submit(t("2")) == Admitted()
    assert rl.submit(t("3")) == Queued("requests_per_minute", "openai")
    poll = rl.poll()
    assert poll.admitted == [] and poll.next_wakeup_s == pytest.approx(50)
    clock.advance(49.9)
    assert rl.poll().admitted == []
    clock.advance(0.1)
    poll = rl.poll()
    assert ids(poll.admitted) == ["3"] and poll.waited_s == {"3": pytest.approx(50)}


def test_tokens_per_minute_wakes_when_enough_tokens_have_left() -> None:
    rl, clock = limiter({"openai": Limits(tokens_per_minute=100, max_wait_s=120)})
    assert rl.submit(t("1", tokens=30)) == Admitted()
    clock.advance(5)
    assert rl.submit(t("2", tokens=30)) == Admitted()
    clock.advance(5)
    assert rl.submit(t("3", tokens=30)) == Admitted()
    # 90 used: a 60-token call needs the first two gone (at 60 s and 65 s), not just the first.
    assert rl.submit(t("4", tokens=60)) == Queued("tokens_per_minute", "openai")
    clock.advance(50)  # t=60: "1" has left, 60 used + 60 > 100
    poll = rl.poll()
    assert poll.admitted == [] and poll.next_wakeup_s == pytest.approx(5)
    clock.advance(5)
    assert ids(rl.poll().admitted) == ["4"]


def test_max_concurrent_waits_for_a_release_not_for_time() -> None:
    rl, clock = limiter({"openai": Limits(max_concurrent=1, max_wait_s=30)})
    assert rl.submit(t("1")) == Admitted()
    assert rl.submit(t("2")) == Queued("max_concurrent", "openai")
    # Only a release frees a slot, so the next wakeup is the deadline.
    assert rl.poll().next_wakeup_s == pytest.approx(30)
    clock.advance(3)
    assert rl.release("1", None) is True
    poll = rl.poll()
    assert ids(poll.admitted) == ["2"] and poll.waited_s["2"] == pytest.approx(3)
    assert poll.next_wakeup_s is None
    assert rl.release("1", None) is False  # released twice: harmless


def test_limits_combined_in_one_scope_all_apply() -> None:
    rl, clock = limiter(
        {"openai": Limits(requests_per_minute=3, tokens_per_minute=100, max_concurrent=2, max_wait_s=60)}
    )
    assert rl.submit(t("1", tokens=10)) == Admitted()
    assert rl.submit(t("2", tokens=10)) == Admitted()
    assert rl.submit(t("3", tokens=10)) == Queued("max_concurrent", "openai")
    rl.release("1", 10)
    assert ids(rl.poll().admitted) == ["3"]
    rl.release("2", 10)
    assert rl.submit(t("4", tokens=10)) == Queued("requests_per_minute", "openai")
    clock.advance(60)
    rl.release("3", 10)
    assert ids(rl.poll().admitted) == ["4"]
    assert rl.submit(t("5", tokens=95)) == Queued("tokens_per_minute", "openai")


# -- scopes -----------------------------------------------------------------------------------


def test_a_call_must_pass_both_its_driver_scope_and_its_model_scope() -> None:
    rl, _ = limiter(
        {
            "openai": Limits(requests_per_minute=3, max_wait_s=60),
            "openai/gpt-4o": Limits(requests_per_minute=1, max_wait_s=60),
        }
    )
    assert rl.submit(t("1", model="gpt-4o")) == Admitted()
    assert rl.submit(t("2", model="gpt-4o")) == Queued("requests_per_minute", "openai/gpt-4o")
    assert rl.submit(t("3", model="gpt-4o-mini")) == Admitted()  # its model has no limit of its own
    assert rl.submit(t("4", model="gpt-4o-mini")) == Admitted()
    assert rl.submit(t("5", model="gpt-4o-mini")) == Queued("requests_per_minute", "openai")
    assert rl.submit(t("6", driver="anthropic")) == Admitted()  # other drivers are untouched


def test_default_limits_apply_to_each_driver_separately() -> None:
    clock = Clock()
    rl = RateLimiter(
        RateLimitSettings(default=Limits(max_concurrent=1), limits={"ollama": Limits(max_concurrent=3)}),
        clock=clock,
    )
    assert rl.submit(t("1", driver="openai")) == Admitted()
    assert rl.submit(t("2", driver="anthropic")) == Admitted()  # not one budget shared by all drivers
    assert isinstance(rl.submit(t("3", driver="openai")), Queued)
    assert [rl.submit(t(f"o{i}", driver="ollama")) for i in range(3)] == [Admitted()] * 3  # own key wins


def test_a_full_model_does_not_stall_the_drivers_other_models() -> None:
    rl, _ = limiter({"openai": Limits(tokens_per_minute=1000), "openai/gpt-4o": Limits(max_concurrent=1)})
    assert rl.submit(t("1", model="gpt-4o")) == Admitted()
    assert isinstance(rl.submit(t("2", model="gpt-4o")), Queued)
    assert rl.submit(t("3", model="gpt-4o-mini")) == Admitted()


# -- fairness ---------------------------------------------------------------------------------


def test_fifo_a_later_small_request_never_overtakes_an_earlier_big_one() -> None:
    rl, clock = limiter({"openai": Limits(tokens_per_minute=100, max_wait_s=120)})
    assert rl.submit(t("1", tokens=60)) == Admitted()
    assert rl.submit(t("big", tokens=80)) == Queued("tokens_per_minute", "openai")
    # 40 tokens are free and would fit "small", but "big" came first.
    assert rl.submit(t("small", tokens=5)) == Queued("tokens_per_minute", "openai")
    assert rl.poll().admitted == []
    rl.release("1", 60)  # a release with no refund changes nothing
    assert rl.poll().admitted == []
    clock.advance(60)
    assert ids(rl.poll().admitted) == ["big", "small"]


def test_fifo_holds_across_models_sharing_the_driver_scope() -> None:
    rl, clock = limiter({"openai": Limits(tokens_per_minute=100, max_wait_s=120)})
    rl.submit(t("1", model="x", tokens=60))
    assert rl.submit(t("big", model="x", tokens=80)) == Queued("tokens_per_minute", "openai")
    assert rl.submit(t("small", model="y", tokens=5)) == Queued("tokens_per_minute", "openai")
    rl.release("1", 50)  # the refund makes room for "small" only: it still may not pass "big"
    assert rl.poll().admitted == []
    clock.advance(60)
    assert ids(rl.poll().admitted) == ["big", "small"]


def test_queue_is_served_in_arrival_order_when_capacity_frees_one_at_a_time() -> None:
    rl, _ = limiter({"openai": Limits(max_concurrent=1, max_wait_s=100)})
    rl.submit(t("0"))
    for i in range(1, 6):
        assert isinstance(rl.submit(t(str(i))), Queued)
    order = []
    for i in range(6):
        rl.release(str(i), None)
        order += ids(rl.poll().admitted)
    assert order == ["1", "2", "3", "4", "5"]


# -- bounded wait, reject mode, oversize ------------------------------------------------------


def test_a_queued_call_expires_after_max_wait_naming_the_limit() -> None:
    rl, clock = limiter({"openai": Limits(max_concurrent=1, max_wait_s=5)})
    rl.submit(t("1"))
    rl.submit(t("2"))
    clock.advance(4.99)
    assert rl.poll().expired == []
    clock.advance(0.01)
    poll = rl.poll()
    assert [(x.request_id, limit) for x, limit in poll.expired] == [("2", "max_concurrent")]
    assert poll.next_wakeup_s is None and rl.queued == 0


def test_a_call_that_cannot_be_admitted_before_its_deadline_is_refused_at_once() -> None:
    rl, clock = limiter({"openai": Limits(requests_per_minute=1, max_wait_s=10)})
    rl.submit(t("1"))
    clock.advance(20)  # the slot frees at 60 s: 40 s away, beyond the 10 s wait
    assert rl.submit(t("2")) == Rejected("requests_per_minute", pytest.approx(40), "openai")
    clock.advance(35)  # now 5 s away: worth waiting for
    assert rl.submit(t("3")) == Queued("requests_per_minute", "openai")


def test_reject_mode_refuses_at_once_with_retry_after() -> None:
    rl, clock = limiter({"openai": Limits(requests_per_minute=1, on_limit="reject")})
    assert rl.submit(t("1")) == Admitted()
    clock.advance(15)
    assert rl.submit(t("2")) == Rejected("requests_per_minute", pytest.approx(45), "openai")
    assert rl.queued == 0


def test_zero_max_wait_means_reject() -> None:
    rl, _ = limiter({"openai": Limits(max_concurrent=1, max_wait_s=0)})
    rl.submit(t("1"))
    assert rl.submit(t("2")) == Rejected("max_concurrent", None, "openai")


def test_a_request_larger_than_tokens_per_minute_is_rejected_at_once_even_in_queue_mode() -> None:
    rl, _ = limiter({"openai/gpt-4o": Limits(tokens_per_minute=1000)})
    assert rl.submit(t("1", tokens=1001)) == Rejected("tokens_per_minute", None, "openai/gpt-4o")
    assert rl.submit(t("2", tokens=1000)) == Admitted()


def test_queued_call_meeting_a_reject_scope_is_rejected_by_poll() -> None:
    rl, _ = limiter(
        {
            "openai": Limits(max_concurrent=1),
            "openai/gpt-4o": Limits(tokens_per_minute=100, on_limit="reject"),
        }
    )
    assert rl.submit(t("1", tokens=10)) == Admitted()
    assert rl.submit(t("2", tokens=10)) == Queued("max_concurrent", "openai")
    rl.release("1", 95)  # the model's minute is now full, and that scope rejects rather than queues
    poll = rl.poll()
    assert poll.admitted == []
    assert [(x.request_id, limit) for x, limit in poll.rejected] == [("2", "tokens_per_minute")]


# -- reconciliation, release, cancel ----------------------------------------------------------


def test_reconcile_down_refunds_and_admits_the_waiting_call() -> None:
    rl, _ = limiter({"openai": Limits(tokens_per_minute=100)})
    rl.submit(t("1", tokens=90))
    assert isinstance(rl.submit(t("2", tokens=50)), Queued)
    rl.release("1", 40)  # estimated 90, used 40
    assert ids(rl.poll().admitted) == ["2"]
    assert rl.stats()["openai"].tokens_in_window == 90


def test_reconcile_up_charges_the_difference() -> None:
    rl, clock = limiter({"openai": Limits(tokens_per_minute=100, max_wait_s=60)})
    rl.submit(t("1", tokens=20))
    rl.release("1", 95)  # the estimate was short
    assert rl.stats()["openai"].tokens_in_window == 95
    assert rl.submit(t("2", tokens=10)) == Queued("tokens_per_minute", "openai")
    assert rl.poll().next_wakeup_s == pytest.approx(60)
    clock.advance(60)
    assert ids(rl.poll().admitted) == ["2"]


def test_release_after_the_window_has_passed_changes_nothing() -> None:
    rl, clock = limiter({"openai": Limits(tokens_per_minute=100)})
    rl.submit(t("1", tokens=20))
    clock.advance(61)
    rl.submit(t("2", tokens=20))
    rl.release("1", 100)
    assert rl.stats()["openai"].tokens_in_window == 20


def test_cancel_removes_a_queued_call_and_unblocks_the_ones_behind_it() -> None:
    rl, _ = limiter({"openai": Limits(tokens_per_minute=100, max_wait_s=90)})
    rl.submit(t("1", tokens=60))
    rl.submit(t("big", tokens=80))
    rl.submit(t("small", tokens=30))
    assert rl.cancel("big") is True
    assert ids(rl.poll().admitted) == ["small"]
    assert rl.cancel("big") is False and rl.cancel("1") is False  # in flight is released, not cancelled


def test_a_request_id_cannot_be_submitted_twice_while_known() -> None:
    rl, _ = limiter({})
    rl.submit(t("1"))
    with pytest.raises(InvalidInputError):
        rl.submit(t("1"))
    rl.release("1", None)
    assert rl.submit(t("1")) == Admitted()


def test_disabled_limiter_admits_everything() -> None:
    rl, _ = limiter({"openai": Limits(max_concurrent=1)}, enabled=False)
    assert [rl.submit(t(str(i))) for i in range(5)] == [Admitted()] * 5
    assert rl.observe_error(RateLimitError("429", driver="openai", retry_after=5)) is None
    assert rl.poll() == PollResult()


# -- admission control from the service -------------------------------------------------------


def test_pause_from_retry_after_queues_calls_and_resumes() -> None:
    rl, clock = limiter({})
    error = RateLimitError("slow down", driver="openai", model="gpt-4o", status_code=429, retry_after=5)
    assert rl.observe_error(error) == 5
    assert rl.poll().transitions == [Transition("paused", "openai/gpt-4o", 5, "retry_after")]
    assert rl.submit(t("1")) == Queued("paused", "openai/gpt-4o")
    assert rl.submit(t("2", model="gpt-4o-mini")) == Admitted()  # only that model is paused
    assert rl.poll().next_wakeup_s == pytest.approx(5)
    clock.advance(5)
    poll = rl.poll()
    assert ids(poll.admitted) == ["1"]
    assert poll.transitions == [Transition("resumed", "openai/gpt-4o")]
    assert poll.next_wakeup_s is None


def test_pause_from_headers_at_zero_uses_the_latest_exhausted_reset() -> None:
    snapshot = {"requests_remaining": 10, "requests_reset_s": 1, "tokens_remaining": 0, "tokens_reset_s": 7}
    assert pause_from_snapshot(snapshot) == 7
    assert pause_from_snapshot({"tokens_remaining": 5, "tokens_reset_s": 7}) is None
    error = ServerError(
        "boom", driver="anthropic", rate_limits={"input_tokens_remaining": 0, "input_tokens_reset_s": 3}
    )
    assert pause_from_error(error) == 3
    rl, clock = limiter({})
    assert rl.observe_error(error) == 3  # no model on the error: the whole driver rests
    assert rl.submit(t("1", driver="anthropic", model="claude")) == Queued("paused", "anthropic")
    clock.advance(3)
    assert ids(rl.poll().admitted) == ["1"]


def test_pause_without_information() -> None:
    quota = QuotaExhaustedError("billing", driver="openai", retry_after=30)
    assert pause_from_error(quota) is None  # waiting does not refill a quota
    bare = RateLimitError("429", driver="openai", model="m")
    assert pause_from_error(bare) is None
    rl, _ = limiter({}, default_pause_s=2.0)
    assert rl.observe_error(bare) == 2.0  # a bare 429 still stops the hammering briefly
    assert rl.observe_error(quota) is None
    assert rl.observe_error(ServerError("x", driver="openai")) is None


def test_pause_is_capped_extended_never_shortened_and_refuses_calls_that_cannot_wait() -> None:
    rl, clock = limiter({"openai": Limits(max_wait_s=10)}, max_pause_s=60)
    assert rl.pause("openai", None, 86_400, "bogus header") == 60
    assert rl.pause("openai", None, 5) == pytest.approx(60)  # a shorter pause keeps the longer one
    assert rl.submit(t("1")) == Rejected("paused", pytest.approx(60), "openai")
    clock.advance(55)
    assert rl.submit(t("2")) == Queued("paused", "openai")
    transitions = rl.poll().transitions
    assert [x.kind for x in transitions] == ["paused"]  # one event, not one per pause() call


def test_pause_in_reject_mode_rejects_with_the_pause_left() -> None:
    rl, clock = limiter({"openai": Limits(on_limit="reject")})
    rl.pause("openai", None, 8, "429")
    clock.advance(2)
    assert rl.submit(t("1")) == Rejected("paused", pytest.approx(6), "openai")


def test_resumed_is_reported_on_time_even_with_nothing_waiting() -> None:
    rl, clock = limiter({})
    rl.pause("openai", "gpt-4o", 4, "429")
    assert rl.poll().next_wakeup_s == pytest.approx(4)
    clock.advance(4)
    assert rl.poll().transitions == [Transition("resumed", "openai/gpt-4o")]
    assert rl.poll().next_wakeup_s is None


def test_stats_per_scope() -> None:
    rl, _ = limiter({"openai": Limits(max_concurrent=1, tokens_per_minute=100)})
    rl.submit(t("1", tokens=30))
    rl.submit(t("2", tokens=30))
    rl.pause("openai", "gpt-4o", 9, "")
    stats = rl.stats()
    assert stats["openai"].in_flight == 1 and stats["openai"].queued == 1
    assert stats["openai"].tokens_in_window == 30 and stats["openai"].requests_in_window == 1
    assert stats["openai/gpt-4o"].paused_for_s == pytest.approx(9) and stats["openai/gpt-4o"].queued == 1


# -- token estimates --------------------------------------------------------------------------


def test_estimate_counts_cjk_per_character_and_latin_per_three() -> None:
    assert estimate_text_tokens("") == 0
    assert estimate_text_tokens("abcdef") == 2
    assert estimate_text_tokens("abcdefg") == 3  # rounds up
    assert estimate_text_tokens("你好世界") == 4
    assert estimate_text_tokens("こんにちは abc") == 5 + 2


def test_estimate_adds_the_reply_budget_and_counts_everything_sent() -> None:
    plain = ChatRequest(messages=[{"role": "user", "content": "x" * 300}], max_tokens=50)
    assert estimate_tokens(plain) >= 100 + 50
    no_max = plain.model_copy(update={"max_tokens": None})
    assert estimate_tokens(no_max) - estimate_tokens(plain) == 1024 - 50
    assert estimate_tokens(no_max, default_reply_tokens=10) == estimate_tokens(plain) - 40
    with_tools = ChatRequest(
        messages=plain.messages,
        max_tokens=50,
        tools=[{"name": "weather", "description": "d" * 90, "parameters": {"type": "object"}}],
    )
    assert estimate_tokens(with_tools) > estimate_tokens(plain) + 30
    image = ChatRequest(
        messages=[{"role": "user", "content": [{"type": "image", "url": "https://x/y.png"}]}], max_tokens=0
    )
    assert estimate_tokens(image) >= 1000
    assert estimate_tokens(CompletionRequest(prompt="abc" * 10, max_tokens=5)) == 15


# -- property: no window ever holds more than its limits --------------------------------------


@pytest.mark.parametrize("seed", range(8))
def test_admissions_never_exceed_any_limit_in_any_60s_window(seed: int) -> None:
    rng = random.Random(seed)
    limits = {
        "a": Limits(
            requests_per_minute=6, tokens_per_minute=400, max_concurrent=3, max_wait_s=rng.uniform(0, 90)
        ),
        "a/x": Limits(requests_per_minute=3, tokens_per_minute=150, max_wait_s=45),
        "b": Limits(tokens_per_minute=300, on_limit="reject"),
    }
    rl, clock = limiter(limits, default=Limits(max_concurrent=2, max_wait_s=20))
    admitted_at: dict[str, float] = {}
    charged: dict[str, int] = {}
    tickets: dict[str, Ticket] = {}
    outcome: dict[str, str] = {}
    pauses: list[tuple[str, float, float]] = []
    in_flight: list[str] = []
    seq = iter(range(10**9))
    admitted_seq: dict[str, int] = {}

    def settle(result_admitted: list[Ticket]) -> None:
        for x in result_admitted:
            admitted_at[x.request_id] = clock.now
            admitted_seq[x.request_id] = next(seq)
            charged[x.request_id] = x.tokens
            in_flight.append(x.request_id)
            outcome[x.request_id] = "admitted"

    def poll() -> float | None:
        result = rl.poll()
        settle(result.admitted)
        for x, _ in result.expired + result.rejected:
            assert x.request_id not in outcome
            outcome[x.request_id] = "refused"
        return result.next_wakeup_s

    wakeup: float | None = None
    for step in range(600):
        op = rng.random()
        if op < 0.45:
            rid = f"r{step}"
            x = Ticket(rid, rng.choice("abc"), rng.choice(["x", "y", ""]), rng.randint(0, 160))
            tickets[rid] = x
            decision = rl.submit(x)
            if decision == Admitted():
                settle([x])
            elif isinstance(decision, Rejected):
                outcome[rid] = "refused"
        elif op < 0.7 and in_flight:
            clock.advance(rng.uniform(0.001, 3))
            rid = in_flight.pop(rng.randrange(len(in_flight)))
            actual = rng.randint(0, tickets[rid].tokens)  # refunds only: usage never above estimate
            rl.release(rid, actual)
            if clock.now - admitted_at[rid] < 60:
                charged[rid] = actual
        elif op < 0.75:
            queued = [r for r in tickets if r not in outcome]
            if queued:
                rid = rng.choice(queued)
                assert rl.cancel(rid)
                outcome[rid] = "cancelled"
        elif op < 0.78:
            driver, model, seconds = rng.choice("abc"), rng.choice(["x", None]), rng.uniform(0.5, 20)
            until = clock.now + rl.pause(driver, model, seconds, "test")
            pauses.append((f"{driver}/{model}" if model else driver, next(seq), until))
        elif wakeup is not None and rng.random() < 0.7:
            clock.advance(wakeup)
        else:
            clock.advance(rng.uniform(0.01, 15))
        wakeup = poll()
        for key, lim in limits.items():
            if lim.max_concurrent is not None:
                assert sum(1 for r in in_flight if key in tickets[r].scope_keys) <= lim.max_concurrent

    # Each scope, each admission moment s: what was admitted in (s - 60, s] fits the limits.
    by_scope: dict[str, list[str]] = defaultdict(list)
    for rid in admitted_at:
        for key in tickets[rid].scope_keys:
            by_scope[key].append(rid)
    for key, rids in by_scope.items():
        lim = limits.get(key)
        if lim is None:
            continue
        for rid in rids:
            s = admitted_at[rid]
            # An admission counts for 60 s (give or take the limiter's 1e-9 s float tolerance).
            window = [r for r in rids if s - 60 + 1e-9 < admitted_at[r] <= s]
            if lim.requests_per_minute is not None:
                assert len(window) <= lim.requests_per_minute, (key, s)
            if lim.tokens_per_minute is not None:
                assert sum(charged[r] for r in window) <= lim.tokens_per_minute, (key, s)
    # Nothing was admitted to a paused target.
    for target, paused_seq, until in pauses:
        for rid, at in admitted_at.items():
            if target in tickets[rid].scope_keys and admitted_seq[rid] > paused_seq:
                assert at >= until - 1e-9, (target, rid)
    # Calls to one driver/model are admitted in the order they were submitted.
    lanes: dict[tuple[str, ...], list[str]] = defaultdict(list)
    for rid in sorted(admitted_at, key=lambda r: int(r[1:])):
        lanes[tickets[rid].scope_keys].append(rid)
    for rids in lanes.values():
        assert [admitted_seq[r] for r in rids] == sorted(admitted_seq[r] for r in rids)
    # Every ticket got exactly one outcome or is still waiting in the queue.
    assert len(outcome) + rl.queued == len(tickets)
    assert len(admitted_at) > 20  # the loop really exercised admission


def test_which_attempt_errors_pause_their_target() -> None:
    # The fallback stage asks this of every failed attempt, not only of a call's last error.
    assert pauses_target(RateLimitError("429", driver="openai"))
    assert not pauses_target(QuotaExhaustedError("billing", driver="openai"))
    assert not pauses_target(ServerError("500", driver="openai"))
    assert not pauses_target(RateLimitExceededError("Nova's own limit", limit="requests_per_minute"))
