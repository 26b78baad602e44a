"""Plugins: ordered hooks around every call, their runner, and their loader.

A plugin subclasses `Plugin` and overrides any of four synchronous hooks (they run on the
router's thread, so they must be quick and must not block):

    before_request(ctx, request)           -> new request | Response (answers the call) | None
    after_response(ctx, request, response) -> new Response | None
    on_error(ctx, request, error)          -> Response (recovers) | None
    on_chunk(ctx, chunk)                   -> new Chunk | None

None always means "unchanged". `PluginRunner` runs the hooks in configuration order, skips plugins
not enabled for the call's driver, and turns anything a plugin raises into `PluginError` naming the
plugin and the hook; a `NovaError` a plugin raises on purpose (e.g. `MalformedResponseError` from
the JSON validator) passes through with `details["plugin"]` set. Config entries:

    [[plugins]]
    use = "nova.plugins.redact:RedactSecrets"   # or an entry-point name in group "nova.plugins"
    drivers = ["openai"]                        # optional: only for these drivers
    disabled_drivers = ["test"]                 # optional: never for these
    kinds = ["email", "credit_card"]            # the rest: the plugin's own settings
"""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any, ClassVar, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

from nova.errors import ConfigurationError, NovaError, PluginError
from nova.types import ChatRequest, Chunk, CompletionRequest, Response

__all__ = [
    "ENTRY_POINT_GROUP",
    "CallContext",
    "Plugin",
    "PluginRunner",
    "PluginSettings",
    "PluginSpec",
    "Request",
    "load_plugins",
]

ENTRY_POINT_GROUP = "nova.plugins"
BUILTIN: dict[str, str] = {
    "json_output": "nova.plugins.json_output:JSONOutput",
    "redact": "nova.plugins.redact:RedactSecrets",
}

Request = ChatRequest | CompletionRequest
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class CallContext:
    """What a hook may know about the call besides its request."""

    request_id: str
    driver: str
    model: str = ""
    conversation: str | None = None
    operation: Literal["chat", "complete", "stream"] = "chat"


class PluginSettings(BaseModel):
    """Base of every plugin's own settings: frozen, and an unknown key is an error."""

    model_config = ConfigDict(frozen=True, extra="forbid")


@dataclass(frozen=True)
class PluginSpec:
    """Where a plugin runs: `enabled_for` None means every driver not in `disabled_for`."""

    name: str
    enabled_for: tuple[str, ...] | None = None
    disabled_for: tuple[str, ...] = ()

    def applies_to(self, driver: str) -> bool:
        if driver in self.disabled_for:
            return False
        return self.enabled_for is None or driver in self.enabled_for


class Plugin:
    """Base class; override the hooks you need. `Settings` declares the plugin's options."""

    name: ClassVar[str] = ""  # defaults to the class name
    Settings: ClassVar[type[PluginSettings]] = PluginSettings

    def __init__(
        self,
        *,
        name: str | None = None,
        drivers: Iterable[str] | None = None,
        disabled_drivers: Iterable[str] = (),
        **options: Any,
    ) -> None:
        plugin_name = name or type(self).name or type(self).__name__
        try:
            self.settings = self.Settings(**options)
        except ValidationError as exc:
            raise _settings_error(plugin_name, self.Settings, exc) from None
        self.spec = PluginSpec(
            plugin_name, None if drivers is None else tuple(drivers), tuple(disabled_drivers)
        )

    def before_request(self, ctx: CallContext, request: Request) -> Request | Response | None:
        return None

    def after_response(self, ctx: CallContext, request: Request, response: Response) -> Response | None:
        return None

    def on_error(self, ctx: CallContext, request: Request, error: NovaError) -> Response | None:
        return None

    def on_chunk(self, ctx: CallContext, chunk: Chunk) -> Chunk | None:
        return None

    def __repr__(self) -> str:
        return f"<plugin {self.spec.name}>"


def _settings_error(plugin: str, model: type[BaseModel], exc: ValidationError) -> ConfigurationError:
    problems = []
    for err in exc.errors():
        key = ".".join(str(p) for p in err["loc"])
        hint = ""
        if err["type"] == "extra_forbidden":
            close = difflib.get_close_matches(key, list(model.model_fields), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else f" (known: {', '.join(model.model_fields)})"
        problems.append(f"{key}: {err['msg']}{hint}")
    return ConfigurationError(f"plugin {plugin!r}: " + "; ".join(problems))


class PluginRunner:
    """Runs the hooks of `plugins`, in order, for one call at a time.

    Every plugin that raises (or returns the wrong type) is reported, then its error goes on to
    the caller as before:
    - `emit(name, **fields)` (an actor's `emit`, e.g. the router's) gets a "plugin.failed" event
      for the call: request_id, driver, model, error_type, error_message, data plugin and hook;
    - `on_failure(plugin_name, hook, error)` is told too, for an owner that wants the error itself.
    Neither may change the caller's answer: what they raise is ignored.
    """

    def __init__(
        self,
        plugins: Sequence[Plugin] = (),
        *,
        on_failure: Callable[[str, str, NovaError], None] | None = None,
        emit: Callable[..., None] | None = None,
    ) -> None:
        self.plugins = tuple(plugins)
        self._on_failure = on_failure
        self._emit = emit

    def __bool__(self) -> bool:
        return bool(self.plugins)

    def active(self, driver: str) -> list[Plugin]:
        return [p for p in self.plugins if p.spec.applies_to(driver)]

    def before_request(self, ctx: CallContext, request: Request) -> Request | Response:
        """The request to send, or a `Response` from the first plugin that answered the call."""
        for plugin in self.active(ctx.driver):
            out = self._call(
                plugin, "before_request", ctx, (ChatRequest, CompletionRequest, Response), request
            )
            if isinstance(out, Response):
                return out
            request = out if out is not None else request
        return request

    def after_response(self, ctx: CallContext, request: Request, response: Response) -> Response:
        for plugin in self.active(ctx.driver):
            response = self._call(plugin, "after_response", ctx, (Response,), request, response) or response
        return response

    def on_error(self, ctx: CallContext, request: Request, error: NovaError) -> Response | None:
        """A `Response` from the first plugin that recovers from `error`, else None."""
        for plugin in self.active(ctx.driver):
            out = self._call(plugin, "on_error", ctx, (Response,), request, error)
            if isinstance(out, Response):
                return out
        return None

    def on_chunk(self, ctx: CallContext, chunk: Chunk) -> Chunk:
        for plugin in self.active(ctx.driver):
            chunk = self._call(plugin, "on_chunk", ctx, (Chunk,), chunk) or chunk
        return chunk

    def _call(
        self, plugin: Plugin, hook: str, ctx: CallContext, allowed: tuple[type, ...], *args: Any
    ) -> Any:
        name = plugin.spec.name
        try:
            out = getattr(plugin, hook)(ctx, *args)
        except NovaError as exc:  # a typed answer on purpose: keep it, say who gave it
            exc.details.setdefault("plugin", name)
            exc.details.setdefault("hook", hook)
            self._failed(ctx, name, hook, exc)
            raise
        except Exception as exc:
            error = PluginError(
                f"plugin {name!r} failed in {hook}: {type(exc).__name__}: {exc}",
                driver=ctx.driver or None,
                model=ctx.model or None,
                request_id=ctx.request_id,
                plugin=name,
                hook=hook,
            )
            self._failed(ctx, name, hook, error)
            raise error from exc
        if out is not None and not isinstance(out, allowed):
            error = PluginError(
                f"plugin {name!r} returned {type(out).__name__} from {hook}; expected "
                + " or ".join(t.__name__ for t in allowed)
                + " or None",
                driver=ctx.driver or None,
                model=ctx.model or None,
                request_id=ctx.request_id,
                plugin=name,
                hook=hook,
            )
            self._failed(ctx, name, hook, error)
            raise error
        return out

    def _failed(self, ctx: CallContext, name: str, hook: str, error: NovaError) -> None:
        if self._on_failure is not None:
            try:
                self._on_failure(name, hook, error)
            except Exception:  # an event listener problem must not change the caller's answer
                pass
        if self._emit is not None:
            try:
                self._emit(
                    "plugin.failed",
                    request_id=ctx.request_id,
                    driver=ctx.driver or None,
                    model=ctx.model or None,
                    error_type=type(error).__name__,
                    error_message=error.message,  # NovaError messages are redacted
                    data={"plugin": name, "hook": hook},
                )
            except Exception:  # same: reporting must not change the caller's answer
                pass


# -- loading --------------------------------------------------------------------------------------


def load_plugins(entries: Iterable[BaseModel | Mapping[str, Any] | Plugin]) -> list[Plugin]:
    """Plugins from config entries (`{"use": ..., "drivers": [...], **options}`) or instances."""
    plugins = []
    for i, entry in enumerate(entries):
        if isinstance(entry, Plugin):
            plugins.append(entry)
            continue
        if isinstance(entry, BaseModel):  # a validated `[[plugins]]` entry (nova.config.PluginConfig)
            entry = {"use": getattr(entry, "use", None), **getattr(entry, "options", {})}
        if not isinstance(entry, Mapping) or not isinstance(entry.get("use"), str):
            raise ConfigurationError(f"plugins[{i}] needs 'use' = \"module:attr\" or a plugin name")
        options = dict(entry)
        target = _resolve(options.pop("use"))
        if isinstance(target, Plugin):
            if options:
                raise ConfigurationError(
                    f"plugins[{i}]: {entry['use']!r} is a plugin instance; it takes no options"
                )
            plugins.append(target)
        elif isinstance(target, type) and issubclass(target, Plugin):
            plugins.append(target(**options))
        else:
            raise ConfigurationError(f"plugins[{i}]: {entry['use']!r} is not a nova.plugins.Plugin subclass")
    return plugins


def _resolve(use: str) -> Any:
    if ":" in use:
        return _import(use)
    if use in BUILTIN:
        return _import(BUILTIN[use])
    found = {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}
    if use in found:
        try:
            return found[use].load()
        except Exception as exc:
            raise ConfigurationError(
                f"plugin {use!r} (entry point {found[use].value}) failed to load: {exc}"
            ) from exc
    known = sorted({*BUILTIN, *found})
    close = difflib.get_close_matches(use, known, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else f"; known plugins: {', '.join(known)}"
    raise ConfigurationError(f"unknown plugin {use!r}{hint} (or give 'module:attr')")


def _import(spec: str) -> Any:
    module_name, _, attr = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigurationError(f"plugin {spec!r}: cannot import {module_name!r} ({exc})") from exc
    if not hasattr(module, attr):
        close = difflib.get_close_matches(attr, [n for n in dir(module) if not n.startswith("_")], n=1)
        hint = f"; did you mean {module_name}:{close[0]}?" if close else ""
        raise ConfigurationError(f"plugin {spec!r}: {module_name!r} has no attribute {attr!r}{hint}")
    return getattr(module, attr)
