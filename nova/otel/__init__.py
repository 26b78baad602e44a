"""OpenTelemetry for Nova: GenAI spans and metrics from the event bus (`OTelListener`).

Optional: the OpenTelemetry SDK, its exporters and the global providers are the user's to set up;
Nova only uses the API, through the providers it is given. See docs/observability.md.
"""

from __future__ import annotations

from nova.otel.listener import OTelListener, provider_name

__all__ = ["OTelListener", "provider_name"]
