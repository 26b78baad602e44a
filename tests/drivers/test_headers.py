"""Reading retry and rate-limit facts from response headers, as the official SDKs do."""

from __future__ import annotations

from datetime import UTC, datetime
from email.utils import format_datetime

import httpx
import pytest

from nova.drivers._headers import parse_duration, parse_rate_limits, parse_retry_after, should_retry_header

NOW = 1_772_049_700.0  # 2026-02-25T20:01:40Z


def clock() -> float:
    return NOW


def http_date(offset: float) -> str:
    return format_datetime(datetime.fromtimestamp(NOW + offset, tz=UTC), usegmt=True)


def rfc3339(offset: float) -> str:
    return datetime.fromtimestamp(NOW + offset, tz=UTC).isoformat().replace("+00:00", "Z")


@pytest.mark.parametrize(
    ("headers", "seconds"),
    [
        ({"retry-after-ms": "1500"}, 1.5),
        ({"retry-after-ms": "250", "retry-after": "9"}, 0.25),  # the precise header wins
        ({"retry-after-ms": "soon", "retry-after": "9"}, 9.0),  # unreadable ms: fall back
        ({"retry-after-ms": "-5", "retry-after": "9"}, 9.0),
        ({"retry-after-ms": "inf", "retry-after": "9"}, 9.0),
        ({"retry-after": "2"}, 2.0),
        ({"retry-after": "0.5"}, 0.5),
        ({"retry-after": "0"}, 0.0),
        ({"retry-after": "-1"}, None),
        ({"retry-after": "inf"}, None),
        ({"retry-after": "nan"}, None),
        ({"retry-after": http_date(30)}, 30.0),
        ({"retry-after": http_date(-30)}, None),  # a date in the past: use backoff
        ({"retry-after": "tomorrow-ish"}, None),
        ({"retry-after": ""}, None),
        ({}, None),
    ],
)
def test_parse_retry_after(headers: dict[str, str], seconds: float | None) -> None:
    assert parse_retry_after(headers, now=clock) == seconds


def test_parse_retry_after_reads_real_response_headers_case_insensitively() -> None:
    headers = httpx.Headers({"Retry-After": "2", "X-Should-Retry": "False"})
    assert parse_retry_after(headers) == 2.0
    assert should_retry_header(headers) is False


@pytest.mark.parametrize(
    ("value", "verdict"),
    [("true", True), ("false", False), ("TRUE", True), (" false ", False), ("maybe", None), ("", None)],
)
def test_x_should_retry(value: str, verdict: bool | None) -> None:
    assert should_retry_header({"x-should-retry": value}) is verdict
    assert should_retry_header({}) is None


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("6m0s", 360.0),
        ("11m32.334s", 692.334),
        ("180ms", 0.18),
        ("1s", 1.0),
        ("0s", 0.0),
        ("1h2m3s", 3723.0),
        ("20us", 2e-5),
        ("12", 12.0),
        ("0.25", 0.25),
        (" 7 ", 7.0),
        ("-3", 0.0),
        (rfc3339(42), 42.0),
        ("2026-02-25T20:02:22+00:00", 42.0),
        (rfc3339(-10), 0.0),  # a reset moment already past: nothing to wait for
        ("2026-02-25T20:02:22", None),  # no zone: cannot say when that is
        ("", None),
        ("6m0sx", None),
        ("1d", None),
        ("soon", None),
        ("inf", None),
        ("nan", None),
    ],
)
def test_parse_duration(value: str, seconds: float | None) -> None:
    result = parse_duration(value, now=clock)
    if seconds is None:
        assert result is None
    else:
        assert result == pytest.approx(seconds)


def test_openai_rate_limit_headers() -> None:
    headers = httpx.Headers(
        {
            "X-RateLimit-Limit-Requests": "500",
            "x-ratelimit-remaining-requests": "499",
            "x-ratelimit-reset-requests": "120ms",
            "x-ratelimit-limit-tokens": "30000",
            "x-ratelimit-remaining-tokens": "0",
            "x-ratelimit-reset-tokens": "6m0s",
            "x-request-id": "req_1",
            "retry-after": "2",
        }
    )
    assert parse_rate_limits(headers, now=clock) == pytest.approx(
        {
            "requests_limit": 500,
            "requests_remaining": 499,
            "requests_reset_s": 0.12,
            "tokens_limit": 30000,
            "tokens_remaining": 0,
            "tokens_reset_s": 360,
        }
    )


def test_anthropic_rate_limit_headers() -> None:
    headers = {
        "anthropic-ratelimit-requests-limit": "50",
        "anthropic-ratelimit-requests-remaining": "0",
        "anthropic-ratelimit-requests-reset": rfc3339(12),
        "anthropic-ratelimit-tokens-limit": "80000",
        "anthropic-ratelimit-tokens-remaining": "79000",
        "anthropic-ratelimit-tokens-reset": rfc3339(1),
        "anthropic-ratelimit-input-tokens-limit": "40000",
        "anthropic-ratelimit-input-tokens-remaining": "39500",
        "anthropic-ratelimit-input-tokens-reset": rfc3339(0.5),
        "anthropic-ratelimit-output-tokens-limit": "8000",
        "anthropic-ratelimit-output-tokens-remaining": "7500",
        "anthropic-ratelimit-output-tokens-reset": rfc3339(-3),
        "request-id": "req_011C",
    }
    assert parse_rate_limits(headers, now=clock) == pytest.approx(
        {
            "requests_limit": 50,
            "requests_remaining": 0,
            "requests_reset_s": 12,
            "tokens_limit": 80000,
            "tokens_remaining": 79000,
            "tokens_reset_s": 1,
            "input_tokens_limit": 40000,
            "input_tokens_remaining": 39500,
            "input_tokens_reset_s": 0.5,
            "output_tokens_limit": 8000,
            "output_tokens_remaining": 7500,
            "output_tokens_reset_s": 0,
        }
    )


def test_unreadable_rate_limit_values_are_left_out_not_fatal() -> None:
    headers = {
        "x-ratelimit-remaining-requests": "lots",
        "x-ratelimit-reset-tokens": "whenever",
        "x-ratelimit-limit-tokens": "100",
    }
    assert parse_rate_limits(headers, now=clock) == {"tokens_limit": 100.0}
    assert parse_rate_limits({}) == {}
