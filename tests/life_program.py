"""A user program for tests/test_life.py: nova.llm as a user would call it, from threads.

`python -m tests.life_program N [MODEL]` reaches Nova (attached to `nova run`, or embedded),
prints where it is, starts N calls (of MODEL, default "slow:60": they stay in flight upstream),
prints `in_flight` once the drivers hold all of them, then every call's outcome. After that,
each line `call` on stdin is one quick call, and its outcome is printed. One JSON object per line.
"""

from __future__ import annotations

import json
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from nova import errors, llm
from nova.messages import GetStatus


def out(**fields: Any) -> None:
    print(json.dumps(fields), flush=True)


def one(model: str) -> dict[str, Any]:
    start = time.monotonic()
    try:
        llm.chat("question", model=model, timeout=60)
        outcome: dict[str, Any] = {"ok": True}
    except errors.NovaError as exc:
        outcome = {"type": type(exc).__name__, "retryable": exc.retryable, "message": exc.message}
    return {**outcome, "waited": time.monotonic() - start}


def in_drivers(tree: dict[str, Any]) -> int:
    drivers = next((c for c in tree["children"] if c["name"] == "drivers"), {"children": []})
    return sum(int(d.get("in_flight", 0)) for d in drivers["children"])


def main() -> None:
    n = int(sys.argv[1])
    model = sys.argv[2] if len(sys.argv) > 2 else "slow:60"
    system = llm.system()
    out(
        event="up",
        owned=system.owned,
        root=system.root_pid,
        admin=system.admin_pid,
        sid=system.sid,
        port=system.config.system.admin_port,
        lanes=system.lanes,
    )
    pool = ThreadPoolExecutor(n)
    futures = [pool.submit(one, model) for _ in range(n)]
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        reply = system.ask(system.root, GetStatus(), 5)
        if reply is not None and in_drivers(reply.tree) >= n:
            break
        time.sleep(0.02)  # polling Nova's status, with the deadline above
    out(event="in_flight")
    out(event="answered", results=[f.result() for f in futures])
    for line in sys.stdin:
        if line.strip() == "call":
            out(event="call", result=one("slow:0"))
    llm.shutdown()


if __name__ == "__main__":
    main()
