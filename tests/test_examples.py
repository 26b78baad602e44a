"""The example user actor (examples/user_actor.py) against a real running Nova, and as a script."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from examples.user_actor import Answer, Ask, UserActor
from nova.supervisors.system import NovaSystem, port_in_use
from tests.integration_helpers import config_for, next_port, router_of, running, wait_until

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NovaSystem]:
    config = config_for(
        tmp_path_factory.mktemp("examples"),
        drivers={
            "default": {"kind": "test"},
            "second": {"kind": "test", "model": "second-model"},
        },
    )
    with running(config) as system:
        yield system


def test_the_user_actor_chats_through_the_router(system: NovaSystem) -> None:
    me = system.asys.createActor(UserActor)
    answer = system.ask(me, Ask("hello from my actor"), 10)
    assert answer == Answer(text="echo: hello from my actor", driver="default")
    assert system.ask(me, Ask("again", driver="second"), 10).driver == "second"


def test_the_user_actor_collects_a_stream_in_order(system: NovaSystem) -> None:
    me = system.asys.createActor(UserActor)
    answer = system.ask(me, Ask("one two three four five", stream=True), 10)
    assert isinstance(answer, Answer) and answer.error is None
    assert len(answer.chunks) > 1
    assert "".join(answer.chunks) == answer.text == "echo: one two three four five"


def test_the_user_actor_gets_typed_errors(system: NovaSystem) -> None:
    me = system.asys.createActor(UserActor)
    answer = system.ask(me, Ask("hi", driver="nope"), 10)
    assert answer.error is not None and answer.error.startswith("UnknownDriverError:")


def test_a_call_an_actor_builds_without_validation_gets_a_typed_error_naming_the_field(
    system: NovaSystem,
) -> None:
    from nova.errors import InvalidInputError
    from nova.messages import CallFailed, CallOptions, ChatCall, CompleteCall
    from nova.types import ChatRequest, Message

    router = router_of(system)
    hello = ChatRequest(messages=[Message(role="user", content="hi")])
    hot = hello.model_copy(update={"temperature": "hot"})  # model_copy does not validate either
    for call, field in (
        (ChatCall(request=hot, request_id="bad-1"), "request.temperature"),
        (ChatCall.model_construct(request=hello, request_id="bad-2", options="fast"), "options"),
        (
            CompleteCall.model_construct(request=hello, request_id="bad-3", options=CallOptions()),
            "request.prompt",
        ),
    ):
        reply = system.asys.ask(router, call, 10)
        assert isinstance(reply, CallFailed) and reply.request_id == call.request_id
        assert isinstance(reply.error, InvalidInputError) and reply.error.field == field, reply.error
    answer = system.asys.ask(router, ChatCall(request=hello), 10)
    assert answer.response.text == "echo: hi"


def test_many_asks_to_one_user_actor_each_get_their_answer(system: NovaSystem) -> None:
    me = system.asys.createActor(UserActor)
    with system.asys.private() as ctx:
        for i in range(20):
            ctx.tell(me, Ask(f"question {i}", stream=i % 2 == 1))
        answers = [ctx.listen(10) for _ in range(20)]
    assert sorted(a.text for a in answers) == sorted(f"echo: question {i}" for i in range(20))


def test_the_example_runs_as_a_script(tmp_path: Path) -> None:
    port = next_port()
    config = tmp_path / "config.toml"
    config.write_text(
        f'[drivers.default]\nkind = "test"\n[system]\nadmin_port = {port}\nstate_dir = "{tmp_path}"\n'
    )
    out, err = tmp_path / "out.txt", tmp_path / "err.txt"
    env = {k: v for k, v in os.environ.items() if k not in ("NOVA_CONFIG", "PYTHONPATH")}
    with out.open("wb") as o, err.open("wb") as e:  # files: the actor daemons inherit a pipe and hold it open
        proc = subprocess.run(
            [
                sys.executable,
                str(ROOT / "examples" / "user_actor.py"),
                "--config",
                str(config),
                "hello script",
            ],
            stdout=o,
            stderr=e,
            cwd=tmp_path,
            env=env,
            timeout=60,
        )
    assert proc.returncode == 0, err.read_text()
    chat, stream = out.read_text().splitlines()
    assert chat == "chat, answered by default: echo: hello script"
    assert stream.startswith("stream (") and stream.endswith(
        "chunks), answered by default: echo: hello script"
    )
    assert wait_until(lambda: not port_in_use("127.0.0.1", port), timeout=10)


def test_the_example_names_a_broken_configuration_without_a_traceback(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text('[drivers.default]\nkind = "tset"\n')
    proc = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "user_actor.py"), "--config", str(config), "hi"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={k: v for k, v in os.environ.items() if k not in ("NOVA_CONFIG", "PYTHONPATH")},
        timeout=60,
    )
    assert proc.returncode == 2
    assert "drivers.default.kind" in proc.stderr and "did you mean 'test'?" in proc.stderr
    assert "Traceback" not in proc.stderr
