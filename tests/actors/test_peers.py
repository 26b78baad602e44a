"""Who is at the other end: the uid of a loopback TCP peer, and whether a Thespian address
listens in the process that started the system (both read from Linux's /proc)."""

from __future__ import annotations

import os
import socket
import sys
from collections.abc import Iterator
from typing import Any

import pytest
from thespian.actors import ActorAddress  # type: ignore[import-untyped]
from thespian.system.transport.IPBase import TCPv4ActorAddress  # type: ignore[import-untyped]

from nova.actors.base import STARTER_PID, from_starter
from nova.actors.patches import listening_inode, peer_uid

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads Linux's /proc")


def _has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.fixture(params=["127.0.0.1", "::1"])
def listener(request: pytest.FixtureRequest) -> Iterator[socket.socket]:
    if request.param == "::1" and not _has_ipv6_loopback():
        pytest.skip("no IPv6 loopback here")
    family = socket.AF_INET6 if ":" in request.param else socket.AF_INET
    with socket.socket(family) as sock:
        sock.bind((request.param, 0))
        sock.listen()
        yield sock


def test_the_peer_of_a_loopback_connection_is_this_user(listener: socket.socket) -> None:
    with socket.create_connection(listener.getsockname()[:2]):
        accepted, _ = listener.accept()
        with accepted:
            assert peer_uid(accepted) == os.getuid()


def test_the_socket_listening_on_a_port_is_found(listener: socket.socket) -> None:
    address = listener.getsockname()[:2]
    inode = listening_inode(address)
    assert inode is not None
    assert os.readlink(f"/proc/self/fd/{listener.fileno()}") == f"socket:[{inode}]"


def _address(sock: socket.socket) -> Any:
    host, port = sock.getsockname()[:2]
    return ActorAddress(TCPv4ActorAddress(host, port, external=True))


def test_an_address_listening_here_is_the_starters_only_when_this_process_started(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        monkeypatch.setenv(STARTER_PID, str(os.getpid()))
        assert from_starter(_address(sock))
        monkeypatch.setenv(STARTER_PID, str(os.getppid()))
        assert not from_starter(_address(sock))
        monkeypatch.delenv(STARTER_PID)
        assert not from_starter(_address(sock))
    assert not from_starter(None)
