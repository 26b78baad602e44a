"""One call at a time per conversation: a FIFO of request ids for each conversation id.

Two calls on one conversation that ran at once would both be prepared from the same history and
record their turns in whichever order they finished, so turns would interleave. The router's
provider lets the first call of a conversation run and queues the others here; when the running
call's turn is recorded (or it fails), the next one in arrival order starts.
"""

from __future__ import annotations

from collections import deque

__all__ = ["TurnQueue"]


class TurnQueue:
    def __init__(self) -> None:
        self._queues: dict[str, deque[str]] = {}  # the head runs, the rest wait in order

    def enter(self, conv_id: str, request_id: str) -> bool:
        """Join the conversation's queue; True when the call may run now (nothing was ahead)."""
        queue = self._queues.setdefault(conv_id, deque())
        queue.append(request_id)
        return len(queue) == 1

    def leave(self, conv_id: str, request_id: str) -> str | None:
        """The call is over (answered, failed, timed out or cancelled, running or waiting).

        Returns the request id that may run now when the running call left and another waits;
        the caller must start it (and `leave` for it too if it ends without running)."""
        queue = self._queues.get(conv_id)
        if queue is None or request_id not in queue:
            return None
        was_running = queue[0] == request_id
        queue.remove(request_id)  # a waiter that gave up leaves from the middle
        if not queue:
            del self._queues[conv_id]
            return None
        return queue[0] if was_running else None

    def waiting(self, conv_id: str) -> int:
        """Calls queued behind the running one."""
        return max(0, len(self._queues.get(conv_id, ())) - 1)

    def running(self, conv_id: str) -> str | None:
        queue = self._queues.get(conv_id)
        return queue[0] if queue else None

    def __len__(self) -> int:
        """Conversations with a call running."""
        return len(self._queues)
