"""A small program that uses Nova: it sorts support tickets into queues and drafts replies."""

from __future__ import annotations

import nova
from nova import errors

QUEUES = ("BILLING", "TECHNICAL", "OTHER")
PROMPT = "Sort the ticket into one of: " + ", ".join(QUEUES) + ". Answer with the queue name only."


def _queue(text: str) -> str:
    answer = text.strip().upper()
    return answer if answer in QUEUES else "OTHER"


def classify(ticket: str) -> str:
    """The queue for a ticket; "RETRY_LATER" when the service is busy."""
    try:
        resp = nova.llm.chat(
            [{"role": "system", "content": PROMPT}, {"role": "user", "content": ticket}],
            model="openai/gpt-4o-mini",
            temperature=0,
        )
    except errors.RateLimitError:
        return "RETRY_LATER"
    return _queue(resp.text)


async def aclassify(ticket: str) -> str:
    resp = await nova.llm.achat(
        [{"role": "system", "content": PROMPT}, {"role": "user", "content": ticket}], temperature=0
    )
    return _queue(resp.text)


def draft_reply(ticket: str) -> str:
    """A reply drafted as a stream (shown to the agent as it arrives)."""
    return "".join(chunk.text for chunk in nova.llm.stream(f"Draft a short, kind reply to: {ticket}"))
