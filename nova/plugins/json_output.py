"""Checks that an answer meant to be JSON is JSON, and matches its schema when one was given.

`JSONOutput` checks when the request asked for JSON (`response_format` `json_object` or
`json_schema`) or when it is configured with `always = true`. It strips a ```json fence around the
whole answer, parses it, and validates it against the request's schema (or the configured
`json_schema`). Validation uses `jsonschema` when it is installed, else a small built-in validator
(type, enum, const, required, properties, additionalProperties, items, anyOf, min/max length and
items, minimum/maximum; other keywords are not checked).

A bad answer raises `MalformedResponseError` with `retryable=True`, so a fallback step that sees it
may try again. For a stream the check runs when the last chunk arrives; the text before it has
already reached the caller, who gets the error instead of the last chunk.
"""

from __future__ import annotations

import importlib
import json
import re
from dataclasses import dataclass, field
from typing import Any, NoReturn

from nova.errors import MalformedResponseError, NovaError
from nova.plugins import CallContext, Plugin, PluginSettings, Request
from nova.types import ChatRequest, Chunk, Response

__all__ = ["JSONOutput", "JSONOutputSettings", "strip_fences", "validate"]

_FENCE = re.compile(r"\A```[A-Za-z0-9_-]*[ \t]*\n(.*?)\n?```\Z", re.DOTALL)
_MAX_STREAMS = 10_000  # open streams remembered; the oldest are forgotten beyond this
_TYPES: dict[str, Any] = {
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
    "string": lambda v: isinstance(v, str),
    "boolean": lambda v: isinstance(v, bool),
    "null": lambda v: v is None,
    "number": lambda v: isinstance(v, int | float) and not isinstance(v, bool),
    "integer": lambda v: (
        (isinstance(v, int) and not isinstance(v, bool)) or (isinstance(v, float) and v.is_integer())
    ),
}


def strip_fences(text: str) -> str:
    """The inside of a ``` fence that wraps the whole text, else the text stripped."""
    text = text.strip()
    m = _FENCE.match(text)
    return m.group(1).strip() if m else text


def _type_name(value: Any) -> str:
    return next(
        t for t in ("null", "boolean", "integer", "number", "string", "array", "object") if _TYPES[t](value)
    )


def validate(value: Any, schema: dict[str, Any], path: str = "$") -> list[str]:
    """Problems with `value` under `schema` (the built-in subset), as "path: what" lines."""
    errors: list[str] = []
    kind = schema.get("type")
    if kind is not None:
        kinds = [kind] if isinstance(kind, str) else list(kind)
        if not any(_TYPES.get(k, lambda v: True)(value) for k in kinds):
            return [f"{path}: expected {' or '.join(kinds)}, got {_type_name(value)}"]
    if "enum" in schema and value not in schema["enum"]:
        errors.append(f"{path}: {value!r} is not one of {schema['enum']!r}")
    if "const" in schema and value != schema["const"]:
        errors.append(f"{path}: expected {schema['const']!r}")
    if "anyOf" in schema and all(validate(value, s, path) for s in schema["anyOf"]):
        errors.append(f"{path}: matches none of anyOf")
    if isinstance(value, dict):
        errors += [
            f"{path}: missing required key {k!r}" for k in schema.get("required", ()) if k not in value
        ]
        props: dict[str, Any] = schema.get("properties", {})
        extra = schema.get("additionalProperties", True)
        for key, item in value.items():
            if key in props:
                errors += validate(item, props[key], f"{path}.{key}")
            elif extra is False:
                errors.append(f"{path}: unexpected key {key!r}")
            elif isinstance(extra, dict):
                errors += validate(item, extra, f"{path}.{key}")
    if isinstance(value, list):
        if isinstance(schema.get("items"), dict):
            for i, item in enumerate(value):
                errors += validate(item, schema["items"], f"{path}[{i}]")
        if len(value) < schema.get("minItems", 0) or len(value) > schema.get("maxItems", len(value)):
            errors.append(f"{path}: {len(value)} items is out of range")
    if isinstance(value, str) and not schema.get("minLength", 0) <= len(value) <= schema.get(
        "maxLength", len(value)
    ):
        errors.append(f"{path}: string length {len(value)} is out of range")
    if _TYPES["number"](value):
        if "minimum" in schema and value < schema["minimum"]:
            errors.append(f"{path}: {value} is below the minimum {schema['minimum']}")
        if "maximum" in schema and value > schema["maximum"]:
            errors.append(f"{path}: {value} is above the maximum {schema['maximum']}")
    return errors


def _problems(value: Any, schema: dict[str, Any], use_jsonschema: bool) -> list[str]:
    if use_jsonschema:
        try:
            validators = importlib.import_module("jsonschema.validators")  # optional dependency
        except ImportError:
            pass
        else:
            try:
                found = validators.validator_for(schema)(schema).iter_errors(value)
                return ["$" + "".join(f"[{p!r}]" for p in e.absolute_path) + f": {e.message}" for e in found]
            except Exception:  # a schema jsonschema cannot use: the built-in subset still helps
                pass
    return validate(value, schema)


@dataclass
class _Stream:
    schema: dict[str, Any] | None
    text: list[str] = field(default_factory=list)
    tool_calls: bool = False


class JSONOutputSettings(PluginSettings):
    always: bool = False  # check every answer, not only those whose request asked for JSON
    json_schema: dict[str, Any] | None = None  # used when the request brings no schema of its own
    use_jsonschema: bool = True  # use the jsonschema package when it is installed


class JSONOutput(Plugin):
    name = "json_output"
    Settings = JSONOutputSettings
    settings: JSONOutputSettings

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self._streams: dict[str, _Stream] = {}

    def expects(self, request: Request) -> tuple[bool, dict[str, Any] | None]:
        """Whether `request` wants JSON, and the schema to check it against."""
        fmt = request.response_format if isinstance(request, ChatRequest) else None
        kind = fmt.get("type") if fmt else None
        schema = None
        if kind == "json_schema" and fmt is not None:
            spec = fmt.get("json_schema")
            schema = spec.get("schema") if isinstance(spec, dict) else None
        wanted = self.settings.always or kind in ("json_object", "json_schema")
        return wanted, (schema or self.settings.json_schema) if wanted else None

    def check(self, ctx: CallContext, text: str, schema: dict[str, Any] | None) -> str:
        """The JSON text without fences; `MalformedResponseError` when it is not valid."""
        body = strip_fences(text)
        try:
            value = json.loads(body)
        except ValueError as exc:
            self._fail(ctx, f"the answer is not valid JSON ({exc})")
        if schema is not None:
            problems = _problems(value, schema, self.settings.use_jsonschema)
            if problems:
                more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
                self._fail(
                    ctx, "the JSON answer does not match the schema: " + "; ".join(problems[:3]) + more
                )
        return body

    def _fail(self, ctx: CallContext, message: str) -> NoReturn:
        raise MalformedResponseError(
            message,
            retryable=True,
            driver=ctx.driver or None,
            model=ctx.model or None,
            request_id=ctx.request_id,
            plugin=self.spec.name,
        )

    def before_request(self, ctx: CallContext, request: Request) -> None:
        if ctx.operation == "stream":
            wanted, schema = self.expects(request)
            if wanted:
                while len(self._streams) >= _MAX_STREAMS:
                    self._streams.pop(next(iter(self._streams)))
                self._streams[ctx.request_id] = _Stream(schema)

    def after_response(self, ctx: CallContext, request: Request, response: Response) -> Response | None:
        wanted, schema = self.expects(request)
        if not wanted or (response.tool_calls and not response.text.strip()):
            return None
        body = self.check(ctx, response.text, schema)
        return None if body == response.text else response.model_copy(update={"text": body})

    def on_chunk(self, ctx: CallContext, chunk: Chunk) -> None:
        state = self._streams.get(ctx.request_id)
        if state is None:
            return
        state.text.append(chunk.text)
        state.tool_calls = state.tool_calls or bool(chunk.tool_calls)
        if chunk.is_last:
            del self._streams[ctx.request_id]
            text = "".join(state.text)
            if text.strip() or not state.tool_calls:
                self.check(ctx, text, state.schema)

    def on_error(self, ctx: CallContext, request: Request, error: NovaError) -> None:
        self._streams.pop(ctx.request_id, None)
