"""Reads what a service's response headers say about retrying and rate limits.

Works on any mapping of lower-case header names; durations come back in seconds.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable, Mapping
from datetime import datetime
from email.utils import parsedate_to_datetime

__all__ = ["parse_duration", "parse_rate_limits", "parse_retry_after", "should_retry_header"]

_GO_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|us|µs|ns|h|m|s)")
_UNIT_S = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "ns": 1e-9}


def parse_duration(value: str, now: Callable[[], float] = time.time) -> float | None:
    """Seconds from "6m0s" / "11m32.334s" / "180ms" (OpenAI), "12" (plain seconds) or an RFC 3339
    timestamp such as "2026-02-25T20:02:36Z" (Anthropic's reset times; seconds from now)."""
    value = value.strip()
    if not value:
        return None
    try:
        number = float(value)
    except ValueError:
        pass
    else:  # "inf" and "nan" parse as floats but are no duration
        return max(0.0, number) if math.isfinite(number) else None
    parts = _GO_DURATION.findall(value)
    if parts and "".join(n + u for n, u in parts) == value:
        return sum(float(n) * _UNIT_S[u] for n, u in parts)
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    if moment.tzinfo is None:
        return None
    return max(0.0, moment.timestamp() - now())


def parse_retry_after(headers: Mapping[str, str], now: Callable[[], float] = time.time) -> float | None:
    """Like the official SDKs: retry-after-ms, then retry-after in seconds, then as an HTTP-date.
    A date in the past gives None (use backoff), as does anything unreadable."""
    ms = headers.get("retry-after-ms")
    if ms:
        try:
            value = float(ms) / 1000.0
            if 0 <= value < math.inf:
                return value
        except ValueError:
            pass
    raw = headers.get("retry-after")
    if not raw:
        return None
    try:
        value = float(raw)
        return value if 0 <= value < math.inf else None
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(raw)
    except (TypeError, ValueError, IndexError):
        return None
    delta = when.timestamp() - now()
    return delta if delta > 0 else None


def should_retry_header(headers: Mapping[str, str]) -> bool | None:
    """`x-should-retry: true|false` overrides every other retry rule."""
    value = headers.get("x-should-retry", "").strip().lower()
    return {"true": True, "false": False}.get(value)


_OPENAI = re.compile(r"x-ratelimit-(limit|remaining|reset)-(requests|tokens)$")
_ANTHROPIC = re.compile(
    r"anthropic-ratelimit-(requests|tokens|input-tokens|output-tokens)-(limit|remaining|reset)$"
)


def parse_rate_limits(headers: Mapping[str, str], now: Callable[[], float] = time.time) -> dict[str, float]:
    """A flat snapshot such as {"requests_limit": 500, "requests_remaining": 499,
    "requests_reset_s": 0.12, "tokens_remaining": 0, …} from OpenAI or Anthropic headers."""
    snapshot: dict[str, float] = {}
    for name, raw in headers.items():
        name = name.lower()
        if m := _OPENAI.match(name):
            kind, resource = m.groups()
        elif m := _ANTHROPIC.match(name):
            resource, kind = m.groups()
        else:
            continue
        resource = resource.replace("-", "_")
        if kind == "reset":
            seconds = parse_duration(raw, now)
            if seconds is not None:
                snapshot[f"{resource}_reset_s"] = seconds
        else:
            try:
                snapshot[f"{resource}_{kind}"] = float(raw)
            except ValueError:
                continue
    return snapshot
