"""Nova's one error tree, grouped by what the caller should do.

    NovaError
    ├── ConfigurationError          fix the configuration (bad file, unknown key or driver)
    │   ├── UnknownDriverError
    │   └── SystemMismatchError     the running system has another name or configuration than ours
    ├── InvalidInputError           fix the call (bad message, bad parameter); ValueError too
    ├── TransportError              the service was not reached or did not answer; retryable
    │   ├── ConnectError
    │   └── RequestTimeoutError     also the builtin TimeoutError
    ├── APIError                    the service answered with an error status
    │   ├── AuthenticationError         401: the key is wrong
    │   ├── PermissionDeniedError       403
    │   ├── NotFoundError               404: unknown model or route
    │   ├── InvalidRequestError         400, 422: the service rejects the request as sent
    │   │   ├── ContextLengthExceededError  the prompt is too long for the model
    │   │   └── RequestTooLargeError        413
    │   ├── RateLimitError              429; retryable after `retry_after`
    │   │   └── QuotaExhaustedError         429 that needs billing action; not retryable
    │   ├── ServerError                 5xx, 408, 409; retryable
    │   │   └── OverloadedError             529, overloaded_error, 503 "overloaded"
    │   └── ContentFilterError          the service refused on content grounds
    ├── ResponseError               the service said 200 but the answer is unusable
    │   ├── MalformedResponseError      truncated / empty / non-JSON body, or an error object in a 200
    │   └── StreamError
    │       ├── IncompleteStreamError   the stream ended before its end marker
    │       └── MidStreamError          the service sent an error event inside a 200 stream
    └── ProviderError               raised by Nova's own provider steps
        ├── RateLimitExceededError      Nova's own limiter refused or timed out the request
        ├── CircuitOpenError            the target failed too often; not tried now
        ├── AllTargetsFailedError       fallback exhausted; `.errors` holds each attempt's error
        ├── PluginError                 a plugin raised; `.plugin` names it
        ├── DriverUnavailableError      the driver actor died or is not running; retryable
        │   └── NotReachableError           the actor system itself is gone (restarting); retryable
        ├── LocalOverloadError          Nova's own connection pool stayed full; retryable
        └── CancelledError              the caller cancelled the call

Every error carries `driver`, `model`, `status_code`, `request_id`, `retryable`, the service's
own error `type` and `code`, `retry_after` (seconds) and `rate_limits` (a snapshot of the service's
rate-limit headers, durations in seconds). Every error pickles, and no message or repr ever contains
an API key: messages pass through `nova.secrets.redact` when they are made.
"""

from __future__ import annotations

from typing import Any, ClassVar

from nova.secrets import redact

__all__ = [
    "APIError",
    "AllTargetsFailedError",
    "AuthenticationError",
    "CancelledError",
    "CircuitOpenError",
    "ConfigurationError",
    "ConnectError",
    "ContentFilterError",
    "ContextLengthExceededError",
    "DriverUnavailableError",
    "IncompleteStreamError",
    "InvalidInputError",
    "InvalidRequestError",
    "LocalOverloadError",
    "MalformedResponseError",
    "MidStreamError",
    "NotFoundError",
    "NotReachableError",
    "NovaError",
    "OverloadedError",
    "PermissionDeniedError",
    "PluginError",
    "ProviderError",
    "QuotaExhaustedError",
    "RateLimitError",
    "RateLimitExceededError",
    "RequestTimeoutError",
    "RequestTooLargeError",
    "ResponseError",
    "ServerError",
    "StreamError",
    "SystemMismatchError",
    "TransportError",
    "UnknownDriverError",
    "error_from_status",
]


class NovaError(Exception):
    retryable_by_default: ClassVar[bool] = False

    def __init__(
        self,
        message: str = "",
        *,
        driver: str | None = None,
        model: str | None = None,
        status_code: int | None = None,
        request_id: str | None = None,
        retryable: bool | None = None,
        type: str | None = None,  # noqa: A002 - the service's own name for it
        code: str | None = None,
        retry_after: float | None = None,
        rate_limits: dict[str, float] | None = None,
        **details: Any,
    ) -> None:
        message = redact(message)
        super().__init__(message)
        self.message = message
        self.driver = driver
        self.model = model
        self.status_code = status_code
        self.request_id = request_id
        self.retryable = self.retryable_by_default if retryable is None else retryable
        self.type = type
        self.code = None if code is None else str(code)
        self.retry_after = retry_after
        self.rate_limits = rate_limits or {}
        self.details = details

    def __reduce__(self) -> tuple[Any, ...]:
        # Exception's default reduce would pass only args; keep every attribute across processes.
        return (_rebuild, (type(self), self.message, self.__dict__.copy()))

    def __str__(self) -> str:
        where = "/".join(x for x in (self.driver, self.model) if x)
        status = f" (HTTP {self.status_code})" if self.status_code else ""
        return f"[{where}] {self.message}{status}" if where else f"{self.message}{status}"

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r}, driver={self.driver!r}, model={self.model!r})"


def _rebuild(cls: type[NovaError], message: str, state: dict[str, Any]) -> NovaError:
    error = cls.__new__(cls)
    Exception.__init__(error, message)
    error.__dict__.update(state)
    return error


class ConfigurationError(NovaError):
    pass


class UnknownDriverError(ConfigurationError):
    pass


class InvalidInputError(NovaError, ValueError):
    """The call itself is wrong; `.field` names the offending field when one is to blame."""

    @property
    def field(self) -> str | None:
        return self.details.get("field")


class TransportError(NovaError):
    retryable_by_default = True


class ConnectError(TransportError):
    pass


class RequestTimeoutError(TransportError, TimeoutError):
    pass


class APIError(NovaError):
    pass


class AuthenticationError(APIError):
    pass


class PermissionDeniedError(APIError):
    pass


class NotFoundError(APIError):
    pass


class InvalidRequestError(APIError):
    pass


class ContextLengthExceededError(InvalidRequestError):
    pass


class RequestTooLargeError(InvalidRequestError):
    pass


class RateLimitError(APIError):
    retryable_by_default = True


class QuotaExhaustedError(RateLimitError):
    retryable_by_default = False


class ServerError(APIError):
    retryable_by_default = True


class OverloadedError(ServerError):
    pass


class ContentFilterError(APIError):
    pass


class ResponseError(NovaError):
    retryable_by_default = True  # a garbled answer is worth one more try, as the official SDKs do


class MalformedResponseError(ResponseError):
    pass


class StreamError(ResponseError):
    pass


class IncompleteStreamError(StreamError):
    pass


class MidStreamError(StreamError):
    retryable_by_default = False  # set per error type by the driver (overloaded: retryable)


class ProviderError(NovaError):
    pass


class RateLimitExceededError(ProviderError):
    """Nova's own limiter: `.limit` names the limit ("requests_per_minute", …)."""

    retryable_by_default = True

    @property
    def limit(self) -> str | None:
        return self.details.get("limit")


class CircuitOpenError(ProviderError):
    retryable_by_default = True


class AllTargetsFailedError(ProviderError):
    """Every fallback target failed; `.errors` lists the error of each attempt in order."""

    @property
    def errors(self) -> list[NovaError]:
        return list(self.details.get("errors", []))


class PluginError(ProviderError):
    """A plugin raised: `.plugin` names it, `.hook` the hook it was in."""

    @property
    def plugin(self) -> str | None:
        return self.details.get("plugin")

    @property
    def hook(self) -> str | None:
        return self.details.get("hook")


class DriverUnavailableError(ProviderError):
    retryable_by_default = True


class NotReachableError(DriverUnavailableError):
    """The actor system this program talks to has gone (its root, admin or `nova run` died): no
    call can reach it until it is back, which the facade checks again on the next call."""


class SystemMismatchError(ConfigurationError):
    """A system runs where this program looked, but with another name or configuration: the
    program refuses to attach to it. `.expected` and `.found` hold (name, config hash)."""

    @property
    def expected(self) -> Any:
        return self.details.get("expected")

    @property
    def found(self) -> Any:
        return self.details.get("found")


class LocalOverloadError(ProviderError):
    """This process had no free connection to the service in time: a local limit, not the
    service's health, so it never counts against a circuit."""

    retryable_by_default = True


class CancelledError(ProviderError):
    pass


_BY_STATUS: dict[int, type[APIError]] = {
    400: InvalidRequestError,
    401: AuthenticationError,
    402: QuotaExhaustedError,
    403: PermissionDeniedError,
    404: NotFoundError,
    408: ServerError,
    409: ServerError,
    413: RequestTooLargeError,
    422: InvalidRequestError,
    429: RateLimitError,
    529: OverloadedError,
}


def error_from_status(status: int) -> type[APIError]:
    """The error class for an HTTP status, before any service-specific refinement."""
    if status in _BY_STATUS:
        return _BY_STATUS[status]
    if status >= 500:
        return ServerError
    if status >= 400:
        return InvalidRequestError
    return APIError
