"""`[telemetry] exporter` and the standard OTEL_* variables: Nova sets up the OpenTelemetry SDK in
the event bus process itself, so spans leave a real system with one line of configuration."""

from __future__ import annotations

import sys
from typing import Any

import pytest

from nova import errors, llm, metrics
from nova.config import parse_config, preflight
from nova.testing import isolated_system, test_config
from tests.fakeserver import FakeServer, Reply
from tests.waiting import wait_until

SOURCE = "/etc/nova/config.toml"


def export(telemetry: dict[str, Any] | None = None, **env: str) -> tuple[str, str]:
    config = parse_config({"telemetry": telemetry or {}}, source=SOURCE, env=env)
    return config.otel_export.traces, config.otel_export.metrics


def test_nothing_is_exported_by_default() -> None:
    assert export() == ("none", "none")


def test_the_exporter_key_sets_both_signals() -> None:
    assert export({"exporter": "console"}) == ("console", "console")
    assert export({"exporter": "otlp"}) == ("otlp", "otlp")


def test_an_otlp_endpoint_variable_alone_exports_both_signals() -> None:
    assert export(OTEL_EXPORTER_OTLP_ENDPOINT="http://collector:4318") == ("otlp", "otlp")
    assert export(OTEL_EXPORTER_OTLP_TRACES_ENDPOINT="http://c:4318/v1/traces") == ("otlp", "none")


def test_the_per_signal_exporter_variables_are_honoured() -> None:
    assert export(OTEL_TRACES_EXPORTER="console") == ("console", "none")
    assert export(OTEL_EXPORTER_OTLP_ENDPOINT="http://collector:4318", OTEL_METRICS_EXPORTER="none") == (
        "otlp",
        "none",
    )


def test_the_exporter_key_wins_over_the_variables() -> None:
    assert export({"exporter": "none"}, OTEL_TRACES_EXPORTER="otlp") == ("none", "none")


def test_an_exporter_variable_nova_cannot_set_up_names_the_variable() -> None:
    with pytest.raises(errors.ConfigurationError) as caught:
        export(OTEL_TRACES_EXPORTER="zipkin")
    assert "environment variable OTEL_TRACES_EXPORTER: 'zipkin'" in caught.value.message
    with pytest.raises(errors.ConfigurationError) as caught:
        export(OTEL_EXPORTER_OTLP_ENDPOINT="http://c:4318", OTEL_EXPORTER_OTLP_PROTOCOL="http/json")
    assert "OTEL_EXPORTER_OTLP_PROTOCOL: 'http/json'" in caught.value.message


def test_an_unknown_exporter_in_the_file_names_the_key() -> None:
    with pytest.raises(errors.ConfigurationError) as caught:
        export({"exporter": "jaeger"})
    assert f"{SOURCE}: key 'telemetry.exporter'" in caught.value.message


def test_otel_setup_and_an_exporter_are_one_or_the_other() -> None:
    with pytest.raises(errors.ConfigurationError) as caught:
        export({"exporter": "otlp", "otel_setup": "myapp.telemetry:setup"})
    assert "key 'telemetry.otel_setup'" in caught.value.message
    # The user's setup owns the SDK: the variables do not switch Nova's exporter on beside it.
    assert export({"otel_setup": "myapp.telemetry:setup"}, OTEL_EXPORTER_OTLP_ENDPOINT="http://c") == (
        "none",
        "none",
    )


@pytest.mark.parametrize(
    "origin", ["key 'telemetry.exporter'", "environment variable OTEL_EXPORTER_OTLP_ENDPOINT"]
)
def test_a_missing_otlp_package_names_the_extra_at_start(
    origin: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "opentelemetry.exporter.otlp.proto.http", None)  # not installed
    if origin.startswith("key"):
        config = parse_config({"telemetry": {"exporter": "otlp"}}, source=SOURCE, env={})
    else:
        config = parse_config({}, source=SOURCE, env={"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"})
    with pytest.raises(errors.ConfigurationError) as caught:
        preflight(config)
    message = caught.value.message
    assert message.startswith(f"{SOURCE}: {origin}") and "pip install 'nova-llm[otlp]'" in message


# -- a real system -------------------------------------------------------------------------------


@pytest.mark.integration
def test_the_console_exporter_prints_the_spans_of_a_real_call(
    capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "50")  # ms: the batch goes out at once
    printed: list[str] = []

    def seen(text: str) -> bool:
        printed.append(capfd.readouterr().out)
        return text in "".join(printed)

    with isolated_system(test_config(telemetry={"exporter": "console"})):
        assert llm.chat("hello", model="test-model").text == "echo: hello"
        assert wait_until(lambda: seen('"name": "chat test-model"'), timeout=20), "".join(printed)
    out = "".join(printed)
    assert '"gen_ai.operation.name": "chat"' in out and '"service.name": "nova"' in out


@pytest.mark.integration
def test_the_otlp_endpoint_variable_alone_sends_the_spans_of_a_real_call(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    with FakeServer() as collector:
        collector.default["/v1/traces"] = Reply(
            status=200, headers={"content-type": "application/x-protobuf"}
        )
        collector.default["/v1/metrics"] = Reply(
            status=200, headers={"content-type": "application/x-protobuf"}
        )
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", collector.url)
        monkeypatch.setenv("OTEL_SERVICE_NAME", "my-app")
        monkeypatch.setenv("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment=test")
        monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "50")
        with isolated_system(test_config()):  # no [telemetry] exporter: the variables decide
            assert llm.chat("hello", model="test-model").text == "echo: hello"
            posted = wait_until(lambda: [r for r in collector.requests if r.path == "/v1/traces"], timeout=20)
            assert posted, [r.path for r in collector.requests]
    request = ExportTraceServiceRequest.FromString(posted[0].body)
    resource = {a.key: a.value.string_value for a in request.resource_spans[0].resource.attributes}
    assert resource["service.name"] == "my-app" and resource["deployment.environment"] == "test"
    spans = [s for rs in request.resource_spans for ss in rs.scope_spans for s in ss.spans]
    assert "chat test-model" in [s.name for s in spans]


def test_config_check_says_what_is_exported_and_why(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import json

    from nova.cli import main

    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318")
    monkeypatch.setenv("OTEL_METRICS_EXPORTER", "none")
    assert main(["config", "check", "--json"]) == 0
    telemetry = json.loads(capsys.readouterr().out)["telemetry"]
    assert telemetry == {
        "traces": {"exporter": "otlp", "from": "OTEL_EXPORTER_OTLP_ENDPOINT"},
        "metrics": {"exporter": "none", "from": "OTEL_METRICS_EXPORTER"},
    }


@pytest.mark.integration
def test_spans_still_buffered_are_exported_when_the_system_stops(
    capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "600000")  # ms: only the shutdown can send them
    printed: list[str] = []
    with isolated_system(test_config(telemetry={"exporter": "console"})):
        assert llm.chat("hello", model="test-model").text == "echo: hello"
        # The request's end has reached the event bus (its span is ended, waiting in the batch).
        assert wait_until(lambda: metrics.snapshot().totals.completed == 1)
        printed.append(capfd.readouterr().out)
        assert "chat test-model" not in printed[-1]
    assert wait_until(lambda: printed.append(capfd.readouterr().out) or "chat test-model" in "".join(printed))
