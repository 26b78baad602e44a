"""Loads and validates Nova's configuration file (config.toml).

The file mirrors the seed's `config :nova, :llm, driver:, driver_options:` and adds named
drivers, the pipeline's features, supervision and telemetry. `${VAR}` (or `${VAR:-default}`) is
replaced from the environment; `NOVA_CONFIG` or `--config` picks the file. Anything wrong — an
unknown key, a missing variable, a bad value, an unknown driver kind — fails at start with a
message naming the key and the file.
"""

from __future__ import annotations

import difflib
import inspect
import os
import re
import tomllib
import types
import typing
from pathlib import Path
from typing import Any, Literal

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

DEFAULT_FILE = Path(__file__).parent / "default.toml"  # ships in the package: the offline default
_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class LLMConfig(_Section):
    """The seed's `config :nova, :llm`: which driver answers by default."""

    provider: Literal["nova"] = "nova"  # the seed's key; Nova is the one provider
    driver: str = "default"  # a name from [drivers], or a driver kind
    model: str = ""  # the default model; without `driver`, a model string "driver/model" picks both
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
            if isinstance(value["options"].get("api_key"), str):  # masked in every repr of the config
                from nova.secrets import Secret

                value["options"]["api_key"] = Secret(value["options"]["api_key"])
        return value


class SystemConfig(_Section):
    host: str = "127.0.0.1"  # every actor socket binds here
    admin_port: int = Field(default=19555, ge=1, le=65535)
    log_file: str | None = None  # None: nova.log beside the state files
    log_level: str = "INFO"
    state_dir: str = ".nova"  # SQLite files and logs of `nova run`
    lane_dir: str | None = None  # the lanes' sockets; None: a private directory made at start
    drain_s: float = Field(default=10.0, gt=0, allow_inf_nan=False)  # SIGTERM waits this long for calls


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
    # Drivers added from the standard environment -> the variables they came from.
    env_drivers: dict[str, tuple[str, ...]] = Field(default_factory=dict, exclude=True)

    @model_validator(mode="after")
    def _default_driver_exists(self) -> NovaConfig:
        if self.llm.driver not in self.drivers:
            from nova.drivers import driver_class

            problem = _unknown_default_driver(self.llm.driver, list(self.drivers))
            if problem:
                raise UnknownDriverError(problem)
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
    """Validates everything and reports every problem at once, each naming the file and the key."""
    env = os.environ if env is None else env
    problems: list[str] = []
    missing: set[str] = set()
    data = _interpolate(raw, env, "", problems, missing)
    problems += _unsupported(data)
    data, env_drivers = _with_environment_drivers(data, env)
    config: NovaConfig | None = None
    unknown_driver = False
    try:
        data = _with_model_strings(data)
    except ConfigurationError as exc:
        problems.append(exc.message)
        unknown_driver = isinstance(exc, UnknownDriverError)
    try:
        config = NovaConfig.model_validate({**data, "source": source, "env_drivers": env_drivers})
    except ValidationError as exc:
        problems += [p for key, p in _explain(exc, NovaConfig) if key not in missing]
        llm = data.get("llm")
        drivers = data.get("drivers", {"default": {}})
        if isinstance(llm, dict) and isinstance(llm.get("driver"), str) and isinstance(drivers, dict):
            problem = _unknown_default_driver(llm["driver"], list(drivers))
            if problem:  # the model's own check runs only once every field is valid
                problems.append(problem)
                unknown_driver = True
    except ConfigurationError as exc:  # raised by the model's validator
        problems.append(exc.message)
        unknown_driver = isinstance(exc, UnknownDriverError)
    problems += _feature_problems(data, missing)
    problems += _driver_problems(data)
    if config is not None:
        problems += _cross_problems(config)
    if problems:
        only_driver = unknown_driver and len(problems) == 1
        cls = UnknownDriverError if only_driver else ConfigurationError
        raise cls("\n".join(f"{source}: {p}" for p in problems))
    assert config is not None
    return config


# Standard variable -> (driver kind and name, option); the first of each kind must be set.
_ENV_OPTIONS = {
    "openai": (("OPENAI_API_KEY", "api_key"), ("OPENAI_BASE_URL", "base_url")),
    "anthropic": (("ANTHROPIC_API_KEY", "api_key"), ("ANTHROPIC_BASE_URL", "base_url")),
    "ollama": (("OLLAMA_HOST", "base_url"),),
}


def _with_environment_drivers(
    data: dict[str, Any], env: Any
) -> tuple[dict[str, Any], dict[str, tuple[str, ...]]]:
    """Add a driver named after its kind for each standard variable set, unless one has that name."""
    from nova.secrets import Secret

    drivers = data.get("drivers", {"default": {"kind": "test", "model": "test-model"}})
    llm: dict[str, Any] = data["llm"] if isinstance(data.get("llm"), dict) else {}
    if not isinstance(drivers, dict):
        return data, {}  # validation names the problem
    added: dict[str, tuple[str, ...]] = {}
    for kind, variables in _ENV_OPTIONS.items():
        if kind in drivers or not env.get(variables[0][0]):
            continue
        options: dict[str, Any] = {"kind": kind}
        for variable, option in variables:
            if env.get(variable):
                value = env[variable]
                if option == "api_key":
                    value = Secret(value)
                elif kind == "ollama":
                    value = _ollama_url(value)
                options[option] = value
        if llm.get("driver") == kind and isinstance(llm.get("driver_options"), dict):
            options.update(llm["driver_options"])  # the seed's `driver_options` win over the environment
        drivers = {**drivers, kind: options}
        added[kind] = tuple(v for v, _ in variables if env.get(v))
    return ({**data, "drivers": drivers} if added else data), added


def _ollama_url(host: str) -> str:
    """OLLAMA_HOST as Ollama reads it: `host`, `host:port` or a URL; http and port 11434 by default."""
    url = host if "://" in host else f"http://{host}"
    scheme, _, rest = url.partition("://")
    authority = rest.split("/", 1)[0]
    if ":" not in authority.rsplit("]", 1)[-1]:
        url = f"{scheme}://{authority}:{443 if scheme == 'https' else 11434}{rest[len(authority) :]}"
    return url.rstrip("/")


def _with_model_strings(data: dict[str, Any]) -> dict[str, Any]:
    """`[llm] model` and fallback targets as model strings: resolve their driver names now, so
    that the rest of Nova sees configured names only."""
    from nova.modelref import resolve_model, resolve_target

    drivers = data.get("drivers", {"default": {"kind": "test"}})
    llm = data.get("llm")
    if not isinstance(drivers, dict) or (llm is not None and not isinstance(llm, dict)):
        return data
    kinds = {name: str(d.get("kind")) for name, d in drivers.items() if isinstance(d, dict)}
    llm = dict(llm or {})
    if isinstance(llm.get("driver"), str) and llm["driver"] not in kinds:
        kinds[llm["driver"]] = llm["driver"]  # a driver given by kind (the seed's style)
    try:
        if isinstance(llm.get("model"), str) and llm["model"]:
            key = "llm.model"
            ref = resolve_model(llm["model"], kinds, driver=llm.get("driver"), default="default")
            llm.update(driver=ref.driver, model=ref.model)
            data = {**data, "llm": llm}
        fallback = data.get("fallback")
        targets = fallback.get("targets") if isinstance(fallback, dict) else None
        if isinstance(targets, list):
            resolved: list[Any] = []
            for i, target in enumerate(targets):
                key = f"fallback.targets[{i}]"
                if isinstance(target, str) and target.strip():
                    target = str(resolve_target(target, kinds))
                elif isinstance(target, dict) and isinstance(target.get("driver"), str):
                    target = {**target, "driver": resolve_target(target["driver"], kinds).driver}
                resolved.append(target)
            data = {**data, "fallback": {**fallback, "targets": resolved}}  # type: ignore[dict-item]
    except ConfigurationError as exc:
        raise type(exc)(f"key '{key}': {exc.message}") from None
    return data


def _unknown_default_driver(name: str, configured: list[str]) -> str | None:
    from nova.drivers import available_drivers

    if name in configured or name in available_drivers():
        return None
    # Neither a configured name nor a kind: suggest from both.
    names = sorted(configured)
    close = difflib.get_close_matches(name, names + available_drivers(), n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return (
        f"key 'llm.driver': {name!r} is neither a driver named in [drivers] "
        f"({', '.join(names) or 'none'}) nor a driver kind ({', '.join(available_drivers())}){hint}"
    )


def _unsupported(data: dict[str, Any]) -> list[str]:
    """Keys of other designs that Nova would otherwise accept and never read (taken out of `data`)."""
    problems = []
    telemetry = data.get("telemetry")
    if isinstance(telemetry, dict) and "capture_content" in telemetry:
        del telemetry["capture_content"]
        problems.append(
            "key 'telemetry.capture_content' is not supported: prompt and answer text in events and"
            " spans is switched by the environment variable"
            " OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT (SPAN_ONLY, EVENT_ONLY or"
            " SPAN_AND_EVENT) of the process that runs Nova (`nova run`, or the program whose first"
            " call starts it); remove the key"
        )
    llm = data.get("llm")
    if isinstance(llm, dict) and "provider" in llm and llm["provider"] != "nova":
        problems.append(
            f"key 'llm.provider': {llm.pop('provider')!r} is not a provider; Nova is the only one"
            " (\"nova\", or leave the key out): pick the service with 'llm.driver'"
        )
    return problems


def _interpolate(value: Any, env: Any, key: str, problems: list[str], missing: set[str]) -> Any:
    if isinstance(value, dict):
        return {
            k: _interpolate(v, env, f"{key}.{k}" if key else k, problems, missing) for k, v in value.items()
        }
    if isinstance(value, list):
        return [_interpolate(v, env, f"{key}[{i}]", problems, missing) for i, v in enumerate(value)]
    if isinstance(value, str):

        def replace(m: re.Match[str]) -> str:
            name, default = m.group(1), m.group(2)
            if name in env:
                return str(env[name])
            if default is not None:
                return default
            problems.append(f"key '{key}' needs environment variable {name}, which is not set")
            missing.add(_dotted(key))  # its value is not checked: it has none yet
            return m.group(0)

        return _VAR.sub(replace, value)
    return value


def _dotted(key: str) -> str:
    return re.sub(r"\[(\d+)\]", r".\1", key)


def _explain(exc: ValidationError, model: Any, section: str | None = None) -> list[tuple[str, str]]:
    """(dotted key, the problem) for each error; unknown keys get the close match at their depth."""
    out = []
    for err in exc.errors():
        loc = [str(p) for p in err["loc"]]
        key = ".".join([section, *loc] if section else loc)
        if err["type"] == "extra_forbidden":
            out.append((key, f"unknown key '{key}'{_hint(loc[-1], _keys_at(model, loc[:-1]))}"))
        else:
            out.append((key, f"key '{key}': {err['msg'].removeprefix('Value error, ')}"))
    return out


def _hint(name: str, known: list[str]) -> str:
    close = difflib.get_close_matches(name, known, n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


class _Each:
    """The items of a dict or list of settings: a key or index in a location steps into one."""

    def __init__(self, item: Any) -> None:
        self.item = item


def _settings_type(annotation: Any) -> Any:
    """The settings model an annotation holds (through Optional, dict and list), else None."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        return next((t for t in map(_settings_type, args) if t is not None), None)
    if origin is dict and len(args) == 2:
        item = _settings_type(args[1])
        return _Each(item) if item is not None else None
    if origin in (list, tuple) and args:
        item = _settings_type(args[0])
        return _Each(item) if item is not None else None
    return None


def _keys_at(model: Any, path: list[str]) -> list[str]:
    """The keys the settings at `path` below `model` accept ([] when not a settings model)."""
    node = model
    for part in path:
        if isinstance(node, _Each):
            node = node.item
        elif isinstance(node, type) and issubclass(node, BaseModel):
            field = node.model_fields.get(part)
            node = _settings_type(field.annotation) if field is not None else None
        else:
            return []
    return list(node.model_fields) if isinstance(node, type) and issubclass(node, BaseModel) else []


def _feature_problems(data: dict[str, Any], missing: set[str]) -> list[str]:
    """Each feature section checked with its own settings model (their modules own them)."""
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
    problems = []
    for section, model in sections.items():
        value = data.get(section, {})
        if not isinstance(value, dict):
            continue  # reported by the top-level model
        try:
            model.model_validate(value)
        except ValidationError as exc:
            problems += [p for key, p in _explain(exc, model, section) if key not in missing]
    return problems


def _driver_problems(data: dict[str, Any]) -> list[str]:
    """Each driver's kind, and its options against what that driver accepts."""
    from nova.drivers import driver_class

    drivers = data.get("drivers", {})
    given: list[tuple[str, Any, Any]] = []
    if isinstance(drivers, dict):
        for name, raw in drivers.items():
            if isinstance(raw, dict) and isinstance(raw.get("kind"), str):
                fields = {"kind", "max_concurrency", "processes", "options"}
                options = {k: v for k, v in raw.items() if k not in fields}
                if isinstance(raw.get("options"), dict):
                    options.update(raw["options"])
                given.append((f"drivers.{name}", raw["kind"], options))
    llm = data.get("llm")
    if isinstance(llm, dict) and isinstance(llm.get("driver_options"), dict):
        name = llm.get("driver", "default")
        if isinstance(drivers, dict) and name not in drivers:
            given.append(("llm.driver_options", name, llm["driver_options"]))
    problems = []
    for key, kind, options in given:
        try:
            cls = driver_class(kind)
        except ConfigurationError as exc:
            if key.startswith("drivers."):
                problems.append(f"key '{key}.kind': {exc.message}")
            continue  # an unknown default driver is reported as 'llm.driver'
        accepted = _driver_options(cls)
        if accepted is None:
            continue
        for option in sorted(set(options) - accepted):
            problems.append(
                f"unknown key '{key}.{option}': not an option of the {kind} driver"
                f"{_hint(option, sorted(accepted))}"
            )
    return problems


def _driver_options(cls: type) -> set[str] | None:
    """The options a built-in driver class accepts: the named keyword parameters of every
    `__init__` on its way to `Driver` (each passes the rest on). None: a third-party driver,
    which may take anything."""
    from nova.drivers.base import Driver

    if not cls.__module__.startswith("nova."):
        return None
    names: set[str] = set()
    for klass in cls.__mro__:
        if not (isinstance(klass, type) and issubclass(klass, Driver)) or "__init__" not in vars(klass):
            continue
        for parameter in inspect.signature(vars(klass)["__init__"]).parameters.values():
            if parameter.kind in (parameter.KEYWORD_ONLY, parameter.POSITIONAL_OR_KEYWORD):
                names.add(parameter.name)
    names.discard("self")
    return names


def _cross_problems(config: NovaConfig) -> list[str]:
    """What only the whole configuration can tell: the names one section gives another."""
    problems = []
    summary_driver = config.context.get("summary_driver")
    if summary_driver is not None and summary_driver not in config.drivers:
        problems.append(
            f"key 'context.summary_driver': no driver named {summary_driver!r} is"
            f" configured (configured: {', '.join(sorted(config.drivers))})"
        )
    from nova.costs import price_overrides

    try:
        price_overrides(config.prices)
    except ConfigurationError as exc:
        problems.append(exc.message)
    return problems
