"""Test-driver handlers that run inside driver actor processes and write down every upstream call.

Configure with `handler = "tests.actors.handlers:record"` (or `broken`, `crash`); the plugins
and the token counter at the end make the router's own stages fail on purpose. Each call
appends one JSON line to the file named by the request's `extra["log"]` (or `$NOVA_TEST_LOG`):
the prompt, every message sent, the driver process's pid. A test then counts upstream calls and
sees what the driver was sent, across process boundaries. `extra["script"]` is the reply (any
test-driver reply dict); without it the answer echoes the prompt.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
from typing import Any

from nova.plugins import Plugin

__all__ = ["ExplodingCounter", "FaultyPlugin", "ShoutingPlugin", "broken", "crash", "record", "summarize"]


def _write(request: Any) -> None:
    path = request.extra.get("log") or os.environ.get("NOVA_TEST_LOG")
    if not path:
        return
    messages = getattr(request, "messages", None)
    sent = [[m.role, m.text] for m in messages] if messages is not None else [["prompt", request.prompt]]
    line = json.dumps(
        {
            "prompt": sent[-1][1] if messages is None else _last_user(messages),
            "messages": sent,
            "pid": os.getpid(),
        }
    )
    with open(path, "a") as f:  # several driver processes may write at once
        fcntl.flock(f, fcntl.LOCK_EX)
        f.write(line + "\n")


def _last_user(messages: Any) -> str:
    users = [m.text for m in messages if m.role == "user"]
    return users[-1] if users else ""


def record(request: Any) -> Any:
    _write(request)
    script = request.extra.get("script")
    if script is not None:
        return dict(script)
    text = request.prompt if not hasattr(request, "messages") else _last_user(request.messages)
    return {"text": f"echo: {text}"}


def broken(request: Any) -> Any:
    """Always fails: a ServerError unless `extra["script"]` says otherwise."""
    _write(request)
    return dict(request.extra.get("script") or {"error": "ServerError", "message": "scripted outage"})


def summarize(request: Any) -> Any:
    """A summary driver: "digest of turn 0, turn 1" for the turns named in the transcript (short,
    so the summary always fits a small window); fails when the transcript holds "FAIL"."""
    transcript = _last_user(request.messages)
    if "FAIL" in transcript:
        return {"error": "ServerError", "message": "scripted summary outage"}
    turns = sorted(set(re.findall(r"turn \d+", transcript)), key=lambda t: int(t.split()[1]))
    return {"text": "digest of " + ", ".join(turns)}


def crash(request: Any) -> Any:
    """A handler with a bug: raises a plain Python exception after writing down the call."""
    _write(request)
    raise ValueError("handler bug: not a Nova error")


class ExplodingCounter:
    """A token counter with a bug: any call that needs its context trimmed crashes the router."""

    def count_text(self, text: str) -> int:
        raise RuntimeError("counter bug")

    def count_messages(self, messages: Any) -> int:
        raise RuntimeError("counter bug")


class FaultyPlugin(Plugin):
    """Raises a plain exception in the hook named by the request's `extra["fail_in"]`."""

    name = "faulty"

    def before_request(self, ctx: Any, request: Any) -> Any:
        return self._maybe("before_request", request)

    def after_response(self, ctx: Any, request: Any, response: Any) -> Any:
        return self._maybe("after_response", request)

    def on_chunk(self, ctx: Any, chunk: Any) -> Any:
        return None

    @staticmethod
    def _maybe(hook: str, request: Any) -> None:
        if request.extra.get("fail_in") == hook:
            raise KeyError(f"plugin bug in {hook}")


class ShoutingPlugin(Plugin):
    """Upper-cases answers and stream chunks: shows plugins run on the real path."""

    name = "shout"

    def after_response(self, ctx: Any, request: Any, response: Any) -> Any:
        return response.model_copy(update={"text": response.text.upper()})

    def on_chunk(self, ctx: Any, chunk: Any) -> Any:
        return chunk.model_copy(update={"text": chunk.text.upper()})
