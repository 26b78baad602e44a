"""Turns a service's error reply into the right `nova.errors` class, with its retry facts.

Each driver reads its own body shape (message, type, code) and hands them here; the rules that
are the same for every service (status first, then the refinements) live in this one place.
"""

from __future__ import annotations

import builtins
import html
import json
import re
from collections.abc import Mapping
from typing import Any

from nova import errors
from nova.drivers._headers import parse_rate_limits, parse_retry_after, should_retry_header

__all__ = ["api_error", "error_fields", "html_summary", "malformed"]

_CONTEXT_MARKERS = (
    "context_length_exceeded",
    "exceed_context_size_error",
    "prompt is too long",
    "maximum context length",
    "context length",
    "context window",
    "too many tokens",
)
_QUOTA_MARKERS = ("insufficient_quota", "credit_balance", "billing", "quota")
_CONTENT_FILTER_MARKERS = ("content_filter", "content_policy", "content policy", "safety system")


def error_fields(body: Any, raw_text: str) -> tuple[str, str | None, str | None]:
    """(message, type, code) from the shapes services use: {"error": {...}}, {"error": "text"},
    a bare error object (older vLLM), or a body that is not JSON at all (a proxy's HTML page)."""
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, str):
            return inner, None, None
        if isinstance(inner, dict):
            message = inner.get("message") or inner.get("detail") or json.dumps(inner)[:500]
            kind = inner.get("type") or inner.get("status")
            code = inner.get("code")
            return str(message), None if kind is None else str(kind), None if code is None else str(code)
    text = raw_text.strip()
    if _HTML.match(text):
        return html_summary(text), None, None
    return (text[:500] or "no error message in the reply"), None, None


_HTML = re.compile(r"\s*(<!--.*?-->\s*)*<(!doctype\s+html|html|head|body)\b", re.IGNORECASE | re.DOTALL)
_TITLE = re.compile(r"<title[^>]*>(.*?)</title>", re.IGNORECASE | re.DOTALL)
_HIDDEN = re.compile(r"<(script|style|title|head)\b.*?</\1\s*>|<!--.*?-->", re.IGNORECASE | re.DOTALL)
_TAG = re.compile(r"<[^>]+>")
EXCERPT_CHARS = 200


def html_summary(page: str) -> str:
    """An HTML page (a proxy's or gateway's error page, not the service's own error object) in one
    line: its title and the start of its visible text, so the error message stays short."""
    found = _TITLE.search(page)
    title = " ".join(html.unescape(found.group(1)).split()) if found else ""
    text = " ".join(html.unescape(_TAG.sub(" ", _HIDDEN.sub(" ", page))).split())
    if title and text.startswith(title):  # the page repeats its title as a heading
        text = text[len(title) :].strip()
    if len(text) > EXCERPT_CHARS:
        text = text[:EXCERPT_CHARS].rstrip() + "…"
    said = f"an HTML page titled {title!r}" if title else "an HTML page"
    return f"{said} instead of an API error, likely from a proxy or gateway" + (f": {text}" if text else "")


def api_error(
    status: int,
    message: str,
    *,
    type: str | None = None,  # noqa: A002
    code: str | None = None,
    headers: Mapping[str, str] | None = None,
    driver: str,
    model: str,
    request_id: str | None = None,
) -> errors.NovaError:
    headers = headers or {}
    cls: builtins.type[errors.NovaError] = errors.error_from_status(status)
    marks = " ".join(x for x in (type, code, message) if x).lower()
    if type == "overloaded_error" or (status == 503 and "overloaded" in marks):
        cls = errors.OverloadedError
    elif status in (400, 413, 422) and any(m in marks for m in _CONTEXT_MARKERS):
        cls = errors.ContextLengthExceededError
    elif status in (400, 403) and any(m in marks for m in _CONTENT_FILTER_MARKERS):
        cls = errors.ContentFilterError
    elif status == 429 and _is_quota(type, code, message):
        cls = errors.QuotaExhaustedError
    elif status < 400 and type:  # an error object inside a 200 (mid-stream or body)
        cls = {
            "rate_limit_error": errors.RateLimitError,
            "api_error": errors.ServerError,
            "authentication_error": errors.AuthenticationError,
        }.get(type, errors.ServerError)
    return cls(
        message,
        driver=driver,
        model=model,
        status_code=status,
        request_id=request_id,
        retryable=should_retry_header(headers),
        type=type,
        code=code,
        retry_after=parse_retry_after(headers),
        rate_limits=parse_rate_limits(headers),
    )


def _is_quota(type: str | None, code: str | None, message: str) -> bool:  # noqa: A002
    # OpenAI's rate-limit messages for unpaid accounts mention ".../account/billing": a rate-limit
    # type or code wins over the words of the message.
    kinds = " ".join(x for x in (type, code) if x).lower()
    if any(m in kinds for m in _QUOTA_MARKERS):
        return True
    if any(k in kinds for k in ("rate_limit", "requests", "tokens")):
        return False
    return any(m in message.lower() for m in _QUOTA_MARKERS)


def malformed(
    why: str, *, driver: str, model: str, status: int | None = None, request_id: str | None = None
) -> errors.MalformedResponseError:
    return errors.MalformedResponseError(
        why, driver=driver, model=model, status_code=status, request_id=request_id
    )
