"""Masks secrets and personal data in prompts before they leave the process.

`RedactSecrets` rewrites the text of system, user and tool messages (and completion prompts):

    api_key      keys registered with nova.secrets and key-shaped strings (sk-…, Bearer …, AIza…,
                 AKIA…, ghp_…, xox?-…, PEM private keys)
    email        name@domain.tld
    phone        "+" international numbers, (area) numbers, 555-123-4567, 030 1234567; 7-15 digits
    credit_card  13-19 digits, spaces or dashes allowed, kept unless the Luhn check passes
    iban         country code, check digits and account, kept unless the mod-97 check passes

Each hit becomes a mask ("[EMAIL]", configurable). The checksums keep order numbers and dates
intact; phone detection is a heuristic for the common formats, not a guarantee. `counts` adds up
what was masked, per kind, over the plugin's life (never the values).
"""

from __future__ import annotations

import re
import threading
from collections import Counter
from collections.abc import Callable
from typing import Any, Literal

from nova import secrets
from nova.plugins import CallContext, Plugin, PluginSettings, Request
from nova.types import ChatRequest, CompletionRequest, Message, Response, TextPart

__all__ = ["KINDS", "RedactSecrets", "RedactSettings", "iban_ok", "luhn_ok", "redact_text"]

Kind = Literal["api_key", "email", "phone", "credit_card", "iban"]
KINDS: tuple[Kind, ...] = ("api_key", "iban", "credit_card", "email", "phone")  # the order they run in

_SECRETS_MASK = "***"  # what nova.secrets.redact writes
_MORE_KEYS = re.compile(
    r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b|\bgh[pousr]_[A-Za-z0-9]{30,}\b|\bxox[abprs]-[A-Za-z0-9-]{10,}"
    r"|-----BEGIN [A-Z ]*PRIVATE KEY-----.*?-----END [A-Z ]*PRIVATE KEY-----",
    re.DOTALL,
)
_EMAIL = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}")
_CARD = re.compile(r"(?<![\d-])\d(?:[ -]?\d){12,18}(?![\d])")
_IBAN = re.compile(r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,3})?\b")
_PHONE = re.compile(
    r"(?<![\w+])(?<!\d )(?:"  # not inside a longer run of digit groups
    r"\+\d{1,3}[ .-]?(?:\(\d{1,4}\)[ .-]?)?\d{1,4}(?:[ .-]?\d{2,4}){1,4}"  # +49 30 1234567
    r"|\(\d{2,4}\)[ .-]?\d{3,4}[ .-]?\d{3,4}"  # (555) 123-4567
    r"|\d{3}-\d{3}-\d{4}|\d{3}\.\d{3}\.\d{4}|\d{3}-\d{4}"  # 555-123-4567, 555.123.4567, 555-1234
    r"|0\d{1,4}(?:[ /-]\d{2,8}){1,3}"  # 030 1234567, 089/123456
    r")(?!\w| \d)"
)


def luhn_ok(digits: str) -> bool:
    """The Luhn checksum every payment card number satisfies."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        n = int(ch) * (2 if i % 2 else 1)
        total += n - 9 if n > 9 else n
    return total % 10 == 0


def iban_ok(candidate: str) -> bool:
    """ISO 13616: 15-34 characters whose rearranged number is 1 modulo 97."""
    iban = candidate.replace(" ", "")
    if not 15 <= len(iban) <= 34:
        return False
    rearranged = iban[4:] + iban[:4]
    return int("".join(str(int(c, 36)) for c in rearranged)) % 97 == 1


def _digits(s: str) -> str:
    return "".join(c for c in s if c.isdigit())


def _api_keys(text: str, mask: str) -> tuple[str, int]:
    # Reuse nova.secrets (registered keys too), then swap its "***" for our mask; text that already
    # held "***" is split off first so it is neither counted nor rewritten.
    parts, n = [], 0
    for part in text.split(_SECRETS_MASK):
        red = secrets.redact(part)
        n += red.count(_SECRETS_MASK)
        parts.append(red.replace(_SECRETS_MASK, mask))
    text, more = _MORE_KEYS.subn(mask, _SECRETS_MASK.join(parts))
    return text, n + more


def _checked(pattern: re.Pattern[str], ok: Callable[[str], bool], shorten: bool = False) -> Any:
    def run(text: str, mask: str) -> tuple[str, int]:
        count = 0

        def sub(m: re.Match[str]) -> str:
            nonlocal count
            candidate, rest = m.group(), ""
            while not ok(candidate):
                if not (shorten and " " in candidate):
                    return m.group()
                candidate, tail = candidate.rsplit(" ", 1)  # "DE89… AND": the last group may be a word
                rest = f" {tail}{rest}"
            count += 1
            return mask + rest

        return pattern.sub(sub, text), count

    return run


_RUNNERS: dict[str, Callable[[str, str], tuple[str, int]]] = {
    "api_key": _api_keys,
    "iban": _checked(_IBAN, iban_ok, shorten=True),
    "credit_card": _checked(_CARD, lambda s: luhn_ok(_digits(s))),
    "email": _checked(_EMAIL, lambda s: True),
    "phone": _checked(_PHONE, lambda s: 7 <= len(_digits(s)) <= 15),
}


def redact_text(
    text: str, kinds: tuple[str, ...] = KINDS, mask: str = "[{kind}]"
) -> tuple[str, Counter[str]]:
    """`text` with every hit of `kinds` masked, and how many of each kind there were."""
    counts: Counter[str] = Counter()
    for kind in KINDS:
        if kind in kinds and text:
            text, n = _RUNNERS[kind](text, mask.format(kind=kind.upper()))
            if n:
                counts[kind] += n
    return text, counts


class RedactSettings(PluginSettings):
    kinds: tuple[Kind, ...] = KINDS
    roles: tuple[Literal["system", "user", "assistant", "tool"], ...] = ("system", "user", "tool")
    mask: str = "[{kind}]"  # {kind} is the upper-case kind: [EMAIL], [CREDIT_CARD]…


class RedactSecrets(Plugin):
    name = "redact"
    Settings = RedactSettings
    settings: RedactSettings

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.counts: Counter[str] = Counter()
        self._lock = threading.Lock()

    def redact(self, text: str) -> str:
        text, counts = redact_text(text, self.settings.kinds, self.settings.mask)
        if counts:
            with self._lock:
                self.counts.update(counts)
        return text

    def before_request(self, ctx: CallContext, request: Request) -> Request | Response | None:
        if isinstance(request, CompletionRequest):
            prompt = self.redact(request.prompt)
            return request.model_copy(update={"prompt": prompt}) if prompt != request.prompt else None
        assert isinstance(request, ChatRequest)
        messages = tuple(self._message(m) for m in request.messages)
        if all(new is old for new, old in zip(messages, request.messages, strict=True)):
            return None
        return request.model_copy(update={"messages": messages})

    def _message(self, m: Message) -> Message:
        if m.role not in self.settings.roles or m.content is None:
            return m
        if isinstance(m.content, str):
            content: Any = self.redact(m.content)
        else:
            content = tuple(
                p.model_copy(update={"text": self.redact(p.text)}) if isinstance(p, TextPart) else p
                for p in m.content
            )
        return m if content == m.content else m.model_copy(update={"content": content})
