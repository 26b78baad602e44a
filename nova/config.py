"""Loads and validates Nova's configuration file (config.toml).

The file mirrors the seed's `config :nova, :llm, driver:, driver_options:` and adds named
drivers, the pipeline's features, supervision and telemetry. `${VAR}` (or `${VAR:-default}`) is
replaced from the environment; `NOVA_CONFIG` or `--config` picks the file. Anything wrong — an
unknown key, a missing variable, a bad value, an unknown driver kind — fails at start with a
message naming the key and the file.
"""

from __future__ import annotations

import difflib
import os
import re
import tomllib
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from nova.errors import ConfigurationError, UnknownDriverError

__all__ = [
    "DriverConfig",
    "NovaConfig",
    "SupervisionConfig",
    "SystemConfig",
    "TelemetryConfig",
    "config_path",
    "load_config",
]

DEFAULT_FILE = Path(__file__).resolve().parent.parent / "config.toml"
_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class LLMConfig(_Section):
    """The seed's `config :nova, :llm`: which driver answers by default."""

    provider: str = "nova"
    driver: str = "default"  # a name from [drivers], or a driver kind
    driver_options: dict[str, Any] = Field(default_factory=dict)  # for a driver given by kind
    timeout_s: float = 600.0  # a whole call, unless the call says otherwise


class DriverConfig(_Section):
    kind: str  # openai | anthropic | ollama | openai_compatible | test | an entry-point name
    max_concurrency: int = Field(default=1000, ge=1)  # calls in flight in each driver process
    processes: int = Field(default=1, ge=1, le=64)  # driver actors (processes) serving this driver
    options: dict[str, Any] = Field(default_factory=dict)  # passed to the driver class

    @model_validator(mode="before")
    @classmethod
    def _flat_options(cls, value: Any) -> Any:
        # `[drivers.x] kind = "openai"  model = "gpt-4o"`: anything not a field is a driver option.
        if isinstance(value, dict):
            fields = {"kind", "max_concurrency", "processes", "options"}
            options = {k: v for k, v in value.items() if k not in fields}
            value = {k: v for k, v in value.items() if k in fields}
            value["options"] = {**options, **value.get("options", {})}
        return value


class SystemConfig(_Section):
    host: str = "127.0.0.1"  # every actor socket binds here
    admin_port: int = Field(default=19555, ge=1, le=65535)
    log_file: str | None = None  # None: nova.log beside the state files
    log_level: str = "INFO"
    state_dir: str = ".nova"  # SQLite files and logs of `nova run`
    lane_dir: str | None = None  # the lanes' sockets; None: a private directory made at start


class SupervisionConfig(_Section):
    max_restarts: int = 3
    max_seconds: float = 5.0
    backoff_initial_s: float = 0.01
    backoff_max_s: float = 1.0
    heart_interval_s: float = 1.0  # how often `nova run` pings the root
    heart_misses: int = 3  # missed pings before the tree is declared dead


class TelemetryConfig(_Section):
    metrics: bool = True
    otel: bool = False  # OpenTelemetry spans and metrics (the SDK setup is the user's)
    otel_setup: str | None = None  # "module:function" run in the event bus process to set up the SDK
    capture_content: bool = False


class NovaConfig(_Section):
    llm: LLMConfig = LLMConfig()
    drivers: dict[str, DriverConfig] = Field(
        default_factory=lambda: {"default": DriverConfig(kind="test", options={"model": "test-model"})}
    )
    system: SystemConfig = SystemConfig()
    supervision: SupervisionConfig = SupervisionConfig()
    telemetry: TelemetryConfig = TelemetryConfig()
    cache: dict[str, Any] = Field(default_factory=dict)
    ratelimit: dict[str, Any] = Field(default_factory=dict)
    fallback: dict[str, Any] = Field(default_factory=dict)
    context: dict[str, Any] = Field(default_factory=dict)
    plugins: list[dict[str, Any]] = Field(default_factory=list)
    prices: dict[str, dict[str, float]] = Field(default_factory=dict)
    source: str = Field(default="<defaults>", exclude=True)

    @model_validator(mode="after")
    def _default_driver_exists(self) -> NovaConfig:
        if self.llm.driver not in self.drivers:
            from nova.drivers import available_drivers, driver_class

            if self.llm.driver not in available_drivers():
                # Neither a configured name nor a kind: suggest from both.
                names = sorted(self.drivers)
                close = difflib.get_close_matches(self.llm.driver, names + available_drivers(), n=1)
                hint = f"; did you mean {close[0]!r}?" if close else ""
                raise UnknownDriverError(
                    f"key 'llm.driver': {self.llm.driver!r} is neither a driver named in [drivers] "
                    f"({', '.join(names) or 'none'}) nor a driver kind "
                    f"({', '.join(available_drivers())}){hint}"
                )
            driver_class(self.llm.driver)  # a plugin that fails to load raises here
            drivers = {
                **self.drivers,
                self.llm.driver: DriverConfig(kind=self.llm.driver, options=self.llm.driver_options),
            }
            object.__setattr__(self, "drivers", drivers)
        return self


def config_path(explicit: str | os.PathLike[str] | None = None) -> Path:
    if explicit:
        return Path(explicit)
    if os.environ.get("NOVA_CONFIG"):
        return Path(os.environ["NOVA_CONFIG"])
    if Path("config.toml").is_file():
        return Path("config.toml")
    return DEFAULT_FILE


def load_config(path: str | os.PathLike[str] | None = None, env: dict[str, str] | None = None) -> NovaConfig:
    file = config_path(path)
    try:
        raw = tomllib.loads(file.read_text())
    except FileNotFoundError:
        raise ConfigurationError(f"{file}: no such configuration file") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigurationError(f"{file}: not valid TOML: {exc}") from None
    return parse_config(raw, source=str(file), env=os.environ if env is None else env)


def parse_config(raw: dict[str, Any], *, source: str = "<dict>", env: Any = None) -> NovaConfig:
    data = _interpolate(raw, os.environ if env is None else env, source, "")
    try:
        config = NovaConfig.model_validate({**data, "source": source})
    except ValidationError as exc:
        raise ConfigurationError(_explain(exc, source)) from None
    except ConfigurationError as exc:  # raised by a validator: say which file
        raise type(exc)(f"{source}: {exc.message}") from None
    _validate_features(config)
    return config


def _interpolate(value: Any, env: Any, source: str, key: str) -> Any:
    if isinstance(value, dict):
        return {k: _interpolate(v, env, source, f"{key}.{k}" if key else k) for k, v in value.items()}
    if isinstance(value, list):
        return [_interpolate(v, env, source, f"{key}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, str):

        def replace(m: re.Match[str]) -> str:
            name, default = m.group(1), m.group(2)
            if name in env:
                return str(env[name])
            if default is not None:
                return default
            raise ConfigurationError(
                f"{source}: key '{key}' needs environment variable {name}, which is not set"
            )

        return _VAR.sub(replace, value)
    return value


def _explain(exc: ValidationError, source: str) -> str:
    lines = []
    for err in exc.errors():
        loc = [str(p) for p in err["loc"]]
        key = ".".join(loc)
        if err["type"] == "extra_forbidden":
            hint = _close_field(loc)
            lines.append(f"{source}: unknown key '{key}'{hint}")
        else:
            lines.append(f"{source}: key '{key}': {err['msg']}")
    return "; ".join(lines)


def _close_field(loc: list[str]) -> str:
    model: Any = NovaConfig
    for part in loc[:-1]:
        field = getattr(model, "model_fields", {}).get(part)
        annotation = getattr(field, "annotation", None) if field else None
        model = annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None
        if model is None:
            return ""
    close = difflib.get_close_matches(loc[-1], list(getattr(model, "model_fields", {})), n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _validate_features(config: NovaConfig) -> None:
    """Validate each feature section with its own settings model (their modules own them)."""
    from nova.cache.settings import CacheSettings
    from nova.context.settings import ContextSettings
    from nova.fallback.settings import FallbackSettings
    from nova.ratelimit.settings import RateLimitSettings

    sections: dict[str, type[BaseModel]] = {
        "cache": CacheSettings,
        "context": ContextSettings,
        "fallback": FallbackSettings,
        "ratelimit": RateLimitSettings,
    }
    for section, model in sections.items():
        try:
            model.model_validate(getattr(config, section))
        except ValidationError as exc:
            raise ConfigurationError(_explain_section(exc, config.source, section, model)) from None
    summary_driver = config.context.get("summary_driver")
    if summary_driver is not None and summary_driver not in config.drivers:
        raise ConfigurationError(
            f"{config.source}: key 'context.summary_driver': no driver named {summary_driver!r} is"
            f" configured (configured: {', '.join(sorted(config.drivers))})"
        )
    from nova.costs import price_overrides

    try:
        price_overrides(config.prices)
    except ConfigurationError as exc:
        raise ConfigurationError(f"{config.source}: {exc.message}") from None
    for name, driver in config.drivers.items():
        from nova.drivers import driver_class

        try:
            driver_class(driver.kind)
        except ConfigurationError as exc:
            raise ConfigurationError(f"{config.source}: key 'drivers.{name}.kind': {exc.message}") from None


def _explain_section(exc: ValidationError, source: str, section: str, model: type[BaseModel]) -> str:
    lines = []
    for err in exc.errors():
        key = ".".join([section, *(str(p) for p in err["loc"])])
        if err["type"] == "extra_forbidden":
            close = difflib.get_close_matches(str(err["loc"][-1]), list(model.model_fields), n=1)
            hint = f" (did you mean '{close[0]}'?)" if close and len(err["loc"]) == 1 else ""
            lines.append(f"{source}: unknown key '{key}'{hint}")
        else:
            lines.append(f"{source}: key '{key}': {err['msg']}")
    return "; ".join(lines)
