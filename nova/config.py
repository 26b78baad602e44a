"""Loads and validates Nova's configuration file (config.toml).

The file mirrors the seed's `config :nova, :llm, driver:, driver_options:` and adds named
drivers, the pipeline's features, supervision and telemetry. `${VAR}` (or `${VAR:-default}`) is
replaced from the environment; `NOVA_CONFIG` or `--config` picks the file. Anything wrong — an
unknown key, a missing variable, a bad value, an unknown driver kind — fails at start with a
message naming the key and the file. Each section is parsed once into its typed settings
(`NovaConfig.cache` is a `CacheSettings`, …). `preflight` checks, before anything starts, what only
trying can tell (files that cannot be written, modules that do not import).
"""

from __future__ import annotations

import difflib
import inspect
import os
import re
import tomllib
import types
import typing
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from nova.cache.settings import CacheSettings
from nova.context.settings import ContextSettings
from nova.errors import ConfigurationError, UnknownDriverError
from nova.fallback.settings import FallbackSettings
from nova.ratelimit.settings import RateLimitSettings

__all__ = [
    "CacheSettings",
    "ClusterConfig",
    "ContextSettings",
    "DriverConfig",
    "FallbackSettings",
    "NovaConfig",
    "PluginConfig",
    "RateLimitSettings",
    "ServerConfig",
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
    timeout_s: float = Field(default=600.0, gt=0)  # a whole call, unless the call says otherwise


Capability = bool | int | float | str
_DRIVER_FIELDS = frozenset({"kind", "max_concurrency", "processes", "options", "requires"})


class DriverConfig(_Section):
    kind: str  # openai | anthropic | ollama | openai_compatible | test | an entry-point name
    max_concurrency: int = Field(default=1000, ge=1)  # calls in flight in each driver process
    processes: int = Field(default=1, ge=1, le=64)  # driver actors (processes) serving this driver
    options: dict[str, Any] = Field(default_factory=dict)  # passed to the driver class
    # Capabilities a node must have to run this driver (`[cluster] capabilities`), e.g. {gpu = true}
    requires: dict[str, Capability] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _flat_options(cls, value: Any) -> Any:
        # `[drivers.x] kind = "openai"  model = "gpt-4o"`: anything not a field is a driver option.
        if isinstance(value, dict):
            fields = _DRIVER_FIELDS
            options = {k: v for k, v in value.items() if k not in fields}
            value = {k: v for k, v in value.items() if k in fields}
            value["options"] = {**options, **value.get("options", {})}
            if isinstance(value["options"].get("api_key"), str):  # masked in every repr of the config
                from nova.secrets import Secret

                value["options"]["api_key"] = Secret(value["options"]["api_key"])
        return value


# Capability names Thespian gives a meaning of its own; a node's table may not set them.
_THESPIAN_CAPABILITIES = ("Admin Port", "Convention Address.IPv4", "Outbound Only", "Admin Routing")


class ClusterConfig(_Section):
    """`[cluster]`: several nodes as one system. Without `leader`, one node (nothing changes)."""

    leader: str | None = None  # "host:port": the leader's bind address and admin port
    bind: str = "127.0.0.1"  # the interface this node listens on
    peers: list[str] = Field(default_factory=list)  # addresses (IPs or names) other nodes connect from
    capabilities: dict[str, Capability] = Field(default_factory=dict)
    on_leader_loss: Literal["refuse", "local"] = "refuse"
    lease_s: float = Field(default=10.0, gt=0, le=60, allow_inf_nan=False)  # a lease's lifetime

    @field_validator("leader")
    @classmethod
    def _leader(cls, value: str | None) -> str | None:
        if value is not None:
            leader_address(value)  # raises on a malformed value
        return value

    @field_validator("capabilities")
    @classmethod
    def _capabilities(cls, value: dict[str, Capability]) -> dict[str, Capability]:
        for name in value:
            if name in _THESPIAN_CAPABILITIES or name.startswith("Nova "):
                raise ValueError(f"capability {name!r} is reserved (Thespian's or Nova's own)")
        return value

    @property
    def enabled(self) -> bool:
        return self.leader is not None

    def can_run(self, driver: DriverConfig) -> bool:
        """This node has every capability the driver requires."""
        return all(self.capabilities.get(k) == v for k, v in driver.requires.items())


def leader_address(value: str) -> tuple[str, int]:
    """ "10.0.0.1:1955" -> ("10.0.0.1", 1955); a bad value raises ValueError naming it."""
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError(f"leader {value!r} must be 'host:port' (the leader's admin port)")
    return host.strip("[]"), int(port)


class SystemConfig(_Section):
    name: str = Field(default="nova", pattern=r"^[A-Za-z0-9_.-]{1,64}$")  # part of the system's identity
    host: str = "127.0.0.1"  # every actor socket binds here
    admin_port: int = Field(default=19555, ge=1, le=65535)
    log_file: str | None = None  # None: nova.log beside the state files
    log_level: str = "INFO"  # a `logging` level name, in any case
    state_dir: str = ".nova"  # SQLite files and logs of `nova run`
    lane_dir: str | None = None  # the lanes' sockets; None: a private directory made at start
    drain_s: float = Field(default=10.0, gt=0, allow_inf_nan=False)  # SIGTERM waits this long for calls

    @field_validator("log_level")
    @classmethod
    def _known_level(cls, value: str) -> str:
        names = ("CRITICAL", "ERROR", "WARNING", "INFO", "DEBUG", "NOTSET")
        if value.upper() not in names:
            raise ValueError(f"{value!r} is not a log level (one of {', '.join(names)})")
        return value.upper()


class ServerConfig(_Section):
    """The OpenAI-compatible HTTP front door (`nova run --http HOST:PORT` switches it on)."""

    enabled: bool = False
    host: str = "127.0.0.1"  # loopback unless asked otherwise
    port: int = Field(default=4000, ge=1, le=65535)
    api_keys: tuple[Any, ...] = ()  # bearer keys callers must show (as Secrets); none: no check
    max_body_bytes: int = Field(default=4 * 1024 * 1024, ge=1024)  # larger bodies get a 413

    @field_validator("api_keys", mode="before")
    @classmethod
    def _secret_keys(cls, value: Any) -> Any:
        from nova.secrets import Secret

        if isinstance(value, str):
            value = [value]
        if not isinstance(value, (list, tuple)):
            raise ValueError("must be a list of keys")
        keys = []
        for key in value:
            if isinstance(key, Secret):
                key = key.reveal()
            if not isinstance(key, str) or not key.strip():
                raise ValueError("every key must be a non-empty string")
            keys.append(Secret(key))
        return tuple(keys)


class SupervisionConfig(_Section):
    max_restarts: int = Field(default=3, ge=0)
    max_seconds: float = Field(default=5.0, gt=0)
    backoff_initial_s: float = Field(default=0.01, ge=0)
    backoff_max_s: float = Field(default=1.0, ge=0)
    heart_interval_s: float = Field(default=1.0, gt=0)  # how often `nova run` pings the root
    heart_misses: int = Field(default=3, ge=1)  # missed pings before the tree is declared dead


Exporter = Literal["otlp", "console", "none"]


class TelemetryConfig(_Section):
    metrics: bool = True  # Nova's own metrics (`nova metrics`)
    # Where OpenTelemetry spans and metrics go; None: the standard OTEL_* variables decide, else
    # "none". Anything but "none" has Nova set up the SDK in the event bus process.
    exporter: Exporter | None = None
    otel: bool = False  # spans and metrics to the process's global providers (someone else's SDK setup)
    otel_setup: str | None = None  # "module:function" run in the event bus process to set up the SDK

    @field_validator("otel_setup")
    @classmethod
    def _module_function(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"[\w.]+:[\w.]+", value):
            raise ValueError(f"{value!r} must look like 'module:function'")
        return value


class OTelExport(_Section):
    """What Nova exports, resolved from `[telemetry] exporter` and the OTEL_* variables."""

    traces: Exporter = "none"
    metrics: Exporter = "none"
    traces_protocol: Literal["http/protobuf", "grpc"] = "http/protobuf"
    metrics_protocol: Literal["http/protobuf", "grpc"] = "http/protobuf"
    # Where each choice came from: "telemetry.exporter" or the variable's name.
    traces_from: str = "telemetry.exporter"
    metrics_from: str = "telemetry.exporter"

    @property
    def enabled(self) -> bool:
        return self.traces != "none" or self.metrics != "none"


class PluginConfig(BaseModel):
    """One `[[plugins]]` entry: `use`, where it runs, and the plugin's own options (the rest,
    checked by the plugin's `Settings` when it loads)."""

    model_config = ConfigDict(frozen=True, extra="allow")

    use: str = Field(min_length=1)  # "module:attr", an entry-point name or a built-in name
    drivers: list[str] | None = None  # only for these drivers (None: every driver)
    disabled_drivers: list[str] = Field(default_factory=list)  # never for these

    @property
    def options(self) -> dict[str, Any]:
        """The plugin's own options: every key but `use`."""
        out: dict[str, Any] = {"drivers": self.drivers, "disabled_drivers": self.disabled_drivers}
        if self.drivers is None:
            del out["drivers"]
        if not self.disabled_drivers:
            del out["disabled_drivers"]
        return {**out, **(self.model_extra or {})}


class NovaConfig(_Section):
    llm: LLMConfig = LLMConfig()
    drivers: dict[str, DriverConfig] = Field(
        default_factory=lambda: {"default": DriverConfig(kind="test", options={"model": "test-model"})}
    )
    system: SystemConfig = SystemConfig()
    supervision: SupervisionConfig = SupervisionConfig()
    telemetry: TelemetryConfig = TelemetryConfig()
    cluster: ClusterConfig = ClusterConfig()
    server: ServerConfig = ServerConfig()
    cache: CacheSettings = CacheSettings()
    ratelimit: RateLimitSettings = RateLimitSettings()
    fallback: FallbackSettings = FallbackSettings()
    context: ContextSettings = ContextSettings()
    plugins: list[PluginConfig] = Field(default_factory=list)
    prices: dict[str, dict[str, float]] = Field(default_factory=dict)
    source: str = Field(default="<defaults>", exclude=True)
    # Drivers added from the standard environment -> the variables they came from.
    env_drivers: dict[str, tuple[str, ...]] = Field(default_factory=dict, exclude=True)
    otel_export: OTelExport = Field(default=OTelExport(), exclude=True)

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
        raw = tomllib.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigurationError(f"{file}: no such configuration file") from None
    except UnicodeDecodeError as exc:
        raise ConfigurationError(f"{file}: not a UTF-8 text file (byte {exc.start})") from None
    except OSError as exc:  # a directory, a file without read permission
        raise ConfigurationError(f"{file}: cannot be read: {exc.strerror or exc}") from None
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
    otel_export, export_problems = _otel_export(data.get("telemetry"), env)
    problems += export_problems
    config: NovaConfig | None = None
    unknown_driver = False
    try:
        data = _with_model_strings(data)
    except ConfigurationError as exc:
        problems.append(exc.message)
        unknown_driver = isinstance(exc, UnknownDriverError)
    try:
        config = NovaConfig.model_validate(
            {**data, "source": source, "env_drivers": env_drivers, "otel_export": otel_export}
        )
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
        dotted = ".".join([section, *loc] if section else loc)
        key = re.sub(r"\.(\d+)(?=\.|$)", r"[\1]", dotted)  # plugins.0.use -> plugins[0].use
        if err["type"] == "extra_forbidden":
            out.append((dotted, f"unknown key '{key}'{_hint(loc[-1], _keys_at(model, loc[:-1]))}"))
        else:
            out.append((dotted, f"key '{key}': {err['msg'].removeprefix('Value error, ')}"))
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


def _driver_problems(data: dict[str, Any]) -> list[str]:
    """Each driver's kind, and its options against what that driver accepts."""
    from nova.drivers import driver_class

    drivers = data.get("drivers", {})
    given: list[tuple[str, Any, Any]] = []
    if isinstance(drivers, dict):
        for name, raw in drivers.items():
            if isinstance(raw, dict) and isinstance(raw.get("kind"), str):
                options = {k: v for k, v in raw.items() if k not in _DRIVER_FIELDS}
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
    if not config.cluster.enabled:  # one node: it must be able to run every driver itself
        for name, driver in config.drivers.items():
            if not config.cluster.can_run(driver):
                problems.append(
                    f"key 'drivers.{name}.requires': this node lacks {driver.requires!r}"
                    " (cluster.capabilities) and there is no cluster to place it on"
                )
    summary_driver = config.context.summary_driver
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
    telemetry = config.telemetry
    if telemetry.otel_setup and telemetry.exporter not in (None, "none"):
        problems.append(
            f"key 'telemetry.otel_setup': with exporter = {telemetry.exporter!r} Nova sets up the"
            " OpenTelemetry SDK itself; keep one of the two"
        )
    if config.cache.backend == "redis":
        problems += _redis_url_problems(config.cache.redis_url)
    for name, driver in config.drivers.items():
        seed_style = name == config.llm.driver and driver.options == config.llm.driver_options != {}
        problems += _driver_value_problems("llm.driver_options" if seed_style else f"drivers.{name}", driver)
    problems += _limit_problems(config)
    return problems


def _limit_problems(config: NovaConfig) -> list[str]:
    """A rate limit keyed by a driver no call can have would never apply: a typo, said at once."""
    from nova.drivers import available_drivers

    names = sorted(config.drivers)
    problems = []
    for key in config.ratelimit.limits:
        driver = key.partition("/")[0]
        if driver in config.drivers or driver in available_drivers():
            continue
        close = difflib.get_close_matches(driver, names + available_drivers(), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        problems.append(
            f"key 'ratelimit.limits.{key}': {driver!r} is neither a driver named in [drivers]"
            f" ({', '.join(names) or 'none'}) nor a driver kind, so this limit would never apply{hint}"
        )
    return problems


def _redis_url_problems(url: str) -> list[str]:
    scheme, _, rest = url.partition("://")
    if scheme not in ("redis", "rediss", "unix") or not rest:
        return ["key 'cache.redis_url': not a Redis URL (redis://HOST:PORT/DB, rediss://… or unix://PATH)"]
    try:
        from redis.connection import parse_url
    except ImportError:
        return []  # the missing package is reported when Nova starts
    try:
        parse_url(url)  # type: ignore[no-untyped-call]
    except ValueError as exc:  # names the part that is wrong, never the password
        return [f"key 'cache.redis_url': not a Redis URL: {exc}"]
    return []


# Options of the built-in drivers that are seconds to wait: None (no limit) or more than 0.
_DRIVER_TIMEOUTS = ("timeout", "connect_timeout", "read_timeout", "pool_timeout", "stream_idle_timeout")


def _driver_value_problems(key: str, driver: DriverConfig) -> list[str]:
    """What would make every call of a built-in driver fail: a base URL that is not http(s), or a
    timeout of zero or less."""
    from urllib.parse import urlsplit

    from nova.drivers import driver_class

    try:
        if not driver_class(driver.kind).__module__.startswith("nova."):
            return []  # a third-party driver's options are its own
    except ConfigurationError:
        return []  # reported as the kind
    from nova.secrets import Secret

    problems = []
    for option in ("api_key", "base_url", "model"):
        value = driver.options.get(option)
        if value is not None and not isinstance(value, str | Secret):
            problems.append(f"key '{key}.{option}': must be a string (got {type(value).__name__})")
    base_url = driver.options.get("base_url")
    if isinstance(base_url, str):
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            problems.append(f"key '{key}.base_url': {base_url!r} is not an http:// or https:// URL")
    for option in _DRIVER_TIMEOUTS:
        value = driver.options.get(option)
        if isinstance(value, int | float) and not isinstance(value, bool) and not value > 0:
            problems.append(
                f"key '{key}.{option}': {value} seconds would time out every call (give more than 0)"
            )
    return problems


_EXPORTERS = ("otlp", "console", "none")
_PROTOCOLS = ("http/protobuf", "grpc")


def _otel_export(telemetry: Any, env: Any) -> tuple[OTelExport, list[str]]:
    """Each signal's exporter: `[telemetry] exporter` when given, else OTEL_{SIGNAL}_EXPORTER, else
    "otlp" when an OTLP endpoint variable is set, else "none"; and each signal's OTLP protocol."""
    configured = telemetry.get("exporter") if isinstance(telemetry, dict) else None
    if configured is None and isinstance(telemetry, dict) and telemetry.get("otel_setup"):
        configured = "none"  # the user's own setup owns the SDK and reads the variables itself
    problems: list[str] = []
    fields: dict[str, str] = {}
    for signal in ("traces", "metrics"):
        upper = signal.upper()
        exporter, origin = "none", "telemetry.exporter"
        if isinstance(configured, str) and configured in _EXPORTERS:
            exporter = configured
        elif configured is None and env.get(f"OTEL_{upper}_EXPORTER", "").strip():
            origin = f"OTEL_{upper}_EXPORTER"
            exporter = env[origin].strip().lower()
            if exporter not in _EXPORTERS:
                problems.append(
                    f"environment variable {origin}: {env[origin]!r} is not an exporter Nova sets up"
                    f" (one of {', '.join(_EXPORTERS)}; for anything else use 'telemetry.otel_setup')"
                )
                exporter = "none"
        elif configured is None:
            for variable in ("OTEL_EXPORTER_OTLP_ENDPOINT", f"OTEL_EXPORTER_OTLP_{upper}_ENDPOINT"):
                if env.get(variable, "").strip():
                    exporter, origin = "otlp", variable
        protocol_variable = next(
            (
                v
                for v in (f"OTEL_EXPORTER_OTLP_{upper}_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL")
                if env.get(v, "").strip()
            ),
            None,
        )
        protocol = env[protocol_variable].strip() if protocol_variable else "http/protobuf"
        if protocol not in _PROTOCOLS:
            if exporter == "otlp":
                problems.append(
                    f"environment variable {protocol_variable}: {protocol!r} is not an OTLP protocol"
                    f" Nova's exporter speaks (one of {', '.join(_PROTOCOLS)})"
                )
            protocol = "http/protobuf"
        fields.update({signal: exporter, f"{signal}_from": origin, f"{signal}_protocol": protocol})
    return OTelExport.model_validate(fields), problems


def preflight(config: NovaConfig, *, lane_names: Iterable[str] = ()) -> None:
    """What only trying can tell, checked before anything starts (`NovaSystem.start`, so `nova
    run` and the embedded system, and `nova config check`): that the files and directories Nova
    writes can be written, that what the configuration names can be imported and built, and that
    the host can be bound. Without it each of these validates and then leaves an actor dead at
    start, failing every call. Creates nothing; one ConfigurationError lists every problem, each
    naming the file and the key. `lane_names`: the lanes whose sockets go in `system.lane_dir`
    (the runtime knows them), checked against the length a socket path may have."""
    problems = [
        *_path_problems(config, list(lane_names)),
        *_host_problems(config.system.host),
        *_loading_problems(config),
    ]
    if problems:
        raise ConfigurationError("\n".join(f"{config.source}: {p}" for p in problems))


def _unwritable(path: Path, *, directory: bool) -> str | None:
    """Why Nova could not create or write `path` (a file, or a directory to put files in), else None."""
    if path.exists():
        if directory != path.is_dir():
            return f"{str(path)!r} is {'not ' if directory else ''}a directory"
        return (
            None
            if os.access(path, os.W_OK | (os.X_OK if directory else 0))
            else f"{str(path)!r} is not writable"
        )
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        return f"{str(parent)!r} is not a directory, so {str(path)!r} cannot be created"
    if not os.access(parent, os.W_OK | os.X_OK):
        return f"{str(path)!r} cannot be created: {str(parent)!r} is not writable"
    return None


def _under(base: str, path: str) -> Path:
    """`path` as the stores open it: `~` expanded, a relative one under `base`."""
    resolved = Path(path).expanduser()
    return resolved if resolved.is_absolute() else Path(base).expanduser() / resolved


# The longest path a Unix socket can have (sun_path is 108 bytes on Linux, with its NUL).
_SOCKET_PATH_MAX = 107


def _path_problems(config: NovaConfig, lane_names: list[str]) -> list[str]:
    system = config.system
    checks: list[tuple[str, Path, bool]] = [("system.state_dir", Path(system.state_dir).expanduser(), True)]
    log_file = Path(system.log_file).expanduser() if system.log_file else Path(system.state_dir) / "nova.log"
    checks.append(("system.log_file" if system.log_file else "system.state_dir", log_file, False))
    if system.lane_dir is not None:
        checks.append(("system.lane_dir", Path(system.lane_dir), True))
    if config.cache.enabled and config.cache.backend == "sqlite" and config.cache.path != ":memory:":
        checks.append(("cache.path", _under(system.state_dir, config.cache.path), False))
    if config.context.store == "sqlite" and config.context.path != ":memory:":
        checks.append(("context.path", _under(system.state_dir, config.context.path), False))
    problems, keys = [], set()
    for key, path, directory in checks:
        problem = _unwritable(path, directory=directory)
        if problem and key not in keys:  # once per key: the log file in a bad state_dir is that same problem
            keys.add(key)
            problems.append(f"key '{key}': {problem}")
    if system.lane_dir is not None and lane_names:
        longest = max(len(os.fsencode(os.path.join(system.lane_dir, f"{n}.sock"))) for n in lane_names)
        if longest > _SOCKET_PATH_MAX:
            problems.append(
                f"key 'system.lane_dir': too long for Unix sockets ({longest} bytes with the lane"
                f" names, at most {_SOCKET_PATH_MAX}): pick a shorter directory"
            )
    return problems


def _host_problems(host: str) -> list[str]:
    import socket

    try:
        infos = socket.getaddrinfo(host, 0, type=socket.SOCK_STREAM)
    except OSError as exc:
        return [f"key 'system.host': {host!r} does not resolve ({exc.strerror or exc})"]
    family, _, _, _, address = infos[0]
    try:
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.bind(address)
    except OSError as exc:
        return [
            f"key 'system.host': cannot listen on {host!r} ({exc.strerror or exc}):"
            " not an address of this machine?"
        ]
    return []


def _loading_problems(config: NovaConfig) -> list[str]:
    """Drivers built, plugins and counters imported, the telemetry setup found: as the actors will."""
    from nova.drivers import create_driver
    from nova.plugins import load_plugins
    from nova.tokens import load_counter

    problems = []
    for name, driver in config.drivers.items():
        try:
            create_driver(driver.kind, **driver.options)
        except ConfigurationError as exc:
            problems.append(f"key 'drivers.{name}': {exc.message}")
    for i, entry in enumerate(config.plugins):
        try:
            load_plugins([entry])
        except ConfigurationError as exc:
            problems.append(f"key 'plugins[{i}]': {exc.message.removeprefix('plugins[0]: ')}")
    if config.context.token_counter is not None:
        try:
            load_counter(config.context.token_counter)
        except ConfigurationError as exc:
            problems.append(f"key 'context.token_counter': {exc.message}")
    if config.cache.enabled and config.cache.backend == "redis" and not _importable("redis"):
        problems.append(
            "key 'cache.backend': the redis backend needs the 'redis' package: pip install 'nova-llm[redis]'"
        )
    problems += _telemetry_problems(config)
    return problems


def _importable(module: str) -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a parent package is missing, or the module is blocked
        return False


# (OTLP protocol) -> (the exporter's module, the package, how to install it)
_OTLP_PACKAGES = {
    "http/protobuf": (
        "opentelemetry.exporter.otlp.proto.http",
        "opentelemetry-exporter-otlp-proto-http",
        "pip install 'nova-llm[otlp]'",
    ),
    "grpc": (
        "opentelemetry.exporter.otlp.proto.grpc",
        "opentelemetry-exporter-otlp-proto-grpc",
        "pip install opentelemetry-exporter-otlp-proto-grpc",
    ),
}


def _telemetry_problems(config: NovaConfig) -> list[str]:
    problems = []
    setup = config.telemetry.otel_setup
    if setup:
        import importlib

        module_name, _, attr = setup.partition(":")
        try:
            target: Any = importlib.import_module(module_name)
            for part in attr.split("."):
                target = getattr(target, part)
        except ImportError as exc:
            problems.append(f"key 'telemetry.otel_setup': cannot import {module_name!r} ({exc})")
        except AttributeError:
            problems.append(f"key 'telemetry.otel_setup': {module_name!r} has no attribute {attr!r}")
        else:
            if not callable(target):
                problems.append(f"key 'telemetry.otel_setup': {setup!r} is not a function")
    export = config.otel_export
    reported = set()
    for exporter, protocol, origin in (
        (export.traces, export.traces_protocol, export.traces_from),
        (export.metrics, export.metrics_protocol, export.metrics_from),
    ):
        if exporter != "otlp" or protocol in reported:
            continue
        module, package, install = _OTLP_PACKAGES[protocol]
        if not _importable(module):
            reported.add(protocol)
            where = f"key '{origin}'" if origin.startswith("telemetry.") else f"environment variable {origin}"
            problems.append(f"{where}: the OTLP exporter ({protocol}) needs the package {package}: {install}")
    return problems
