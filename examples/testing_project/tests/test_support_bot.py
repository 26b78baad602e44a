"""The support bot's tests, with nova.testing's fixtures and doubles (the plugin loads itself)."""

from __future__ import annotations

import asyncio

import pytest
import support_bot

import nova
from nova import errors
from nova.testing import capture_events, override


def test_a_billing_ticket_goes_to_billing(nova_system):
    with override(replies=["BILLING"]):
        assert support_bot.classify("I was charged twice") == "BILLING"


def test_an_answer_outside_the_queues_goes_to_other(nova_system):
    with override(replies=["Probably billing?"]):
        assert support_bot.classify("hm") == "OTHER"


def test_the_model_sees_the_ticket_and_the_queues(nova_system):
    def fake_model(request):
        system, user = request.messages
        assert "BILLING" in system.text
        return "TECHNICAL" if "crash" in user.text else "OTHER"

    with override(handler=fake_model) as calls:
        assert support_bot.classify("the app crashes") == "TECHNICAL"
        assert support_bot.classify("hello") == "OTHER"
    assert [r.temperature for r in calls.requests] == [0, 0]


def test_a_busy_service_means_retry_later(nova_system):
    with override(replies=[errors.RateLimitError("slow down", retry_after=0)]):
        assert support_bot.classify("I was charged twice") == "RETRY_LATER"


def test_other_errors_reach_the_caller(nova_system):
    with override(replies=[{"error": "AuthenticationError", "status_code": 401}]):
        with pytest.raises(errors.AuthenticationError):
            support_bot.classify("I was charged twice")


def test_the_async_twin(nova_system):
    with override(replies=["billing"]):
        assert asyncio.run(support_bot.aclassify("I was charged twice")) == "BILLING"


def test_a_streamed_draft(nova_system):
    with override(replies=["Sorry about that, we will refund you."]):
        assert support_bot.draft_reply("charged twice") == "Sorry about that, we will refund you."


def test_a_stream_cut_short_is_an_error_not_a_short_draft(nova_system):
    with override(replies=[{"text": "Sorry about that", "fail_after_chunks": 1}]):
        with pytest.raises(errors.IncompleteStreamError):
            support_bot.draft_reply("charged twice")


def test_each_ticket_is_one_call_with_its_usage(nova_system):
    usage = {"input_tokens": 30, "output_tokens": 1}
    with capture_events() as events, override(replies=[{"text": "BILLING", "usage": usage}] * 2) as calls:
        support_bot.classify("one")
        support_bot.classify("two")
        done = events.wait_for("request.completed", count=2)
    assert sorted(e.request_id for e in done) == sorted(calls.request_ids)
    assert [e.usage.total_tokens for e in done] == [31, 31]


def test_without_an_override_the_offline_test_driver_echoes(nova_system):
    assert nova.llm.chat("ping").text == "echo: ping"
