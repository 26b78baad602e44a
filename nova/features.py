"""Builds the provider's features from configuration.

Each feature's settings model lives in its own module (`nova.config` validates the sections with
them); this module assembles the `Provider` the router runs, with thin adapters from the plugin
runner and the conversation manager to what the provider asks of them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from nova import errors
from nova.cache import cache_key
from nova.config import NovaConfig
from nova.context import Conversation
from nova.provider import Answered, Pending, Provider
from nova.ratelimit import estimate_tokens
from nova.types import ChatRequest, Chunk, Message, Response

__all__ = ["build_provider", "cache_enabled", "pipeline_stages", "pricer", "ratelimit_enabled"]


def cache_enabled(config: NovaConfig) -> bool:
    return config.cache.enabled


def ratelimit_enabled(config: NovaConfig) -> bool:
    settings = config.ratelimit
    return settings.enabled and bool(settings.limits or settings.default)


def pipeline_stages(config: NovaConfig) -> tuple[str, ...]:
    """The stage actors a pipeline has, in the order a call visits them."""
    stages: tuple[str, ...] = ("cache",) if cache_enabled(config) else ()
    stages += ("ratelimit",) if ratelimit_enabled(config) else ()
    return (*stages, "fallback")


def pricer(config: NovaConfig) -> Callable[[str, str, Any], float | None]:
    """`price(driver name, model, usage)`: a call's cost in USD, or None when unknown."""
    from nova import costs

    kinds = {name: driver.kind for name, driver in config.drivers.items()}
    return costs.pricer(kinds, costs.price_overrides(config.prices))


def build_provider(
    config: NovaConfig, *, state_dir: str | None = None, emit: Callable[..., None] | None = None
) -> Provider:
    """The router's provider. A relative conversation store path is under `state_dir`
    (default: `system.state_dir`); `emit(name, **fields)` reports plugin failures as events."""
    from nova.plugins import PluginRunner, load_plugins

    plugins = load_plugins(config.plugins)
    settings = config.context
    if settings.summary_driver is not None and settings.summary_driver not in config.drivers:
        raise errors.ConfigurationError(
            f"key 'context.summary_driver': no driver named {settings.summary_driver!r} is configured"
            f" (configured: {', '.join(sorted(config.drivers))})"
        )
    base_dir = config.system.state_dir if state_dir is None else state_dir
    context = Conversation.from_settings(settings, base_dir=base_dir)
    return Provider(
        config,
        plugins=_Plugins(PluginRunner(plugins, emit=emit)) if plugins else None,
        conversations=_Conversations(context, config),
        cache_enabled=cache_enabled(config),
        ratelimit_enabled=ratelimit_enabled(config),
        estimate_tokens=estimate_tokens,
        cache_key=cache_key,
        price=pricer(config),
    )


class _Plugins:
    """The plugin runner, speaking the provider's terms (a pending call in, a decision out)."""

    def __init__(self, runner: Any) -> None:
        self.runner = runner

    @staticmethod
    def _ctx(pending: Pending) -> Any:
        from nova.plugins import CallContext

        return CallContext(
            pending.request_id,
            pending.driver,
            pending.request.model,
            pending.options.conversation,
            pending.kind,  # type: ignore[arg-type]
        )

    def before_request(self, pending: Pending) -> Answered | None:
        try:
            out = self.runner.before_request(self._ctx(pending), pending.request)
        except errors.NovaError as exc:
            return Answered(None, exc)
        if isinstance(out, Response):
            return Answered(out.model_copy(update={"driver": out.driver or pending.driver}), None)
        pending.request = out
        return None

    def on_chunk(self, pending: Pending, chunk: Chunk) -> Chunk:
        return self.runner.on_chunk(self._ctx(pending), chunk)  # type: ignore[no-any-return]

    def after(
        self, pending: Pending, response: Response | None, error: errors.NovaError | None
    ) -> tuple[Response | None, errors.NovaError | None]:
        ctx = self._ctx(pending)
        try:
            if response is not None:
                return self.runner.after_response(ctx, pending.request, response), None
            assert error is not None
            recovered = self.runner.on_error(ctx, pending.request, error)
            return (recovered, None) if recovered is not None else (None, error)
        except errors.NovaError as exc:
            return None, exc


class _Conversations:
    """The conversation manager, with the model's context window looked up per call."""

    def __init__(self, conversation: Conversation, config: NovaConfig) -> None:
        self.conversation = conversation
        self.config = config

    def prepare_request(
        self, conv_id: str, request: ChatRequest, driver: str
    ) -> tuple[ChatRequest, list[Message]]:
        """The trimmed request, and what it left out when summaries are on (else nothing)."""
        from nova.models import context_window

        kind = self.config.drivers[driver].kind
        window = context_window(kind, request.model) if request.model else None
        prepared, dropped = self.conversation.prepare_request(conv_id, request, window=window)
        return prepared, dropped if self.conversation.settings.summarize else []

    def record(self, conv_id: str, new_messages: Any, response: Response) -> None:
        self.conversation.record(conv_id, new_messages, response)

    def summary_request(
        self, conv_id: str, dropped: Sequence[Message], driver: str
    ) -> tuple[str, ChatRequest] | None:
        """(driver, request) that summarises `dropped`; None when summaries are off."""
        settings = self.conversation.settings
        if not settings.summarize or not dropped:
            return None
        return settings.summary_driver or driver, self.conversation.summary_prompt(conv_id, dropped)

    def apply_summary(self, conv_id: str, dropped: Sequence[Message], text: str) -> bool:
        return self.conversation.apply_summary(conv_id, dropped, text)
