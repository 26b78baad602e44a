"""A user's own Thespian actor that talks to Nova by message, the way any actor in your system can.

It asks Nova's root actor (globalName "nova") where the router is (`WhereIsRouter`), then sends
`ChatCall`s and `StreamCall`s to the router and gets `CallSucceeded` / `CallFailed` back, after a
stream's `StreamChunk`s. Chunks can arrive out of order, even after the final reply: they are put
in `index` order, and an answer is complete once the final reply and the `chunks` it counts are in.

Run it against the default offline configuration (it starts Nova, or uses a running `nova run`):

    python examples/user_actor.py "hello there"
    python examples/user_actor.py --config my.toml --driver openai "hello there"
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if __name__ == "__main__":  # run as a script from a checkout: make `nova` and `examples` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from thespian.actors import Actor  # noqa: E402

from nova.messages import (  # noqa: E402
    CallFailed,
    CallOptions,
    CallSucceeded,
    ChatCall,
    RouterAddress,
    StreamCall,
    StreamChunk,
    WhereIsRouter,
)
from nova.types import ChatRequest, Message  # noqa: E402

__all__ = ["Answer", "Ask", "UserActor", "main"]


@dataclass(frozen=True)
class Ask:
    """What this example actor is asked to do: one chat call, or one streamed call."""

    prompt: str
    stream: bool = False
    driver: str | None = None


@dataclass(frozen=True)
class Answer:
    text: str = ""
    chunks: tuple[str, ...] = ()  # a stream's chunk texts, in order
    driver: str = ""
    error: str | None = None  # "ErrorClass: message" when Nova answered with an error


@dataclass
class _Call:
    asker: Any
    chunks: dict[int, str] = field(default_factory=dict)
    final: Any = None


class UserActor(Actor):  # type: ignore[misc]
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.router: Any = None
        self.waiting: list[tuple[Ask, Any]] = []  # asks that came before the router's address
        self.calls: dict[str, _Call] = {}

    def receiveMessage(self, message: Any, sender: Any) -> None:  # noqa: N802 - Thespian's name
        if isinstance(message, Ask):
            self.on_ask(message, sender)
        elif isinstance(message, RouterAddress):
            self.router = message.router
            waiting, self.waiting = self.waiting, []
            for ask, asker in waiting:
                self.call(ask, asker)
        elif isinstance(message, StreamChunk) and message.request_id in self.calls:
            self.calls[message.request_id].chunks[message.index] = message.chunk.text
            self.maybe_answer(message.request_id)
        elif isinstance(message, (CallSucceeded, CallFailed)) and message.request_id in self.calls:
            self.calls[message.request_id].final = message
            self.maybe_answer(message.request_id)

    def on_ask(self, ask: Ask, asker: Any) -> None:
        if self.router is not None:
            self.call(ask, asker)
            return
        if not self.waiting:  # Nova's root is a named actor: this finds it, it creates nothing
            root = self.createActor("nova.supervisors.tree.RootSupervisor", globalName="nova")
            self.send(root, WhereIsRouter())
        self.waiting.append((ask, asker))

    def call(self, ask: Ask, asker: Any) -> None:
        request = ChatRequest(messages=(Message(role="user", content=ask.prompt),))
        options = CallOptions(driver=ask.driver)
        message = (StreamCall if ask.stream else ChatCall)(request=request, options=options)
        self.calls[message.request_id] = _Call(asker)
        self.send(self.router, message)

    def maybe_answer(self, request_id: str) -> None:
        call = self.calls[request_id]
        if call.final is None or len(call.chunks) < call.final.chunks:
            return  # the final reply, or a chunk it counts, is still on its way
        del self.calls[request_id]
        chunks = tuple(call.chunks[i] for i in sorted(call.chunks))
        if isinstance(call.final, CallSucceeded):
            response = call.final.response
            answer = Answer(text=response.text, chunks=chunks, driver=response.driver)
        else:
            error = call.final.error
            answer = Answer(chunks=chunks, error=f"{type(error).__name__}: {error.message}")
        self.send(call.asker, answer)


def main(argv: list[str] | None = None) -> int:
    from nova.config import load_config
    from nova.errors import NovaError
    from nova.supervisors.system import NovaSystem

    parser = argparse.ArgumentParser(description="Ask Nova from a Thespian actor of your own.")
    parser.add_argument("prompt")
    parser.add_argument("--config", help="configuration file (default: $NOVA_CONFIG, ./config.toml)")
    parser.add_argument("--driver")
    args = parser.parse_args(argv)
    try:
        config = load_config(args.config)
        system = NovaSystem.attach(config) or NovaSystem.start(config)
    except NovaError as exc:  # a broken configuration, a port in use: say which, not a traceback
        print(f"nova: {type(exc).__name__}: {exc.message}", file=sys.stderr)
        return 2
    try:
        me = system.asys.createActor(UserActor)
        for stream in (False, True):
            answer = system.ask(me, Ask(args.prompt, stream=stream, driver=args.driver), 60)
            if not isinstance(answer, Answer):
                print("no answer from the example actor", file=sys.stderr)
                return 1
            if answer.error:
                print(f"Nova answered with an error: {answer.error}", file=sys.stderr)
                return 1
            label = f"stream ({len(answer.chunks)} chunks)" if stream else "chat"
            print(f"{label}, answered by {answer.driver}: {answer.text}")
    finally:
        system.stop()
    return 0


if __name__ == "__main__":
    # Use the classes under their module path: actor processes look them up by it, and a class
    # defined in __main__ is not reliably found there.
    from examples.user_actor import main as _main

    sys.exit(_main())
