"""Secrets stay masked: Secret never shows itself, redact masks known and key-shaped strings only."""

from __future__ import annotations

import pickle
import subprocess
import sys

import pytest

from nova.secrets import Secret, redact, register


def test_secret_is_masked_in_repr_str_and_formatting() -> None:
    secret = Secret("sk-test-masked-1")
    for text in (repr(secret), str(secret), f"{secret}", f"{secret!r}", repr([secret]), repr({"k": secret})):
        assert "sk-test-masked-1" not in text and "***" in text
    assert secret.reveal() == "sk-test-masked-1"


def test_secret_compares_hashes_and_is_falsy_when_empty() -> None:
    assert Secret("sk-test-a1") == Secret("sk-test-a1") != Secret("sk-test-b2")
    assert Secret("sk-test-a1") != "sk-test-a1"  # never equal to the bare string: no accidental leaks
    assert len({Secret("sk-test-a1"), Secret("sk-test-a1")}) == 1
    assert Secret("sk-test-a1") and not Secret("")


def test_secret_pickles_and_is_registered_again_where_it_is_unpickled() -> None:
    data = pickle.dumps(Secret("zz-custom-token-7781"))
    assert pickle.loads(data).reveal() == "zz-custom-token-7781"
    code = (
        "import pickle, sys; from nova.secrets import redact;"
        "s = pickle.loads(sys.stdin.buffer.read()); print(redact('token zz-custom-token-7781 here'), repr(s))"
    )
    out = subprocess.run([sys.executable, "-c", code], input=data, capture_output=True, check=True)
    assert out.stdout.decode().strip() == "token *** here Secret('***')"


def test_redact_masks_registered_secrets_anywhere_in_the_text() -> None:
    register("my-proxy-password")
    assert redact("auth failed for my-proxy-password@host") == "auth failed for ***@host"
    Secret("ollama-proxy-tok")
    assert redact('{"token": "ollama-proxy-tok"}') == '{"token": "***"}'


def test_too_short_secrets_are_not_registered() -> None:
    register("abc")  # masking every "abc" would wreck messages and protect nothing
    assert redact("abc def") == "abc def"
    register("")
    assert redact("") == ""


@pytest.mark.parametrize(
    "key",
    [
        "sk-abcdefghijklmnop1234",
        "sk-proj-test-FAKE_key-01",
        "sk-ant-test-FAKE_key-02",
        "sk-test-contract-key",
        "AIzaSyA1234567890abcdefghijklmn",
    ],
)
def test_redact_masks_key_shaped_strings(key: str) -> None:
    for text in (f"Incorrect API key provided: {key}.", f'{{"api_key":"{key}"}}', f"key={key}"):
        redacted = redact(text)
        assert key not in redacted and "***" in redacted


@pytest.mark.parametrize(
    "header",
    [
        "Bearer abcdefgh12",
        "bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2ln",
        "BEARER abcdefghijklmnopqrstuvwxyz",
    ],
)
def test_redact_masks_bearer_tokens(header: str) -> None:
    token = header.split()[1]
    assert token not in redact(f"Authorization: {header}")


@pytest.mark.parametrize(
    "text",
    [
        "risk-assessment pending",
        "a task-oriented dialogue",
        "desk-lamp",
        "the bearer instrument was signed",
        "Bearer of bad news",
        "sk-short",
        "The model ran out of tokens; ask for a shorter answer.",
        "Rate limit reached for gpt-4o-mini in organization org-abc on requests per min (RPM): Limit 3",
    ],
)
def test_redact_leaves_ordinary_words_alone(text: str) -> None:
    assert redact(text) == text
