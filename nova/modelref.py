"""Model strings: `"openai/gpt-4o-mini"` names a driver and a model at once.

The rule, the same for `model=`, `driver=`, fallback targets, `[llm] model` and the CLI's `-m`:

- Without `driver=`, a model string splits at its first `/`. The part before it is a configured
  driver name if one is called that; else a driver kind (`openai`, `anthropic`, `ollama`,
  `openai_compatible`, `test`, or an entry point), which means the driver named after the kind
  or else the one configured driver of that kind. Any other prefix is an error that lists the
  known ones, so a typo never reaches the default driver. Everything after the first `/` is the
  model, slashes included: `vllm/meta-llama/Llama-3.1-8B` is `meta-llama/Llama-3.1-8B` on `vllm`.
- A model string without `/` goes to the default driver, unchanged.
- With `driver=` (a configured name or a kind, as above) the model is the service's own name,
  unchanged: `driver="vllm", model="meta-llama/Llama-3.1-8B"` works. Only a leading `NAME/` that
  repeats the driver given is dropped (`driver="openai", model="openai/gpt-4o"`).
- A fallback target is `DRIVER/MODEL` or `DRIVER` alone (its driver's default model); its
  `DRIVER` resolves like a prefix.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from nova.errors import UnknownDriverError

__all__ = ["ModelRef", "driver_for", "resolve_model", "resolve_target"]

# The environment variables that configure a driver of each kind when config.toml names none.
ENV_HINT = {
    "openai": "OPENAI_API_KEY",
    "anthropic": "ANTHROPIC_API_KEY",
    "ollama": "OLLAMA_HOST",
}


@dataclass(frozen=True)
class ModelRef:
    driver: str  # a configured driver name
    model: str  # the model as its service names it; "" for the driver's default

    def __str__(self) -> str:
        return f"{self.driver}/{self.model}" if self.model else self.driver


def _kinds() -> list[str]:
    from nova.drivers import available_drivers

    return available_drivers()


def driver_for(
    name: str, drivers: Mapping[str, str], kinds: Callable[[], Sequence[str]] = _kinds
) -> str | None:
    """The configured driver that `name` means (`drivers`: configured name -> kind), or None when
    `name` is neither a configured name nor a known kind. A kind with no driver, or with several
    and none named after it, is an error that says what to do."""
    if name in drivers:
        return name
    if name not in kinds():
        return None
    of_kind = sorted(n for n, kind in drivers.items() if kind == name)
    if len(of_kind) == 1:
        return of_kind[0]
    if of_kind:
        raise UnknownDriverError(
            f"several drivers of kind {name!r} are configured ({', '.join(of_kind)}); "
            f"name one instead, e.g. '{of_kind[0]}/…'",
            driver=name,
        )
    env = f"set {ENV_HINT[name]} or " if name in ENV_HINT else ""
    raise UnknownDriverError(
        f"no driver of kind {name!r} is configured: {env}add [drivers.{name}] to the configuration "
        f"(configured: {', '.join(sorted(drivers)) or 'none'})",
        driver=name,
    )


def _unknown(
    prefix: str, text: str, drivers: Mapping[str, str], kinds: Sequence[str], what: str
) -> UnknownDriverError:
    names = sorted(drivers)
    known = sorted(set(names) | set(kinds))
    close = difflib.get_close_matches(prefix, known, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return UnknownDriverError(
        f"{what} {text!r}: {prefix!r} is neither a configured driver ({', '.join(names) or 'none'}) "
        f"nor a driver kind ({', '.join(kinds)}){hint} (a model name that contains '/' goes "
        "unchanged with driver=NAME, or as 'NAME/' followed by it)",
        driver=prefix,
    )


def resolve_model(
    model: str,
    drivers: Mapping[str, str],
    *,
    driver: str | None = None,
    default: str,
    kinds: Callable[[], Sequence[str]] = _kinds,
) -> ModelRef:
    """The driver and model of a call: `model` as given, `driver` the call's `driver=` (None: the
    model string decides, else `default`)."""
    if driver is not None:
        name = driver_for(driver, drivers, kinds)
        if name is None:
            known = ", ".join(sorted(drivers)) or "none"
            raise UnknownDriverError(
                f"no driver named {driver!r} is configured (configured: {known}; or a driver kind: "
                f"{', '.join(kinds())})",
                driver=driver,
            )
        for prefix in {driver, name}:
            if model.startswith(prefix + "/"):
                return ModelRef(name, model[len(prefix) + 1 :])
        return ModelRef(name, model)
    prefix, slash, rest = model.partition("/")
    if not slash:
        return ModelRef(default, model)
    name = driver_for(prefix, drivers, kinds)
    if name is None:
        raise _unknown(prefix, model, drivers, kinds(), "model")
    return ModelRef(name, rest)


def resolve_target(
    target: str, drivers: Mapping[str, str], kinds: Callable[[], Sequence[str]] = _kinds
) -> ModelRef:
    """A fallback target: `DRIVER/MODEL` or `DRIVER`."""
    prefix, _, rest = target.strip().partition("/")
    name = driver_for(prefix, drivers, kinds)
    if name is None:
        raise _unknown(prefix, target, drivers, kinds(), "fallback target")
    return ModelRef(name, rest)
