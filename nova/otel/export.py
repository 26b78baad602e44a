"""The OpenTelemetry SDK setup behind `[telemetry] exporter`: providers with an OTLP or console
exporter, in the process that makes the spans (the event bus's).

The standard variables keep their meaning: the OTLP exporters read OTEL_EXPORTER_OTLP_ENDPOINT,
…_HEADERS, …_TIMEOUT and their per-signal forms; the resource reads OTEL_SERVICE_NAME and
OTEL_RESOURCE_ATTRIBUTES ("nova" when neither names the service); the batch processor and the
metric reader read OTEL_BSP_* and OTEL_METRIC_EXPORT_INTERVAL.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from typing import Any, TextIO

from nova.config import OTelExport

__all__ = ["Providers", "install"]


@dataclass
class Providers:
    """The providers made for an export (None: that signal is not exported)."""

    tracer_provider: Any = None
    meter_provider: Any = None

    def shutdown(self) -> None:
        """Export what is still buffered, then stop."""
        for provider in (self.tracer_provider, self.meter_provider):
            if provider is not None:
                provider.shutdown()


def install(export: OTelExport, *, console: TextIO | None = None) -> Providers:
    """Providers that export as `export` says; `console` is where the console exporter writes
    (default: standard output)."""
    from opentelemetry.sdk.resources import Resource

    named = bool(os.environ.get("OTEL_SERVICE_NAME")) or "service.name=" in os.environ.get(
        "OTEL_RESOURCE_ATTRIBUTES", ""
    )
    resource = Resource.create({} if named else {"service.name": "nova"})
    providers = Providers()
    if export.traces != "none":
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        # No exit handler: the event bus shuts the providers down when its actor exits.
        tracer_provider = TracerProvider(resource=resource, shutdown_on_exit=False)
        tracer_provider.add_span_processor(BatchSpanProcessor(_span_exporter(export, console)))
        providers.tracer_provider = tracer_provider
    if export.metrics != "none":
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader

        reader = PeriodicExportingMetricReader(_metric_exporter(export, console))
        providers.meter_provider = MeterProvider(
            resource=resource, metric_readers=[reader], shutdown_on_exit=False
        )
    return providers


def _span_exporter(export: OTelExport, console: TextIO | None) -> Any:
    if export.traces == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        return ConsoleSpanExporter(out=console or sys.stdout)
    if export.traces_protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (  # type: ignore[import-not-found]
            OTLPSpanExporter,
        )

        return OTLPSpanExporter()
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HTTPSpanExporter

    return HTTPSpanExporter()


def _metric_exporter(export: OTelExport, console: TextIO | None) -> Any:
    if export.metrics == "console":
        from opentelemetry.sdk.metrics.export import ConsoleMetricExporter

        return ConsoleMetricExporter(out=console or sys.stdout)
    if export.metrics_protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import (  # type: ignore[import-not-found]
            OTLPMetricExporter,
        )

        return OTLPMetricExporter()
    from opentelemetry.exporter.otlp.proto.http.metric_exporter import (
        OTLPMetricExporter as HTTPMetricExporter,
    )

    return HTTPMetricExporter()
