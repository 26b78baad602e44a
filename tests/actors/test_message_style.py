"""Messages between Nova's own actors share one style: frozen plain dataclasses that pickle."""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import logging
import pickle
from typing import Any

import pytest
from thespian.actors import Actor

# Every module that defines messages sent between Nova's actors.
MESSAGE_MODULES = (
    "nova.actors.protocol",
    "nova.actors.base",
    "nova.actors.eventbus",
    "nova.actors.lane_actor",
    "nova.actors.gateway",
    "nova.actors.cluster",
    "nova.actors.relay",
    "nova.supervisors.tree",
)
NOT_MESSAGES = {
    "nova.actors.eventbus._Subscriber": "the bus's record of a subscriber, never sent",
    "nova.actors.eventbus._LogStream": "a text stream into the log for console exports, never sent",
    "nova.actors.gateway._Route": "one HTTP route's format, never sent",
    "nova.actors.gateway.GatewayServer": "the gateway's aiohttp server, never sent",
    "nova.actors.relay._Out": "the relay's record of an attempt it sent, never sent",
    "nova.actors.relay._In": "the relay's record of an attempt it serves, never sent",
    "nova.actors.relay._Peer": "the relay's record of another node, never sent",
}


def _message_classes() -> list[type]:
    found = []
    for name in MESSAGE_MODULES:
        module = importlib.import_module(name)
        for cls in vars(module).values():
            if not inspect.isclass(cls) or cls.__module__ != name:
                continue
            if issubclass(cls, (Actor, logging.Handler)) or f"{name}.{cls.__name__}" in NOT_MESSAGES:
                continue
            found.append(cls)
    return found


@pytest.mark.parametrize("cls", _message_classes(), ids=lambda c: f"{c.__module__}.{c.__name__}")
def test_a_message_is_a_frozen_dataclass_that_pickles(cls: type) -> None:
    assert dataclasses.is_dataclass(cls), f"{cls.__name__} is not a dataclass"
    params: Any = getattr(cls, "__dataclass_params__", None)
    assert params is not None and params.frozen, f"{cls.__name__} is not frozen"
    assert not hasattr(cls, "__slots__"), f"{cls.__name__} has slots, which pickle slower"
    sample = cls(
        **{
            f.name: None
            for f in dataclasses.fields(cls)
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        }
    )  # type: ignore[misc]
    assert pickle.loads(pickle.dumps(sample)) == sample
