"""A fast fake OpenAI chat-completions server for the benchmarks: raw asyncio, HTTP/1.1 keep-alive.

It runs in its own process (so its CPU is not the benchmark's GIL) on 127.0.0.1 and answers every
`POST .../chat/completions` with the same small completion. The delay before answering is part
of the path, so one server serves several delays: `base_url(0.5)` is `http://127.0.0.1:P/d/0.5/v1`
(plain `/v1` uses the server's default delay). `GET /stats` returns the number of chat requests
and the peak of open connections; `POST /reset` zeroes them.

    .venv/bin/python -m bench.fake_upstream [--port 0] [--delay 0]   # prints "READY <port>"
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import http.client
import json
import os
import resource
import signal
import subprocess
import sys
from typing import Any

__all__ = ["COMPLETION", "FakeUpstream", "raise_nofile", "serve"]

COMPLETION = {
    "id": "chatcmpl-bench",
    "object": "chat.completion",
    "created": 1700000000,
    "model": "bench",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "pong"}, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 9, "completion_tokens": 1, "total_tokens": 10},
}


def raise_nofile() -> int:
    """Raise this process's open-file limit to its hard limit (children inherit it); the new limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def _response(status: str, body: bytes, content_type: str = "application/json") -> bytes:
    head = f"HTTP/1.1 {status}\r\ncontent-type: {content_type}\r\ncontent-length: {len(body)}\r\n\r\n"
    return head.encode() + body


class _Stats:
    def __init__(self) -> None:
        self.requests = 0
        self.open = 0
        self.peak = 0

    def json(self) -> bytes:
        return json.dumps(
            {"requests": self.requests, "open": self.open, "peak_connections": self.peak}
        ).encode()


class _Connection(asyncio.Protocol):
    """One keep-alive connection; requests on it are answered in order, one at a time."""

    def __init__(self, stats: _Stats, default_delay: float, reply: bytes) -> None:
        self.stats = stats
        self.default_delay = default_delay
        self.reply = reply
        self.buf = bytearray()
        self.busy = False
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.stats.open += 1
        self.stats.peak = max(self.stats.peak, self.stats.open)

    def connection_lost(self, exc: Exception | None) -> None:
        self.stats.open -= 1
        self.transport = None

    def data_received(self, data: bytes) -> None:
        self.buf += data
        self._next()

    def _next(self) -> None:
        while not self.busy and self.transport is not None:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(self.buf[:end]).decode("latin-1").split("\r\n")
            length, close = 0, False
            for line in head[1:]:
                name, _, value = line.partition(":")
                name = name.strip().lower()
                if name == "content-length":
                    length = int(value)
                elif name == "connection" and value.strip().lower() == "close":
                    close = True
            if len(self.buf) < end + 4 + length:
                return
            del self.buf[: end + 4 + length]
            method, path = head[0].split(" ")[:2]
            self._route(method, path, close)

    def _route(self, method: str, path: str, close: bool) -> None:
        if path.endswith("/chat/completions") and method == "POST":
            self.stats.requests += 1
            delay = self.default_delay
            if path.startswith("/d/"):
                delay = float(path.split("/")[2])
            if delay > 0:
                self.busy = True
                asyncio.get_running_loop().call_later(delay, self._answer, self.reply, close)
                return
            self._answer(self.reply, close)
        elif path == "/stats":
            self._answer(_response("200 OK", self.stats.json()), close)
        elif path == "/reset" and method == "POST":
            self.stats.requests, self.stats.peak = 0, self.stats.open
            self._answer(_response("200 OK", self.stats.json()), close)
        else:
            self._answer(_response("404 Not Found", b'{"error": {"message": "no such path"}}'), close)

    def _answer(self, data: bytes, close: bool) -> None:
        self.busy = False
        if self.transport is None:
            return  # the client went away while we waited
        self.transport.write(data)
        if close:
            self.transport.close()
        else:
            self._next()


async def serve(port: int, delay: float, ready: Any = None) -> None:
    """Serve until cancelled; `ready(port)` is called once the socket listens."""
    stats = _Stats()
    reply = _response("200 OK", json.dumps(COMPLETION).encode())
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: _Connection(stats, delay, reply), "127.0.0.1", port, backlog=8192, reuse_address=True
    )
    if ready is not None:
        ready(server.sockets[0].getsockname()[1])
    async with server:
        await server.serve_forever()


class FakeUpstream:
    """Starts the server in a child process and stops it again (a context manager)."""

    def __init__(self, delay: float = 0.0, timeout: float = 10.0) -> None:
        self.delay = delay
        self.timeout = timeout
        self.port = 0
        self.proc: subprocess.Popen[str] | None = None

    def __enter__(self) -> FakeUpstream:
        raise_nofile()
        cmd = [sys.executable, "-m", "bench.fake_upstream", "--port", "0", "--delay", str(self.delay)]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()  # blocks until READY (or the child died: empty line)
        if not line.startswith("READY "):
            self.stop()
            raise RuntimeError(f"fake upstream did not start: {line!r}")
        self.port = int(line.split()[1])
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def pid(self) -> int:
        assert self.proc is not None, "the server is not running"
        return self.proc.pid

    def base_url(self, delay: float | None = None) -> str:
        prefix = "" if delay is None else f"/d/{delay:g}"
        return f"http://127.0.0.1:{self.port}{prefix}/v1"

    def _request(self, method: str, path: str) -> dict[str, Any]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=self.timeout)
        try:
            conn.request(method, path)
            return json.loads(conn.getresponse().read())  # type: ignore[no-any-return]
        finally:
            conn.close()

    def stats(self) -> dict[str, Any]:
        return self._request("GET", "/stats")

    def reset(self) -> None:
        self._request("POST", "/reset")

    def stop(self) -> None:
        if self.proc is None:
            return
        proc, self.proc = self.proc, None
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


def _die_with_parent() -> None:
    with contextlib.suppress(OSError, AttributeError):  # Linux only; elsewhere the parent stops us
        ctypes.CDLL("libc.so.6").prctl(1, signal.SIGTERM, 0, 0, 0)  # PR_SET_PDEATHSIG


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--delay", type=float, default=0.0, help="seconds before each answer")
    args = parser.parse_args()
    _die_with_parent()
    raise_nofile()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))

    def ready(port: int) -> None:
        print(f"READY {port}", flush=True)

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(args.port, args.delay, ready))


if __name__ == "__main__":
    main()
    os._exit(0)
