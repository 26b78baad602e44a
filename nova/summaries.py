"""Summary jobs: internal calls that condense the turns a conversation call left out.

With `[context] summarize = true`, a conversation call whose history was trimmed starts one summary
job after its own turn is recorded, so the caller never waits for it. The job is an ordinary chat
call to `summary_driver` (else the call's driver) with `Conversation.summary_prompt`; its answer is
stored with `Conversation.apply_summary`, and the calls after that carry it. One job at a time per
conversation: a second would summarise the same turns again, and only one of them could apply. A
failed summary is a warning in the log; the next call that drops those turns tries again.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from nova import errors
from nova.calls import Outcome, Pending
from nova.config import NovaConfig
from nova.messages import CallOptions
from nova.types import Response

__all__ = ["SummaryJobs"]

log = logging.getLogger("nova.provider")


class SummaryJobs:
    def __init__(self) -> None:
        self.running: set[str] = set()  # conversations with a summary job out

    def job_for(
        self,
        pending: Pending,
        *,
        config: NovaConfig,
        conversations: Any,
        plugins: Any,
        clock: Callable[[], float],
    ) -> Pending | None:
        """The summary job for the turns `pending` left out, or None (summaries off, one already
        running for the conversation, or a plugin stopped it). The caller sets its stages."""
        conv = pending.lane
        if conv is None or not pending.dropped or conv in self.running:
            return None
        made = conversations.summary_request(conv, pending.dropped, pending.driver)
        if made is None:
            return None
        driver, request = made
        if not request.model:
            default = config.drivers[driver].options.get("model", "")
            request = request.model_copy(update={"model": default}) if default else request
        job = Pending(
            f"{pending.request_id}:summary",
            None,  # nobody waits for its answer
            "chat",
            driver,
            request,
            CallOptions(driver=driver),
            time.monotonic(),
            clock() + config.llm.timeout_s,
            (),
            summary_of=(conv, pending.dropped),
        )
        if plugins is not None and plugins.before_request(job) is not None:
            # before_request runs (redaction matters: the transcript goes to a service too); a
            # plugin that answers or fails it has no answer to give a summary.
            log.warning("conversation %r: a plugin stopped the summary of dropped turns", conv)
            return None
        self.running.add(conv)
        return job

    def finish(
        self, job: Pending, response: Response | None, error: errors.NovaError | None, conversations: Any
    ) -> Outcome:
        """Store the summary; a failure is logged, never anyone's error."""
        assert job.summary_of is not None
        conv, dropped = job.summary_of
        self.running.discard(conv)
        outcome = Outcome(job, response, error)
        text = response.text.strip() if response is not None else ""
        if error is not None or not text:
            reason = f"{type(error).__name__}: {error.message}" if error else "an empty answer"
            log.warning(
                "conversation %r: summarising %d dropped messages failed (%s); a later call retries",
                conv,
                len(dropped),
                reason,
            )
            return outcome
        try:
            applied = conversations.apply_summary(conv, dropped, text)
        except Exception as exc:  # a failing store must not take the router down with it
            log.warning("conversation %r: storing its summary failed: %s: %s", conv, type(exc).__name__, exc)
            return outcome
        if not applied:
            log.info("conversation %r changed while its summary was written; summary dropped", conv)
        return outcome
