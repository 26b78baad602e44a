"""The error tree: its shape matches the drawing, every error pickles whole, and no key leaks."""

from __future__ import annotations

import pickle
import re
import subprocess
import sys

import pytest

from nova import errors
from nova.secrets import register

ERROR_CLASSES = [getattr(errors, n) for n in errors.__all__ if isinstance(getattr(errors, n), type)]


def drawn_tree() -> dict[str, str | None]:
    """{class name: parent name} read from the drawing in the module docstring."""
    parents: dict[str, str | None] = {}
    stack: list[tuple[int, str]] = []  # (column of the name, name)
    for line in (errors.__doc__ or "").splitlines():
        match = re.match(r"^(\s*(?:[│ ]\s*)*(?:├──|└──)?\s*)([A-Z]\w+Error)\b", line)
        if not match:
            continue
        column, name = len(match.group(1)), match.group(2)
        while stack and stack[-1][0] >= column:
            stack.pop()
        parents[name] = stack[-1][1] if stack else None
        stack.append((column, name))
    return parents


def test_the_drawing_lists_every_error_class_exactly() -> None:
    assert set(drawn_tree()) == {c.__name__ for c in ERROR_CLASSES}


@pytest.mark.parametrize("cls", ERROR_CLASSES, ids=lambda c: c.__name__)
def test_each_class_derives_from_its_parent_in_the_drawing(cls: type[errors.NovaError]) -> None:
    parent = drawn_tree()[cls.__name__]
    if parent is None:
        assert cls is errors.NovaError
    else:
        assert getattr(errors, parent) in cls.__bases__, f"{cls.__name__} should derive from {parent}"
        assert issubclass(cls, errors.NovaError)


def test_builtin_bases_where_callers_expect_them() -> None:
    assert issubclass(errors.RequestTimeoutError, TimeoutError)
    assert issubclass(errors.InvalidInputError, ValueError)
    with pytest.raises(TimeoutError):
        raise errors.RequestTimeoutError("slow")
    with pytest.raises(ValueError):
        raise errors.InvalidInputError("bad", field="messages")


RETRYABLE = {
    "TransportError", "ConnectError", "RequestTimeoutError", "RateLimitError", "ServerError",
    "OverloadedError", "ResponseError", "MalformedResponseError", "StreamError", "IncompleteStreamError",
    "RateLimitExceededError", "CircuitOpenError", "DriverUnavailableError", "LocalOverloadError",
    "NotReachableError",
}  # fmt: skip


@pytest.mark.parametrize("cls", ERROR_CLASSES, ids=lambda c: c.__name__)
def test_retryable_defaults_by_class_and_can_be_overridden(cls: type[errors.NovaError]) -> None:
    assert cls("x").retryable is (cls.__name__ in RETRYABLE)
    assert cls("x", retryable=True).retryable is True
    assert cls("x", retryable=False).retryable is False


def full(cls: type[errors.NovaError]) -> errors.NovaError:
    extra: dict[str, object] = {"field": "messages", "limit": "requests_per_minute"}
    if cls is errors.AllTargetsFailedError:
        extra["errors"] = [
            errors.RateLimitError("slow down", driver="openai", status_code=429, retry_after=2.0),
            errors.ConnectError("refused", driver="ollama"),
        ]
    if cls is errors.PluginError:
        extra["plugin"] = "audit"
    return cls(
        "something failed",
        driver="openai",
        model="gpt-4o-mini",
        status_code=429,
        request_id="req_123",
        retryable=True,
        type="rate_limit_error",
        code=429,  # type: ignore[arg-type]  # services send integers; kept as text
        retry_after=1.5,
        rate_limits={"requests_remaining": 0.0, "tokens_reset_s": 360.0},
        **extra,
    )


@pytest.mark.parametrize("cls", ERROR_CLASSES, ids=lambda c: c.__name__)
def test_every_error_pickles_with_every_attribute(cls: type[errors.NovaError]) -> None:
    error = full(cls)
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is cls
    attributes = ("message", "driver", "model", "status_code", "request_id", "retryable", "type", "code",
                  "retry_after", "rate_limits")  # fmt: skip
    assert {a: getattr(copy, a) for a in attributes} == {a: getattr(error, a) for a in attributes}
    assert copy.code == "429"
    assert copy.details.keys() == error.details.keys()
    assert (str(copy), repr(copy), copy.args) == (str(error), repr(error), error.args)


def test_special_attributes_survive_pickling() -> None:
    failed = pickle.loads(pickle.dumps(full(errors.AllTargetsFailedError)))
    assert isinstance(failed, errors.AllTargetsFailedError)
    assert [type(e) for e in failed.errors] == [errors.RateLimitError, errors.ConnectError]
    assert failed.errors[0].retry_after == 2.0 and failed.errors[0].driver == "openai"
    assert pickle.loads(pickle.dumps(full(errors.PluginError))).plugin == "audit"
    assert pickle.loads(pickle.dumps(full(errors.InvalidInputError))).field == "messages"
    assert errors.AllTargetsFailedError("x").errors == [] and errors.PluginError("x").plugin is None


def test_an_error_pickled_here_unpickles_in_another_process() -> None:
    data = pickle.dumps(full(errors.QuotaExhaustedError))
    code = (
        "import pickle, sys; e = pickle.loads(sys.stdin.buffer.read());"
        "print(type(e).__name__, e.retry_after, e.rate_limits['tokens_reset_s'], e.request_id)"
    )
    out = subprocess.run([sys.executable, "-c", code], input=data, capture_output=True, check=True)
    assert out.stdout.decode().split() == ["QuotaExhaustedError", "1.5", "360.0", "req_123"]


def test_str_names_driver_model_and_status() -> None:
    error = errors.RateLimitError("slow down", driver="openai", model="gpt-4o", status_code=429)
    assert str(error) == "[openai/gpt-4o] slow down (HTTP 429)"
    assert str(errors.ConfigurationError("bad file")) == "bad file"
    assert repr(error) == "RateLimitError('slow down', driver='openai', model='gpt-4o')"


@pytest.mark.parametrize("cls", ERROR_CLASSES, ids=lambda c: c.__name__)
def test_no_key_in_str_or_repr(cls: type[errors.NovaError]) -> None:
    register("custom-secret-token-42")
    shaped = "sk-proj-test-FAKE-key-03"
    error = cls(f"Incorrect API key provided: {shaped}; also custom-secret-token-42", driver="openai")
    for text in (str(error), repr(error), error.message, repr(pickle.loads(pickle.dumps(error)))):
        assert shaped not in text and "custom-secret-token-42" not in text
        assert "Incorrect API key provided" in text


@pytest.mark.parametrize(
    ("status", "cls"),
    [
        (400, errors.InvalidRequestError),
        (401, errors.AuthenticationError),
        (402, errors.QuotaExhaustedError),
        (403, errors.PermissionDeniedError),
        (404, errors.NotFoundError),
        (408, errors.ServerError),
        (409, errors.ServerError),
        (413, errors.RequestTooLargeError),
        (418, errors.InvalidRequestError),
        (422, errors.InvalidRequestError),
        (429, errors.RateLimitError),
        (500, errors.ServerError),
        (502, errors.ServerError),
        (503, errors.ServerError),
        (504, errors.ServerError),
        (529, errors.OverloadedError),
        (302, errors.APIError),
    ],
)
def test_error_from_status(status: int, cls: type[errors.APIError]) -> None:
    assert errors.error_from_status(status) is cls
