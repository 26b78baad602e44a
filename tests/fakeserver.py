"""A real HTTP/1.1 server on 127.0.0.1 that plays scripted replies, for driver tests.

It runs an asyncio loop in a background thread, so sync and async tests can both use it. Replies
are queued per path; each can set status, headers, a body, a body streamed in chosen pieces (split
at any byte offset), delays, a declared Content-Length that lies, a hang, or an abrupt reset.
Every request is recorded (method, path, headers, body) so tests can assert the wire format.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections import defaultdict, deque
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Reply:
    status: int = 200
    body: bytes | str | dict[str, Any] | list[Any] = b""
    headers: dict[str, str] = field(default_factory=dict)
    chunks: list[bytes | str] | None = None  # stream the body in these pieces (chunked encoding)
    chunk_delay: float = 0.0
    delay: float = 0.0  # before the status line
    content_length: int | None = None  # declare this length whatever the body is
    reset_before_reply: bool = False  # close the connection without answering
    reset_after_chunks: int | None = None  # abort the connection after this many chunks
    hang_after_chunks: int | None = None  # stop sending but keep the connection open
    hang_up_ends: bool = False  # a client that hangs up during `delay` ends the reply (`hung_up`)

    def body_bytes(self) -> bytes:
        if isinstance(self.body, (dict, list)):
            return json.dumps(self.body).encode()
        if isinstance(self.body, str):
            return self.body.encode()
        return self.body


@dataclass
class Recorded:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes

    @property
    def json(self) -> Any:
        return json.loads(self.body)


def sse(*events: dict[str, Any] | str, event_names: bool = False, done: bool = True) -> bytes:
    """An OpenAI-style (or, with event_names, Anthropic-style) SSE body."""
    out = []
    for e in events:
        data = e if isinstance(e, str) else json.dumps(e)
        name = f"event: {e['type']}\n" if event_names and isinstance(e, dict) else ""
        out.append(f"{name}data: {data}\n\n")
    if done:
        out.append("data: [DONE]\n\n")
    return "".join(out).encode()


class FakeServer:
    def __init__(self) -> None:
        self._replies: dict[str, deque[Reply]] = defaultdict(deque)
        self.default: dict[str, Reply] = {}
        self.requests: list[Recorded] = []
        self.open: list[Recorded] = []  # requests whose reply is being written
        self.replied: list[Recorded] = []  # requests whose reply was written whole
        self.hung_up: list[Recorded] = []  # requests whose client hung up before the reply
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True, name="fake-server")
        self._server: asyncio.base_events.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()  # open connections, cancelled on stop
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def add(self, path: str, *replies: Reply) -> None:
        self._replies[path].extend(replies)

    def start(self) -> FakeServer:
        self._thread.start()
        self._server = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._serve, "127.0.0.1", 0), self._loop
        ).result(5)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def stop(self) -> None:
        async def _close() -> None:
            assert self._server is not None
            self._server.close()
            for w in list(self._writers):
                w.transport.abort()
            # A connection may sleep in hang_after_chunks or a delay: cancel it, or the loop
            # closes with it pending ("Task was destroyed but it is pending").
            tasks = [t for t in self._tasks if not t.done()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await self._server.wait_closed()

        asyncio.run_coroutine_threadsafe(_close(), self._loop).result(5)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()

    def __enter__(self) -> FakeServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _next_reply(self, path: str) -> Reply:
        queue = self._replies.get(path.split("?")[0])
        if queue:
            return queue.popleft()
        if path.split("?")[0] in self.default:
            return self.default[path.split("?")[0]]
        return Reply(status=404, body={"error": {"message": f"no scripted reply for {path}", "type": "test"}})

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        try:
            while True:
                request_line = await reader.readline()
                if not request_line:
                    return
                method, path, _ = request_line.decode().split(" ", 2)
                headers: dict[str, str] = {}
                while (line := await reader.readline()) not in (b"\r\n", b"\n", b""):
                    name, _, value = line.decode().partition(":")
                    headers[name.strip().lower()] = value.strip()
                body = await reader.readexactly(int(headers.get("content-length", "0")))
                recorded = Recorded(method, path, headers, body)
                self.requests.append(recorded)
                self.open.append(recorded)
                try:
                    done = await self._reply(writer, self._next_reply(path), reader, recorded)
                finally:
                    self.open.remove(recorded)
                if not done:
                    return
        except (ConnectionError, asyncio.IncompleteReadError):
            return
        except asyncio.CancelledError:
            # stop() cancelled this connection; end quietly (a task that ends cancelled makes
            # asyncio's stream callback log a CancelledError traceback).
            return
        finally:
            self._writers.discard(writer)
            if task is not None:
                self._tasks.discard(task)
            writer.close()

    async def _reply(
        self,
        writer: asyncio.StreamWriter,
        reply: Reply,
        reader: asyncio.StreamReader | None = None,
        recorded: Recorded | None = None,
    ) -> bool:
        """Write one reply; False when the connection must not be reused."""
        if reply.delay and reply.hang_up_ends and reader is not None:
            eof = asyncio.ensure_future(reader.read(1))  # a client sends nothing more: b"" is a hang-up
            await asyncio.wait([eof], timeout=reply.delay)
            if eof.done():
                if recorded is not None:
                    self.hung_up.append(recorded)
                return False
            eof.cancel()
            await asyncio.wait([eof])  # gone before the next request is read from this reader
        elif reply.delay:
            await asyncio.sleep(reply.delay)
        if reply.reset_before_reply:
            writer.transport.abort()
            return False
        headers = {"content-type": "application/json", **reply.headers}
        head = f"HTTP/1.1 {reply.status} X\r\n"
        if reply.chunks is None:
            body = reply.body_bytes()
            length = len(body) if reply.content_length is None else reply.content_length
            head += "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + f"content-length: {length}\r\n\r\n"
            writer.write(head.encode() + body)
            await writer.drain()
            if length != len(body):
                writer.transport.abort()  # the body is shorter than declared: the peer sees a cut
                return False
            if recorded is not None:
                self.replied.append(recorded)
            return True
        head += "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "transfer-encoding: chunked\r\n\r\n"
        writer.write(head.encode())
        for i, piece in enumerate(reply.chunks):
            if reply.reset_after_chunks is not None and i >= reply.reset_after_chunks:
                await writer.drain()
                writer.transport.abort()
                return False
            if reply.hang_after_chunks is not None and i >= reply.hang_after_chunks:
                await writer.drain()
                await asyncio.sleep(3600)
            data = piece.encode() if isinstance(piece, str) else piece
            writer.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
            await writer.drain()
            if reply.chunk_delay:
                await asyncio.sleep(reply.chunk_delay)
        writer.write(b"0\r\n\r\n")
        await writer.drain()
        if recorded is not None:
            self.replied.append(recorded)
        return True
