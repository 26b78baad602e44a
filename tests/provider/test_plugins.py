"""Plugins: hook order, answers and recoveries, typed errors naming the plugin, per-driver
enabling, loading, and the two shipped plugins (redaction, JSON output)."""

from __future__ import annotations

import importlib.util
import pickle
from typing import Any

import pytest

from nova.errors import ConfigurationError, MalformedResponseError, NovaError, PluginError, ServerError
from nova.events import SENDERS, Event, violations
from nova.plugins import CallContext, Plugin, PluginRunner, PluginSettings, Request, load_plugins
from nova.plugins.json_output import JSONOutput, strip_fences, validate
from nova.plugins.redact import RedactSecrets, iban_ok, luhn_ok, redact_text
from nova.types import ChatRequest, Chunk, CompletionRequest, ImagePart, Message, Response, TextPart

CTX = CallContext(request_id="r1", driver="openai", model="gpt-4o-mini")
REQ = ChatRequest(messages=[{"role": "user", "content": "hi"}])


class Tag(Plugin):
    """Appends its tag to the prompt and the answer, and records the order hooks ran in."""

    class Settings(PluginSettings):
        tag: str = "x"

    settings: Settings
    log: list[str] = []

    def before_request(self, ctx: CallContext, request: Request) -> Request | Response | None:
        self.log.append(f"before:{self.settings.tag}")
        assert isinstance(request, ChatRequest)
        last = request.messages[-1]
        return request.model_copy(
            update={
                "messages": (
                    *request.messages[:-1],
                    Message(role="user", content=last.text + self.settings.tag),
                )
            }
        )

    def after_response(self, ctx: CallContext, request: Request, response: Response) -> Response | None:
        self.log.append(f"after:{self.settings.tag}")
        return response.model_copy(update={"text": response.text + self.settings.tag})

    def on_chunk(self, ctx: CallContext, chunk: Chunk) -> Chunk | None:
        return chunk.model_copy(update={"text": chunk.text.upper()})


class Answer(Plugin):
    name = "answer"

    def before_request(self, ctx: CallContext, request: Request) -> Request | Response | None:
        return Response(text="from plugin")


class Recover(Plugin):
    def on_error(self, ctx: CallContext, request: Request, error: NovaError) -> Response | None:
        return Response(text=f"recovered from {type(error).__name__}") if error.retryable else None


class Boom(Plugin):
    name = "boom"

    def after_response(self, ctx: CallContext, request: Request, response: Response) -> Response | None:
        raise RuntimeError("kaboom with sk-test-abcdefgh1234")


class Wrong(Plugin):
    def on_chunk(self, ctx: CallContext, chunk: Chunk) -> Chunk | None:
        return "not a chunk"  # type: ignore[return-value]


def test_hooks_run_in_order_and_each_sees_the_previous_result() -> None:
    Tag.log = []
    runner = PluginRunner([Tag(tag="1"), Tag(tag="2")])
    request = runner.before_request(CTX, REQ)
    assert isinstance(request, ChatRequest) and request.messages[-1].text == "hi12"
    assert runner.after_response(CTX, request, Response(text="a")).text == "a12"
    assert Tag.log == ["before:1", "before:2", "after:1", "after:2"]
    assert runner.on_chunk(CTX, Chunk(text="abc")).text == "ABC"


def test_a_plugin_that_answers_stops_the_chain() -> None:
    Tag.log = []
    out = PluginRunner([Answer(), Tag()]).before_request(CTX, REQ)
    assert out == Response(text="from plugin") and Tag.log == []


def test_no_plugins_change_nothing() -> None:
    runner = PluginRunner([Plugin()])
    assert runner.before_request(CTX, REQ) is REQ
    assert runner.after_response(CTX, REQ, Response(text="a")) == Response(text="a")
    assert runner.on_error(CTX, REQ, ServerError("x")) is None


def test_on_error_recovers_with_the_first_response() -> None:
    runner = PluginRunner([Plugin(), Recover()])
    assert runner.on_error(CTX, REQ, ServerError("down")) == Response(text="recovered from ServerError")
    assert runner.on_error(CTX, REQ, NovaError("no")) is None


def test_a_raising_plugin_gives_a_plugin_error_naming_it_and_the_runner_keeps_working() -> None:
    seen: list[tuple[str, str]] = []
    runner = PluginRunner([Boom()], on_failure=lambda name, hook, err: seen.append((name, hook)))
    with pytest.raises(PluginError) as info:
        runner.after_response(CTX, REQ, Response(text="a"))
    err = info.value
    assert err.plugin == "boom" and err.hook == "after_response" and err.request_id == "r1"
    assert "kaboom" in str(err) and "sk-test" not in str(err)  # the message is redacted
    assert pickle.loads(pickle.dumps(err)).plugin == "boom"
    assert seen == [("boom", "after_response")]
    assert runner.before_request(CTX, REQ) is REQ  # the runner still works


def test_a_hook_returning_the_wrong_type_is_a_plugin_error() -> None:
    with pytest.raises(PluginError, match="returned str from on_chunk"):
        PluginRunner([Wrong()]).on_chunk(CTX, Chunk(text="a"))


def test_a_failing_failure_listener_does_not_change_the_error() -> None:
    def listener(*_: Any) -> None:
        raise RuntimeError("listener broke")

    with pytest.raises(PluginError, match="kaboom"):
        PluginRunner([Boom()], on_failure=listener).after_response(CTX, REQ, Response())


def test_a_failing_plugin_emits_a_documented_plugin_failed_event() -> None:
    emitted: list[Event] = []

    def emit(name: str, **fields: Any) -> None:  # what an actor's emit receives
        emitted.append(Event(name=name, sender=SENDERS[name], **fields))

    runner = PluginRunner([Boom(), Wrong()], emit=emit)
    with pytest.raises(PluginError):
        runner.after_response(CTX, REQ, Response(text="a"))
    with pytest.raises(PluginError):
        runner.on_chunk(CTX, Chunk(text="a"))
    assert [(e.name, e.data) for e in emitted] == [
        ("plugin.failed", {"plugin": "boom", "hook": "after_response"}),
        ("plugin.failed", {"plugin": "Wrong", "hook": "on_chunk"}),
    ]
    first = emitted[0]
    assert (first.request_id, first.driver, first.model) == ("r1", "openai", "gpt-4o-mini")
    assert first.error_type == "PluginError" and "sk-test" not in (first.error_message or "")
    assert [violations(e) for e in emitted] == [[], []]  # as nova.events declares it


def test_a_failing_emit_does_not_change_the_error() -> None:
    def emit(*_: Any, **__: Any) -> None:
        raise RuntimeError("bus broke")

    with pytest.raises(PluginError, match="kaboom"):
        PluginRunner([Boom()], emit=emit).after_response(CTX, REQ, Response())


def test_plugins_are_enabled_and_disabled_per_driver() -> None:
    only_openai = Tag(tag="o", drivers=["openai"])
    not_test = Tag(tag="n", disabled_drivers=["test"])
    runner = PluginRunner([only_openai, not_test])
    assert runner.active("openai") == [only_openai, not_test]
    assert runner.active("anthropic") == [not_test]
    assert runner.active("test") == []
    out = runner.after_response(CallContext(request_id="r", driver="anthropic"), REQ, Response(text=""))
    assert out.text == "n"


# -- loading --------------------------------------------------------------------------------------


def test_load_plugins_from_config_entries_with_options_and_drivers() -> None:
    plugins = load_plugins(
        [
            {"use": "redact", "kinds": ["email"], "drivers": ["openai"]},
            {"use": "nova.plugins.json_output:JSONOutput", "always": True, "disabled_drivers": ["test"]},
            {"use": f"{__name__}:Tag", "tag": "t", "name": "tagger"},
        ]
    )
    redact, json_out, tag = plugins
    assert isinstance(redact, RedactSecrets) and redact.settings.kinds == ("email",)
    assert redact.spec.enabled_for == ("openai",)
    assert (
        isinstance(json_out, JSONOutput)
        and json_out.settings.always
        and json_out.spec.disabled_for == ("test",)
    )
    assert tag.spec.name == "tagger"


@pytest.mark.parametrize(
    ("entry", "needle"),
    [
        ({"use": "redcat"}, "unknown plugin 'redcat'; did you mean 'redact'?"),
        ({"use": "nova.plugins.redact:RedactSecret"}, "did you mean nova.plugins.redact:RedactSecrets?"),
        ({"use": "nova.no_such_module:X"}, "cannot import"),
        ({"use": "nova.types:Message"}, "not a nova.plugins.Plugin subclass"),
        (
            {"use": "redact", "kind": ["email"]},
            "kind: Extra inputs are not permitted (did you mean 'kinds'?)",
        ),
        ({"use": "redact", "kinds": ["passport"]}, "plugin 'redact': kinds.0"),
        ({"drivers": ["x"]}, "needs 'use'"),
    ],
)
def test_loader_errors_are_configuration_errors_that_help(entry: dict[str, Any], needle: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        load_plugins([entry])
    assert needle in str(info.value)


def test_plugin_instances_load_as_they_are() -> None:
    plugin = Recover()
    assert load_plugins([plugin]) == [plugin]


# -- redaction ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected", "kind"),
    [
        ("mail bob.smith+x@example.co.uk now", "mail [EMAIL] now", "email"),
        ("card 4111 1111 1111 1111 ok", "card [CREDIT_CARD] ok", "credit_card"),
        ("card 5500-0000-0000-0004.", "card [CREDIT_CARD].", "credit_card"),
        ("iban DE89 3704 0044 0532 0130 00 AND more", "iban [IBAN] AND more", "iban"),
        ("iban GB82WEST12345698765432", "iban [IBAN]", "iban"),
        ("call +49 30 1234567 today", "call [PHONE] today", "phone"),
        ("call (555) 123-4567", "call [PHONE]", "phone"),
        ("call 555-123-4567 or 020 7946 0958", "call [PHONE] or [PHONE]", "phone"),
        ("key sk-test-abcdefgh123 here", "key [API_KEY] here", "api_key"),
        ("aws AKIAIOSFODNN7EXAMPLE", "aws [API_KEY]", "api_key"),
    ],
)
def test_each_kind_is_masked(text: str, expected: str, kind: str) -> None:
    out, counts = redact_text(text)
    assert out == expected and counts[kind] >= 1


@pytest.mark.parametrize(
    "text",
    [
        "card 4111 1111 1111 1112 fails the Luhn check",
        "iban DE89 3704 0044 0532 0130 01 fails mod 97",
        "on 2024-01-15 at 192.168.10.20 with version 1.2.3, 1500 people in 2023, order 12345678",
        "markdown ***bold*** stays",
    ],
)
def test_look_alikes_are_kept(text: str) -> None:
    assert redact_text(text) == (text, {})


def test_checksums() -> None:
    assert luhn_ok("4111111111111111") and not luhn_ok("4111111111111112")
    assert iban_ok("DE89 3704 0044 0532 0130 00") and not iban_ok("DE00 3704 0044 0532 0130 00")


def test_redaction_rewrites_user_system_and_tool_text_only_and_counts() -> None:
    plugin = RedactSecrets(kinds=["email", "credit_card"])
    request = ChatRequest(
        messages=[
            Message(role="system", content="admin is root@example.com"),
            Message(
                role="user", content=(TextPart(text="pay 4111111111111111"), ImagePart(url="https://x/i.png"))
            ),
            Message(role="assistant", content="mail me at me@example.com"),
            Message(role="tool", tool_call_id="t", content="found ada@example.org, +49 30 1234567"),
        ]
    )
    out = PluginRunner([plugin]).before_request(CTX, request)
    assert isinstance(out, ChatRequest)
    sys_, user, bot, tool = out.messages
    assert sys_.text == "admin is [EMAIL]"
    assert user.text == "pay [CREDIT_CARD]" and isinstance(user.content, tuple) and len(user.content) == 2
    assert bot == request.messages[2]  # the model's own words are left alone
    assert tool.text == "found [EMAIL], +49 30 1234567"  # phone numbers were not asked for
    assert plugin.counts == {"email": 2, "credit_card": 1}


def test_redaction_of_a_clean_request_returns_none_and_completion_prompts_are_redacted() -> None:
    plugin = RedactSecrets(mask="<{kind}>")
    assert plugin.before_request(CTX, REQ) is None
    out = plugin.before_request(CTX, CompletionRequest(prompt="write to x@example.com"))
    assert isinstance(out, CompletionRequest) and out.prompt == "write to <EMAIL>"


# -- JSON output ----------------------------------------------------------------------------------

SCHEMA = {
    "type": "object",
    "required": ["name", "age"],
    "properties": {
        "name": {"type": "string"},
        "age": {"type": "integer", "minimum": 0},
        "tags": {"type": "array", "items": {"type": "string"}},
    },
    "additionalProperties": False,
}
JSON_REQ = ChatRequest(messages=REQ.messages, response_format={"type": "json_object"})
SCHEMA_REQ = ChatRequest(
    messages=REQ.messages,
    response_format={"type": "json_schema", "json_schema": {"name": "p", "schema": SCHEMA}},
)


@pytest.mark.parametrize(
    ("value", "problems"),
    [
        ({"name": "Ada", "age": 36, "tags": ["x"]}, []),
        ({"name": "Ada", "age": 36.0}, []),
        ({"name": "Ada"}, ["$: missing required key 'age'"]),
        ({"name": "Ada", "age": "36"}, ["$.age: expected integer, got string"]),
        ({"name": "Ada", "age": True}, ["$.age: expected integer, got boolean"]),
        ({"name": "Ada", "age": -1}, ["$.age: -1 is below the minimum 0"]),
        ({"name": "Ada", "age": 1, "x": 1}, ["$: unexpected key 'x'"]),
        ({"name": "Ada", "age": 1, "tags": [1]}, ["$.tags[0]: expected string, got integer"]),
        ([], ["$: expected object, got array"]),
    ],
)
def test_builtin_validator(value: Any, problems: list[str]) -> None:
    assert validate(value, SCHEMA) == problems


def test_enum_anyof_and_lengths() -> None:
    assert validate("b", {"enum": ["a"]}) == ["$: 'b' is not one of ['a']"]
    assert validate(1, {"anyOf": [{"type": "string"}, {"type": "integer"}]}) == []
    assert validate(None, {"anyOf": [{"type": "string"}, {"type": "integer"}]}) == [
        "$: matches none of anyOf"
    ]
    assert validate("", {"type": "string", "minLength": 1}) == ["$: string length 0 is out of range"]


def test_fences_are_stripped() -> None:
    assert strip_fences('```json\n{"a": 1}\n```') == '{"a": 1}'
    assert strip_fences("  ```\n[1]\n```  ") == "[1]"
    assert strip_fences("text ```json\n{}\n```") == "text ```json\n{}\n```"


def test_json_answer_is_checked_only_when_asked_for() -> None:
    plugin = JSONOutput()
    assert plugin.after_response(CTX, REQ, Response(text="plain words")) is None
    assert plugin.after_response(CTX, JSON_REQ, Response(text='{"a": 1}')) is None
    fenced = plugin.after_response(CTX, JSON_REQ, Response(text='```json\n{"a": 1}\n```'))
    assert fenced is not None and fenced.text == '{"a": 1}'
    with pytest.raises(MalformedResponseError, match="not valid JSON") as info:
        plugin.after_response(CTX, JSON_REQ, Response(text='{"a": 1'))
    assert info.value.retryable and info.value.details["plugin"] == "json_output"


def test_json_schema_from_the_request_or_the_config() -> None:
    with pytest.raises(MalformedResponseError, match="missing required key 'age'"):
        JSONOutput(use_jsonschema=False).after_response(CTX, SCHEMA_REQ, Response(text='{"name": "Ada"}'))
    always = JSONOutput(always=True, json_schema=SCHEMA, use_jsonschema=False)
    with pytest.raises(MalformedResponseError, match="does not match the schema"):
        always.after_response(CTX, REQ, Response(text='{"name": 1, "age": 2}'))
    assert always.after_response(CTX, REQ, Response(text='{"name": "a", "age": 2}')) is None


def test_a_tool_call_answer_is_not_checked() -> None:
    from nova.types import ToolCall

    assert JSONOutput().after_response(CTX, JSON_REQ, Response(tool_calls=(ToolCall(name="f"),))) is None


def test_the_runner_passes_the_json_error_through_with_the_hook() -> None:
    with pytest.raises(MalformedResponseError) as info:
        PluginRunner([JSONOutput()]).after_response(CTX, JSON_REQ, Response(text="nope"))
    assert info.value.details["hook"] == "after_response" and info.value.request_id == "r1"


def test_a_stream_is_checked_at_its_last_chunk() -> None:
    ctx = CallContext(request_id="s1", driver="openai", operation="stream")
    runner = PluginRunner([JSONOutput(use_jsonschema=False)])
    runner.before_request(ctx, SCHEMA_REQ)
    runner.on_chunk(ctx, Chunk(text='{"name": '))
    with pytest.raises(MalformedResponseError, match="missing required key 'age'"):
        runner.on_chunk(ctx, Chunk(text='"Ada"}', finish_reason="stop"))
    good = CallContext(request_id="s2", driver="openai", operation="stream")
    runner.before_request(good, SCHEMA_REQ)
    for text in ['{"name": "Ada",', ' "age": 3}']:
        runner.on_chunk(good, Chunk(text=text))
    assert runner.on_chunk(good, Chunk(finish_reason="stop")).finish_reason == "stop"


@pytest.mark.skipif(
    importlib.util.find_spec("jsonschema") is None,
    reason="jsonschema is not installed: its optional path is not tested",
)
def test_jsonschema_is_used_when_installed() -> None:
    with pytest.raises(MalformedResponseError, match="'age' is a required property"):
        JSONOutput().after_response(CTX, SCHEMA_REQ, Response(text='{"name": "Ada"}'))


def test_plugins_load_by_entry_point_name(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    dist = tmp_path / "nova_test_plugins-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: nova-test-plugins\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(
        f"[nova.plugins]\ntagger = {__name__}:Tag\nbroken = nova.no_such_module:Plugin\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    (plugin,) = load_plugins([{"use": "tagger", "tag": "ep"}])
    assert isinstance(plugin, Tag) and plugin.settings.tag == "ep"
    with pytest.raises(ConfigurationError, match="plugin 'broken' .* failed to load"):
        load_plugins([{"use": "broken"}])
    with pytest.raises(ConfigurationError, match="did you mean 'tagger'"):
        load_plugins([{"use": "tager"}])
