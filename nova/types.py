"""The request and response types every driver and every provider step speaks.

All of them are frozen pydantic models: they travel between actor processes as pickles and may be
shared by many tasks, so nothing mutates them after validation. Plain dicts are accepted wherever a
model is expected (`ChatRequest(messages=[{"role": "user", "content": "hi"}])`).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StrictInt,
    ValidationError,
    field_validator,
    model_validator,
)

from nova.errors import InvalidInputError

__all__ = [
    "Attempt",
    "ChatRequest",
    "Chunk",
    "CompletionRequest",
    "FinishReason",
    "ImagePart",
    "Message",
    "Response",
    "TextPart",
    "Tool",
    "ToolCall",
    "ToolCallDelta",
    "Usage",
    "collect_chunks",
    "validation_error",
]

FinishReason = Literal["stop", "length", "tool_calls", "content_filter", "other"]
Role = Literal["system", "user", "assistant", "tool"]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


def _unicode(value: str) -> str:
    """Text that UTF-8 can carry: a lone surrogate ("\\ud800", as JSON allows) would otherwise fail
    later, deep in a stage, when the text is encoded for a cache key, an event or the wire."""
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise ValueError(
                f"the text holds an unpaired surrogate {value[exc.start]!r}, which is not Unicode"
            ) from None
    return value


Text = Annotated[str, AfterValidator(_unicode)]


class TextPart(_Frozen):
    type: Literal["text"] = "text"
    text: str


class ImagePart(_Frozen):
    """An image given by URL (http(s) or a `data:` URL with base64 content)."""

    type: Literal["image"] = "image"
    url: str
    media_type: str | None = None


ContentPart = TextPart | ImagePart


class ToolCall(_Frozen):
    """A call the model asks for; `arguments` is always a dict (OpenAI's JSON string is parsed)."""

    id: str = ""
    name: str
    arguments: dict[str, Any] = Field(default_factory=dict)

    @field_validator("arguments", mode="before")
    @classmethod
    def _parse_json_arguments(cls, value: Any) -> Any:
        if isinstance(value, str):
            if not value.strip():
                return {}
            try:
                parsed = json.loads(value)
            except ValueError as exc:  # re-raised so that the message says what was wrong
                raise ValueError(f"tool call arguments are not valid JSON ({exc})") from None
            if not isinstance(parsed, dict):
                raise ValueError("tool call arguments must be a JSON object")
            return parsed
        return value


class ToolCallDelta(_Frozen):
    """One streamed fragment of a tool call; fragments with the same `index` join into one call."""

    index: int = 0
    id: str | None = None
    name: str | None = None
    arguments: str = ""  # a piece of the JSON text of the arguments


class Tool(_Frozen):
    """A function the model may call. OpenAI-shaped dicts ({"type": "function", "function": {...}})
    are accepted too."""

    name: str
    description: str = ""
    parameters: dict[str, Any] = Field(default_factory=lambda: {"type": "object", "properties": {}})

    @model_validator(mode="before")
    @classmethod
    def _accept_openai_shape(cls, value: Any) -> Any:
        if isinstance(value, dict) and value.get("type") == "function" and "function" in value:
            return value["function"]
        if isinstance(value, dict) and "input_schema" in value:  # Anthropic shape
            return {k if k != "input_schema" else "parameters": v for k, v in value.items()}
        return value


class Message(_Frozen):
    role: Role
    content: str | tuple[ContentPart, ...] | None = None
    tool_calls: tuple[ToolCall, ...] = ()
    tool_call_id: str | None = None  # on role="tool": the call this message answers
    name: str | None = None
    pinned: bool = False  # kept by context trimming like a system message

    @model_validator(mode="after")
    def _check_shape(self) -> Message:
        texts = (
            [self.content]
            if isinstance(self.content, str)
            else [getattr(p, "text", "") for p in self.content or ()]
        )
        for text in texts:
            _unicode(text)  # here, not on the union's members: one clear message, not one per member
        if self.role == "tool" and not self.tool_call_id:
            raise ValueError("a tool message needs tool_call_id")
        if self.role == "assistant":
            if self.content is None and not self.tool_calls:
                raise ValueError("an assistant message needs content or tool_calls")
        elif self.content is None:
            raise ValueError(f"a {self.role} message needs content")
        if self.tool_calls and self.role != "assistant":
            raise ValueError("only assistant messages carry tool_calls")
        return self

    @property
    def text(self) -> str:
        """The text of the message: the string content, or its text parts joined."""
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(p.text for p in self.content if isinstance(p, TextPart))


class _Params(_Frozen):
    """Parameters common to chat and completion requests."""

    model: str = ""  # empty: the driver's configured default model
    temperature: float | None = Field(default=None, ge=0)
    max_tokens: Annotated[StrictInt, Field(ge=0)] | None = None  # strict: True is not 1 token
    top_p: float | None = Field(default=None, ge=0, le=1)
    stop: tuple[str, ...] | None = None
    seed: StrictInt | None = None
    extra: dict[str, Any] = Field(default_factory=dict)  # model-specific, sent to the wire unchanged

    @field_validator("stop", mode="before")
    @classmethod
    def _stop_as_tuple(cls, value: Any) -> Any:
        return (value,) if isinstance(value, str) else value


class ChatRequest(_Params):
    messages: tuple[Message, ...]
    tools: tuple[Tool, ...] = ()
    tool_choice: Literal["auto", "none", "required"] | str | None = None  # or the name of one tool
    response_format: dict[str, Any] | None = None  # OpenAI shape: {"type": "json_object"} or json_schema

    @field_validator("messages")
    @classmethod
    def _not_empty(cls, value: tuple[Message, ...]) -> tuple[Message, ...]:
        # An after-validator, not min_length: min_length also fires when a message is invalid,
        # adding a misleading "at least 1 item" to the real complaint.
        if not value:
            raise ValueError("a chat request needs at least one message")
        return value

    @field_validator("tool_choice", mode="before")
    @classmethod
    def _tool_choice_name(cls, value: Any) -> Any:
        if isinstance(value, dict):  # {"type": "function", "function": {"name": x}} or {"name": x}
            return (value.get("function") or value).get("name")
        return value


class CompletionRequest(_Params):
    prompt: Text


class Usage(_Frozen):
    """Token counts. `input_tokens` includes cached and cache-write tokens (the OpenTelemetry
    convention); `output_tokens` includes reasoning tokens."""

    input_tokens: int = 0
    output_tokens: int = 0
    total_tokens: int = 0
    cached_input_tokens: int = 0
    cache_write_tokens: int = 0
    reasoning_tokens: int = 0

    @model_validator(mode="before")
    @classmethod
    def _default_total(cls, value: Any) -> Any:
        if isinstance(value, dict) and not value.get("total_tokens"):
            value = {
                **value,
                "total_tokens": (value.get("input_tokens") or 0) + (value.get("output_tokens") or 0),
            }
        return value

    def __add__(self, other: Usage) -> Usage:
        return Usage(**{f: getattr(self, f) + getattr(other, f) for f in Usage.model_fields})


class Attempt(_Frozen):
    """One try of one target, as the fallback step saw it."""

    driver: str
    model: str
    ok: bool
    error_type: str | None = None  # the Nova error class name when not ok
    error_message: str | None = None
    latency_s: float = 0.0
    usage: Usage = Usage()
    cost_usd: float | None = None


class Response(_Frozen):
    text: str = ""
    finish_reason: FinishReason = "other"
    raw_finish_reason: str | None = None  # the service's own value
    usage: Usage = Usage()
    model: str = ""
    driver: str = ""
    id: str = ""
    tool_calls: tuple[ToolCall, ...] = ()
    # What the service's rate-limit headers said (e.g. "requests_remaining", "tokens_reset_s"):
    rate_limits: dict[str, float] = Field(default_factory=dict)
    # Filled by the provider:
    cost_usd: float | None = None  # None: the model has no known price
    cached: bool = False
    attempts: tuple[Attempt, ...] = ()
    latency_s: float | None = None


class Chunk(_Frozen):
    """One piece of a streamed answer. The last chunk carries `finish_reason` and `usage`."""

    text: str = ""
    tool_calls: tuple[ToolCallDelta, ...] = ()
    finish_reason: FinishReason | None = None
    raw_finish_reason: str | None = None
    usage: Usage | None = None
    model: str = ""
    id: str = ""
    cached: bool = False

    @property
    def is_last(self) -> bool:
        return self.finish_reason is not None


def collect_chunks(chunks: Iterable[Chunk], *, driver: str = "") -> Response:
    """Join a complete chunk stream into the `Response` the same call would have returned."""
    text: list[str] = []
    calls: dict[int, dict[str, Any]] = {}
    last: Chunk | None = None
    model = id_ = ""
    for chunk in chunks:
        text.append(chunk.text)
        model, id_ = chunk.model or model, chunk.id or id_
        for d in chunk.tool_calls:
            call = calls.setdefault(d.index, {"id": "", "name": "", "arguments": ""})
            call["id"] = d.id or call["id"]
            call["name"] = d.name or call["name"]
            call["arguments"] += d.arguments
        if chunk.finish_reason is not None:
            last = chunk
    return Response(
        text="".join(text),
        finish_reason=last.finish_reason if last and last.finish_reason else "other",
        raw_finish_reason=last.raw_finish_reason if last else None,
        usage=(last.usage if last and last.usage else Usage()),
        model=model,
        driver=driver,
        id=id_,
        tool_calls=tuple(ToolCall(**calls[i]) for i in sorted(calls)),
    )


def validation_error(exc: ValidationError, *, driver: str | None = None) -> InvalidInputError:
    """The Nova error for input that failed validation: `.field` names the first offending field
    (dotted, as in "messages.0.role") and the message lists every problem without long inputs."""
    problems: list[str] = []
    fields: list[str] = []
    for err in exc.errors(include_url=False):
        where = ".".join(str(p) for p in err["loc"]) or exc.title
        fields.append(where)
        text = err["msg"].removeprefix("Value error, ")
        value = err.get("input")
        if isinstance(value, str | int | float | bool) and err["type"] != "value_error":
            text += f" (got {value!r:.60})"
        problems.append(f"{where}: {text}")
    return InvalidInputError(
        f"invalid {exc.title}: " + "; ".join(problems),
        driver=driver,
        field=fields[0] if fields else None,
        problems=problems,
    )
