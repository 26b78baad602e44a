"""`[cluster]` and a driver's `requires`: checked at load, each problem naming its key."""

from __future__ import annotations

from typing import Any

import pytest

from nova.config import parse_config
from nova.errors import ConfigurationError


def _problem(raw: dict[str, Any]) -> str:
    with pytest.raises(ConfigurationError) as caught:
        parse_config(raw)
    return caught.value.message


def test_without_a_cluster_section_a_node_is_alone() -> None:
    config = parse_config({})
    assert not config.cluster.enabled and config.cluster.bind == "127.0.0.1"


def test_a_leader_must_be_host_and_port() -> None:
    assert "key 'cluster.leader'" in _problem({"cluster": {"leader": "10.0.0.1"}})
    assert "key 'cluster.leader'" in _problem({"cluster": {"leader": "10.0.0.1:99999"}})
    assert parse_config({"cluster": {"leader": "10.0.0.1:1955"}}).cluster.enabled


def test_capabilities_cannot_take_thespian_or_nova_names() -> None:
    message = _problem({"cluster": {"capabilities": {"Admin Port": 1}}})
    assert "key 'cluster.capabilities'" in message and "reserved" in message


def test_an_unknown_cluster_key_is_named_with_its_close_match() -> None:
    assert "'on_leader_loss'" in _problem({"cluster": {"on_leader_los": "local"}})
    assert "key 'cluster.on_leader_loss'" in _problem({"cluster": {"on_leader_loss": "ignore"}})


def test_a_single_node_must_be_able_to_run_every_driver() -> None:
    drivers = {"default": {"kind": "test", "requires": {"gpu": True}}}
    assert "key 'drivers.default.requires'" in _problem({"drivers": drivers})
    assert parse_config({"drivers": drivers, "cluster": {"capabilities": {"gpu": True}}})


def test_in_a_cluster_a_driver_may_need_what_this_node_lacks() -> None:
    drivers = {"default": {"kind": "test"}, "big": {"kind": "test", "requires": {"gpu": True}}}
    config = parse_config({"drivers": drivers, "cluster": {"leader": "10.0.0.1:1955"}})
    assert not config.cluster.can_run(config.drivers["big"])
    assert config.cluster.can_run(config.drivers["default"])
    assert "requires" not in config.drivers["big"].options  # a field, not a driver option
