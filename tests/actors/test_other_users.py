"""Only the owner's processes are heard: a process of another user that reaches one of Nova's TCP
ports (the admin's, an actor's) or a lane socket is cut off before anything it sent is read.

What it sends here would create a marker file when unpickled, so the file's absence shows that
nothing was read. The other user is "nobody" (uid 65534): the test switches to it in a forked
child, which needs root.
"""

from __future__ import annotations

import json
import os
import pickle
import socket
import stat
import struct
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from thespian.system.transport.streamBuffer import toSendBuffer  # type: ignore[import-untyped]

from nova.actors import patches
from nova.supervisors.system import NovaSystem
from tests.integration_helpers import Calls, chat_call, config_for, running

pytestmark = pytest.mark.integration

OTHER_UID = 65534  # "nobody"


class _Marker:
    """Unpickling this creates the file `path`."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (self.path, "w"))


@pytest.fixture(scope="module")
def system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NovaSystem]:
    if not sys.platform.startswith("linux"):
        pytest.skip("peer credentials are read from Linux's /proc/net/tcp and SO_PEERCRED")
    if os.geteuid() != 0:
        pytest.skip(
            f"needs root to run a process as another user (uid {OTHER_UID}); this runs as uid {os.geteuid()}"
        )
    with running(config_for(tmp_path_factory.mktemp("other-users"))) as started:
        yield started


def as_other_user(connect: Any, frame: bytes) -> str:
    """Connect with `connect()` from a child process running as OTHER_UID, send `frame`, and say
    what came back: "closed" (end of file or reset), "answered" (bytes), or "open" (nothing)."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: no pytest, no Thespian, just a socket
        outcome = "error"
        try:
            os.close(read)
            os.setgroups([])
            os.setgid(OTHER_UID)
            os.setuid(OTHER_UID)
            with connect() as sock:
                sock.settimeout(10.0)
                try:
                    sock.sendall(frame)
                    outcome = "answered" if sock.recv(4096) else "closed"
                except (ConnectionResetError, BrokenPipeError):
                    outcome = "closed"
                except TimeoutError:
                    outcome = "open"
        except BaseException as exc:  # report anything, never return into pytest
            outcome = f"error: {exc!r}"
        finally:
            os.write(write, json.dumps(outcome).encode())
            os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as pipe:
        outcome = json.loads(pipe.read() or b'"no answer"')
    os.waitpid(pid, 0)
    return str(outcome)


def _tcp(address: tuple[str, int]) -> Any:
    return lambda: socket.create_connection(address, timeout=10.0)


def _thespian_frame(marker: Path) -> bytes:
    return bytes(toSendBuffer((None, _Marker(str(marker))), pickle.dumps))


def test_starting_a_system_applies_the_owner_only_patch(system: NovaSystem) -> None:
    assert patches.applied().get("owner_only") == "4.0.1"


def test_another_user_on_the_admin_port_is_cut_off_unread(system: NovaSystem, tmp_path: Path) -> None:
    tmp_path.chmod(0o777)  # were the payload unpickled, the marker could be written
    marker = tmp_path / "admin-unpickled"
    admin = (system.config.system.host, system.config.system.admin_port)
    assert as_other_user(_tcp(admin), _thespian_frame(marker)) == "closed"
    assert not marker.exists()
    assert system.ping(timeout=10.0)  # and the admin serves on


def test_another_user_on_an_actors_port_is_cut_off_unread(system: NovaSystem, tmp_path: Path) -> None:
    tmp_path.chmod(0o777)
    marker = tmp_path / "router-unpickled"
    router = system.router.addressDetails.connectArgs[0]
    assert as_other_user(_tcp(router), _thespian_frame(marker)) == "closed"
    assert not marker.exists()
    response = Calls(system).ok(chat_call("still there?"))  # the router serves on
    assert response.text


def test_another_user_on_a_lane_is_cut_off_unread(system: NovaSystem, tmp_path: Path) -> None:
    tmp_path.chmod(0o777)
    marker = tmp_path / "lane-unpickled"
    lanes = Path(system.lanes)
    assert stat.S_IMODE(lanes.stat().st_mode) == 0o700
    # Loosened on purpose: the directory's mode is the first guard; this tests the second.
    lanes.chmod(0o711)
    (lanes / "router.sock").chmod(0o666)

    def connect() -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(str(lanes / "router.sock"))
        return sock

    hello = b"intruder"
    payload = pickle.dumps([_Marker(str(marker))])
    frame = struct.pack("!I", len(hello)) + hello + struct.pack("!I", len(payload)) + payload
    try:
        assert as_other_user(connect, frame) == "closed"
    finally:
        lanes.chmod(0o700)
        (lanes / "router.sock").chmod(0o600)
    assert not marker.exists()
    response = Calls(system).ok(chat_call("still there?"))
    assert response.text
