"""The Thespian floor: what the pipeline's messages cost through bare actors (no HTTP, no Nova code).

Three relay actors stand for the router, the fallback stage and the driver; a call visits them as
a Nova call would (6 messages), without the fallback stage (4), or goes to the driver alone (2).
The caller opens a `private()` context per call, as `Bridge.call` does.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import Any

from thespian.actors import Actor

from bench import chat_request

__all__ = ["Hop", "Relay", "thespian_floor"]


@dataclass(frozen=True)
class Hop:
    """A message for the Thespian floor: it visits `route` in order, then `payload` goes to `reply_to`."""

    route: tuple[Any, ...]
    reply_to: Any
    payload: Any


class Relay(Actor):  # type: ignore[misc]
    def receiveMessage(self, message: Any, sender: Any) -> None:  # noqa: N802 - Thespian's name
        if isinstance(message, Hop):
            if message.reply_to is None:
                message = replace(message, reply_to=sender)
            if message.route:
                self.send(message.route[0], replace(message, route=message.route[1:]))
            else:
                self.send(message.reply_to, message.payload)


@contextlib.contextmanager
def thespian_floor(admin_port: int) -> Iterator[dict[int, Callable[[], Any]]]:
    """Calls through bare Thespian actors (no HTTP, no Nova logic), by number of messages: 6 is
    the pipeline's path (caller -> router -> fallback -> driver -> fallback -> router -> caller),
    4 skips the fallback stage, 2 is caller -> driver -> caller. Started before any thread of this
    process exists (the admin forks from it)."""
    from thespian.actors import ActorSystem

    from nova.system import bind_to, name_messages_by_type

    bind_to("127.0.0.1")
    name_messages_by_type()
    asys = ActorSystem(
        "multiprocTCPBase", {"Admin Port": admin_port}, logDefs={"version": 1}, transientUnique=True
    )
    try:
        router, fallback, driver = (asys.createActor(Relay) for _ in range(3))
        request = chat_request()
        routes = {
            6: (router, (fallback, driver, fallback, router)),
            4: (router, (driver, router)),
            2: (driver, ()),
        }

        def caller(first: Any, route: tuple[Any, ...]) -> Callable[[], Any]:
            def call() -> Any:
                with asys.private() as ctx:
                    ctx.tell(first, Hop(route, None, request))
                    reply = ctx.listen(30)
                if reply is None:
                    raise TimeoutError("no answer from the bare actors within 30 s")
                return reply

            return call

        yield {n: caller(first, route) for n, (first, route) in routes.items()}
    finally:
        asys.shutdown()
