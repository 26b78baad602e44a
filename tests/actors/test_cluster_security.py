"""A cluster node listens only on its `bind` interface, and closes a connection from an address
that is neither a configured peer nor its own before reading a byte of it.

Loopback has a whole /8 on Linux: the node binds 127.0.0.3, and a stranger connects from
127.0.0.2. What the stranger sends would create a marker file when unpickled, so the file's
absence shows that nothing was read.
"""

from __future__ import annotations

import contextlib
import pickle
import socket
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from thespian.system.transport.streamBuffer import toSendBuffer  # type: ignore[import-untyped]

from nova.supervisors.system import NovaSystem
from tests.integration_helpers import (
    Calls,
    chat_call,
    config_for,
    next_port,
    running,
    session_of,
    session_pids,
)

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="binds loopback aliases (Linux)"),
]

BIND = "127.0.0.3"
STRANGER = "127.0.0.2"


class _Marker:
    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (self.path, "w"))


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NovaSystem]:
    port = next_port()
    tmp = tmp_path_factory.mktemp("cluster-security")
    config = config_for(
        tmp, port=port, cluster={"leader": f"{BIND}:{port}", "bind": BIND, "peers": ["127.0.0.4"]}
    )
    with running(config) as started:
        yield started


def _from(source: str, address: tuple[str, int], frame: bytes) -> str:
    with socket.socket() as sock:
        sock.bind((source, 0))
        sock.settimeout(10.0)
        sock.connect(address)
        try:
            sock.sendall(frame)
            return "answered" if sock.recv(4096) else "closed"
        except (ConnectionResetError, BrokenPipeError):
            return "closed"
        except TimeoutError:
            return "open"


def _frame(marker: Path) -> bytes:
    return bytes(toSendBuffer((None, _Marker(str(marker))), pickle.dumps))


def test_every_socket_of_the_node_listens_on_its_bind_address_only(node: NovaSystem) -> None:
    sid = session_of(node.config.system.admin_port)
    assert sid is not None
    listening = set()
    for pid in session_pids(sid):
        with contextlib.suppress(psutil.Error):
            for conn in psutil.Process(pid).net_connections(kind="inet"):
                if conn.status == psutil.CONN_LISTEN:
                    listening.add(conn.laddr.ip)
    assert listening == {BIND}


def test_a_stranger_on_the_admin_port_is_cut_off_unread(node: NovaSystem, tmp_path: Path) -> None:
    marker = tmp_path / "admin-unpickled"
    assert _from(STRANGER, (BIND, node.config.system.admin_port), _frame(marker)) == "closed"
    assert not marker.exists()
    assert node.ping(timeout=10.0)  # and the node, which its own address may reach, serves on


def test_a_stranger_on_an_actors_port_is_cut_off_unread(node: NovaSystem, tmp_path: Path) -> None:
    marker = tmp_path / "router-unpickled"
    router = node.router.addressDetails.connectArgs[0]
    assert _from(STRANGER, router, _frame(marker)) == "closed"
    assert not marker.exists()
    assert Calls(node).ok(chat_call("still there?")).text
