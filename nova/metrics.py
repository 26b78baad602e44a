"""Nova's metrics for users: `snapshot()` of the running system, and the collector behind it.

`MetricsCollector` (an event bus listener), `MetricsSnapshot` and `render_table()` live in
`nova.collector`, which the event bus actor runs; `snapshot()` asks that actor through the facade,
so this module is an entry point and nothing below the facade imports it.
"""

from __future__ import annotations

from nova.collector import MetricsCollector, MetricsSnapshot, TargetMetrics, render_table

__all__ = ["MetricsCollector", "MetricsSnapshot", "TargetMetrics", "render_table", "snapshot"]


def snapshot(timeout: float = 5.0) -> MetricsSnapshot:
    """The metrics of the Nova this process talks to (`nova run`, or the embedded system)."""
    from nova import llm
    from nova.errors import DriverUnavailableError
    from nova.messages import GetMetrics

    system = llm.system()
    reply = system.ask(system.event_bus, GetMetrics(), timeout)
    if reply is None:
        raise DriverUnavailableError(f"Nova's event bus did not answer within {timeout}s")
    return MetricsSnapshot.model_validate(reply.snapshot)
