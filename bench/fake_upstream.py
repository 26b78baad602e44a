"""A fast fake OpenAI chat-completions server for the benchmarks: raw asyncio, HTTP/1.1 keep-alive.

It runs in its own process (so its CPU is not the benchmark's GIL) on 127.0.0.1 and answers every
`POST .../chat/completions` with the same small completion. The delay before answering is part
of the path, so one server serves several delays: `base_url(0.5)` is `http://127.0.0.1:P/d/0.5/v1`
(plain `/v1` uses the server's default delay). `/f/0.05/v1` (and `/f/0.05/d/0.5/v1`) answers 5 % of
chat requests with a fault instead: a 500, a 429 with Retry-After, or a connection closed without
a reply, in turn. `GET /stats` returns the number of chat requests
and the peak of open connections; `POST /reset` zeroes them.

A request with `"stream": true` is answered with OpenAI-style SSE chunks instead. The last user
message sets the stream with `key=value` words: `chunks=4000 rate=2000 tag=abc` sends 4,000
content chunks at 2,000 chunks/s (`rate=0`: as fast as the client takes them), then the finish
chunk, the usage chunk and `data: [DONE]`. The server writes only what the socket accepts (no
buffer of its own), so a client that stops reading stops it. `GET /streams/<tag>` reports that
stream, in `time.time()` seconds so that another process can compare: when the request came,
the first and last write, chunks sent so far, and when the client closed the connection. A
stream's socket send buffer is capped (`STREAM_SNDBUF`) so that "sent" means close to "reached the
client's socket", and its connection is closed after it: the next stream starts on a new
connection, whose receive buffer has not been grown by an earlier fast stream.

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
import random
import resource
import signal
import socket
import subprocess
import sys
import time
from collections import OrderedDict
from typing import Any

__all__ = ["COMPLETION", "FakeUpstream", "raise_nofile", "serve", "stream_prompt"]

COMPLETION = {
    "id": "chatcmpl-bench",
    "object": "chat.completion",
    "created": 1700000000,
    "model": "bench",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "pong"}, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 9, "completion_tokens": 1, "total_tokens": 10},
}


STREAM_ID = {
    "id": "chatcmpl-bench",
    "object": "chat.completion.chunk",
    "created": 1700000000,
    "model": "bench",
}
KEEP_STREAMS = 1000  # records kept for /streams/<tag>, newest last
# A stream's socket send buffer. Left alone, Linux grows it to 4 MiB on loopback, and a client that
# stops reading would let the server "send" some 20,000 chunks into it; capped, the server's count
# stays within ~100 KiB of what reached the client's socket.
STREAM_SNDBUF = 32 * 1024


def _event(payload: Any) -> bytes:
    return b"data: " + json.dumps(payload, separators=(",", ":")).encode() + b"\n\n"


def _delta(delta: dict[str, Any], finish: str | None = None) -> bytes:
    choice = {"index": 0, "delta": delta, "finish_reason": finish}
    return _event({**STREAM_ID, "choices": [choice]})


FIRST_EVENT = _delta({"role": "assistant", "content": "tok "})
TOKEN_EVENT = _delta({"content": "tok "})
END_EVENTS = (
    _delta({}, "stop")
    + _event(
        {
            **STREAM_ID,
            "choices": [],
            "usage": {"prompt_tokens": 9, "completion_tokens": 1, "total_tokens": 10},
        }
    )
    + b"data: [DONE]\n\n"
)
STREAM_HEAD = (
    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\n"
    b"transfer-encoding: chunked\r\nconnection: close\r\n\r\n"
)


def stream_prompt(chunks: int, rate: float = 0.0, tag: str = "") -> str:
    """The user message that asks this server for a stream of `chunks` chunks at `rate` chunks/s."""
    return f"chunks={chunks} rate={rate:g} tag={tag}"


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
        self.faults = 0
        self.streams: OrderedDict[str, dict[str, Any]] = OrderedDict()

    def new_stream(self, tag: str, chunks: int, rate: float) -> dict[str, Any]:
        record = {
            "tag": tag,
            "chunks": chunks,
            "rate": rate,
            "started": time.time(),  # the request arrived
            "first_write": None,
            "last_write": None,  # [DONE] handed to the socket
            "sent": 0,  # content chunks handed to the socket
            "bytes": 0,
            "done": False,
            "closed": None,  # the client closed the connection (EOF or reset seen)
        }
        self.streams[tag] = record
        while len(self.streams) > KEEP_STREAMS:
            self.streams.popitem(last=False)
        return record

    def json(self) -> bytes:
        return json.dumps(
            {
                "requests": self.requests,
                "open": self.open,
                "peak_connections": self.peak,
                "faults": self.faults,
            }
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
        self.writable = asyncio.Event()
        self.writable.set()
        self.stream: dict[str, Any] | None = None  # the record of the stream being sent

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        # Pause as soon as the kernel refuses bytes: what a stream has "sent" is what the socket took.
        transport.set_write_buffer_limits(high=0)
        self.stats.open += 1
        self.stats.peak = max(self.stats.peak, self.stats.open)

    def pause_writing(self) -> None:
        self.writable.clear()

    def resume_writing(self) -> None:
        self.writable.set()

    def eof_received(self) -> bool | None:
        self._client_closed()
        return None  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self._client_closed()
        self.stats.open -= 1
        self.transport = None
        self.writable.set()  # a stream waiting to write sees the transport gone

    def _client_closed(self) -> None:
        if self.stream is not None and self.stream["closed"] is None:
            self.stream["closed"] = time.time()

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
            body = bytes(self.buf[end + 4 : end + 4 + length])
            del self.buf[: end + 4 + length]
            method, path = head[0].split(" ")[:2]
            self._route(method, path, close, body)

    def _route(self, method: str, path: str, close: bool, body: bytes = b"") -> None:
        if path.endswith("/chat/completions") and method == "POST":
            self.stats.requests += 1
            if b'"stream"' in body and self._start_stream(body):
                return
            if path.startswith("/f/"):
                rate, path = float(path.split("/")[2]), "/" + path.split("/", 3)[3]
                if random.random() < rate:
                    self._fault(close)
                    return
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
        elif path.startswith("/streams/"):
            record = self.stats.streams.get(path.removeprefix("/streams/"))
            if record is None:
                self._answer(_response("404 Not Found", b'{"error": {"message": "no such stream"}}'), close)
            else:
                self._answer(_response("200 OK", json.dumps(record).encode()), close)
        elif path == "/reset" and method == "POST":
            self.stats.requests, self.stats.peak = 0, self.stats.open
            self._answer(_response("200 OK", self.stats.json()), close)
        else:
            self._answer(_response("404 Not Found", b'{"error": {"message": "no such path"}}'), close)

    def _fault(self, close: bool) -> None:
        self.stats.faults += 1
        kind = self.stats.faults % 3
        if kind == 0 and self.transport is not None:
            self.transport.abort()  # closed without a reply
        elif kind == 1:
            body = b'{"error": {"message": "fake upstream fault", "type": "server_error"}}'
            self._answer(_response("500 Internal Server Error", body), close)
        else:
            body = b'{"error": {"message": "slow down", "type": "rate_limit_error"}}'
            head = "HTTP/1.1 429 Too Many Requests\r\nretry-after: 0.05\r\ncontent-type: application/json\r\n"
            self._answer(f"{head}content-length: {len(body)}\r\n\r\n".encode() + body, close)

    def _start_stream(self, body: bytes) -> bool:
        request = json.loads(body)
        if request.get("stream") is not True:
            return False
        messages = request.get("messages") or [{}]
        words = dict(
            word.split("=", 1) for word in str(messages[-1].get("content", "")).split() if "=" in word
        )
        record = self.stats.new_stream(
            words.get("tag", ""), int(words.get("chunks", 100)), float(words.get("rate", 0))
        )
        sock = self.transport.get_extra_info("socket") if self.transport is not None else None
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, STREAM_SNDBUF)
        self.stream, self.busy = record, True
        asyncio.get_running_loop().create_task(self._send_stream(record))
        return True

    async def _send_stream(self, record: dict[str, Any]) -> None:
        total, rate = record["chunks"], record["rate"]
        start = time.monotonic()
        pending = STREAM_HEAD
        while record["sent"] < total:
            if rate > 0:  # send what is due by now, at most a few ms' worth at once
                due = min(total, int((time.monotonic() - start) * rate) + 1)
                if due <= record["sent"]:
                    await asyncio.sleep(record["sent"] / rate - (time.monotonic() - start))
                    continue
            else:
                due = min(total, record["sent"] + 8)
            count = due - record["sent"]
            events = (FIRST_EVENT + TOKEN_EVENT * (count - 1)) if record["sent"] == 0 else TOKEN_EVENT * count
            if due == total:
                events += END_EVENTS
            if not await self._write(pending + b"%x\r\n" % len(events) + events + b"\r\n"):
                return
            pending = b""
            record["first_write"] = record["first_write"] or time.time()
            record["sent"] = due
            record["bytes"] += len(events)
            if rate <= 0:
                await asyncio.sleep(0)  # let other connections (and /streams requests) in
        if not await self._write(b"0\r\n\r\n"):
            return
        record["last_write"], record["done"] = time.time(), True
        self.stream = None
        self._answer(b"", True)  # connection: close, see the module doc

    async def _write(self, data: bytes) -> bool:
        """Write once the socket takes bytes again; False when the client has gone."""
        await self.writable.wait()
        if self.transport is None or self.stream is None or self.stream["closed"] is not None:
            return False
        self.transport.write(data)
        return True

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

    def base_url(self, delay: float | None = None, faults: float = 0.0) -> str:
        prefix = "" if delay is None else f"/d/{delay:g}"
        if faults:
            prefix = f"/f/{faults:g}{prefix}"
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

    def stream(self, tag: str) -> dict[str, Any] | None:
        """The record of the stream tagged `tag` (see the module's doc), or None if none came."""
        record = self._request("GET", f"/streams/{tag}")
        return None if "error" in record else record

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
