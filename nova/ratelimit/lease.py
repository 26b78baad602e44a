"""Leases: shares of a cluster's per-minute budgets, granted by the leader, in the manner of Doorman.

Every node's limiter admits against leases; the leader's `LeaseServer` grants them. A grant is a
number of requests and tokens of one scope ("openai", "openai/gpt-4o") that a node may admit
until the grant expires (`lease_s`). The server charges each grant to its own 60 s window of that
scope the moment it grants it, so whatever the nodes do, the grants of any 60 s add up to at
most the configured limit. A node returns what it did not use of a grant once the grant expires
(the server refunds it), and reports its demand with every request; the server splits what is
left of a budget among the nodes that want it, max-min fairly, so shares follow demand. A node
that stops asking (it died, or lost the leader) drops out of the split when its lease expires;
what it was granted stays charged for its minute, since nobody can tell how much of it was used.
A leader that restarts starts with an empty ledger: a node that lost its leader reports what it
was granted in the last minute (`Charged`) with its requests until a leader answers, and the
leader charges that to its window before it grants the node anything. It grants nothing at all
for its first `settle_s`, the time every node needs to find it and report.

`LeaseHolder` is the node's side: what it holds, what it took for each call, when to ask again,
and what to do without a leader (`on_leader_loss`): "refuse" calls that need the budget, or
admit them against the node's own limits ("local"). Plain objects with an injected clock.
"""

from __future__ import annotations

import bisect
import itertools
import secrets
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Literal

from nova.ratelimit.settings import Limits, RateLimitSettings
from nova.ratelimit.window import EPSILON, WINDOW_S

__all__ = [
    "Charged",
    "Grant",
    "LeaseHolder",
    "LeaseServer",
    "Return",
    "Want",
    "fair_shares",
    "scope_limits",
]


@dataclass(frozen=True)
class Want:
    """A node's demand for one scope over the next lease: requests and tokens beyond what it holds."""

    scope: str
    requests: int
    tokens: int


@dataclass(frozen=True)
class Grant:
    """Permission to admit up to `requests` calls and `tokens` tokens (None: that kind has no
    limit) of one scope, for `lasts_s` seconds from the moment the node asked."""

    lease_id: str
    scope: str
    requests: int | None
    tokens: int | None
    lasts_s: float


@dataclass(frozen=True)
class Return:
    """What a node did not use of an expired grant (tokens below zero: it used more than charged)."""

    lease_id: str
    requests: int
    tokens: int


@dataclass(frozen=True)
class Charged:
    """A grant a node was given in the last 60 s, as it stands charged (less what came back),
    reported to a leader that may not know it: granted `age_s` seconds ago."""

    lease_id: str
    scope: str
    age_s: float
    requests: int
    tokens: int


def scope_limits(settings: RateLimitSettings, scope: str) -> Limits | None:
    """The limits of a scope as the limiter applies them: its own key, or `default` for a driver."""
    limits = settings.limits.get(scope)
    if limits is None and "/" not in scope:
        limits = settings.default
    return limits


def fair_shares(wants: Mapping[str, float], capacity: float) -> dict[str, float]:
    """Max-min fair split of `capacity`: nobody gets more than it wants, and what a small want
    leaves over goes in equal parts to the larger ones."""
    shares: dict[str, float] = {}
    left = max(capacity, 0.0)
    pending = sorted(wants.items(), key=lambda kv: kv[1])
    for i, (who, want) in enumerate(pending):
        share = min(max(want, 0.0), left / (len(pending) - i))
        shares[who] = share
        left -= share
    return shares


# -- the leader's side ------------------------------------------------------------------------------


@dataclass(slots=True)
class _Charge:
    lease_id: str
    node: str
    scope: str
    at: float
    requests: int
    tokens: int


@dataclass(slots=True)
class _Node:
    until: float  # its lease ends here unless it asks again
    wants: dict[str, Want]
    got: dict[tuple[str, str], int] = field(default_factory=dict)  # granted for those wants


class LeaseServer:
    """The leader's ledger: grants, charges for 60 s, refunds of returns, shares by demand."""

    def __init__(
        self,
        settings: RateLimitSettings,
        lease_s: float,
        clock: Callable[[], float] = time.monotonic,
        settle_s: float = 0.0,
    ) -> None:
        self.settings = settings
        self.lease_s = lease_s
        self._clock = clock
        self._settled = clock() + settle_s  # grants start here
        self._charges: dict[str, _Charge] = {}
        self._order: deque[_Charge] = deque()
        self._nodes: dict[str, _Node] = {}
        self._ids = itertools.count(1)
        self._epoch = secrets.token_hex(4)  # a restarted leader's lease ids differ from the last one's

    def request(
        self,
        node: str,
        wants: Iterable[Want],
        returns: Iterable[Return] = (),
        charged: Iterable[Charged] = (),
    ) -> list[Grant]:
        """Refund `returns`, charge what `node` reports it was granted (by an earlier leader) that
        this ledger does not know, record its demand, and grant its share of each wanted scope."""
        now = self._clock()
        self._prune(now)
        for r in returns:
            charge = self._charges.get(r.lease_id)
            if charge is not None and charge.node == node:
                charge.requests -= min(max(r.requests, 0), charge.requests)
                charge.tokens = max(0, charge.tokens - r.tokens)
        for c in charged:  # after the returns: what it reports is net of them already
            if c.lease_id not in self._charges and c.age_s < WINDOW_S:
                carried = _Charge(c.lease_id, node, c.scope, now - max(c.age_s, 0.0), c.requests, c.tokens)
                self._charges[c.lease_id] = carried
                # the window is pruned oldest first: keep the order by the time of the grant
                at = bisect.bisect_right([x.at for x in self._order], carried.at)
                self._order.insert(at, carried)
        wanted = {w.scope: w for w in wants}
        self._nodes[node] = _Node(now + self.lease_s, wanted)
        if now < self._settled:
            return []  # an answer all the same: the node knows the leader is there, and waits
        grants = []
        for scope in wanted:
            limits = scope_limits(self.settings, scope)
            if limits is None or not limits.uses_window:
                continue
            requests = self._share(node, scope, "requests", limits.requests_per_minute)
            tokens = self._share(node, scope, "tokens", limits.tokens_per_minute)
            if requests == 0 or tokens == 0:
                continue
            lease_id = f"{node}#{self._epoch}.{next(self._ids)}"
            charge = _Charge(lease_id, node, scope, now, requests or 0, tokens or 0)
            self._charges[lease_id] = charge
            self._order.append(charge)
            grants.append(Grant(lease_id, scope, requests, tokens, self.lease_s))
        return grants

    def nodes(self) -> list[str]:
        """The nodes whose leases have not expired."""
        self._prune(self._clock())
        return sorted(self._nodes)

    def charged(self, scope: str) -> tuple[int, int]:
        """Requests and tokens granted for `scope` in the last 60 s, less what came back."""
        self._prune(self._clock())
        mine = [c for c in self._charges.values() if c.scope == scope]
        return sum(c.requests for c in mine), sum(c.tokens for c in mine)

    def _share(
        self, node: str, scope: str, kind: Literal["requests", "tokens"], limit: int | None
    ) -> int | None:
        if limit is None:
            return None
        used = int(sum(getattr(c, kind) for c in self._charges.values() if c.scope == scope))
        available = limit - used
        if available <= 0:
            return 0
        # What each node still wants: its demand less what it was granted for it already.
        wants = {
            n: float(max(0, getattr(s.wants[scope], kind) - s.got.get((scope, kind), 0)))
            for n, s in self._nodes.items()
            if scope in s.wants
        }
        mine = int(fair_shares(wants, available).get(node, 0.0))
        if mine == 0 and wants.get(node, 0) >= 1:
            mine = 1  # rounding down must not starve a node while the budget has room
        mine = min(mine, available)
        self._nodes[node].got[(scope, kind)] = mine
        return mine

    def _prune(self, now: float) -> None:
        while self._order and self._order[0].at + WINDOW_S <= now + EPSILON:
            self._charges.pop(self._order.popleft().lease_id, None)
        for node in [n for n, s in self._nodes.items() if s.until <= now]:
            del self._nodes[node]  # its share is free for the others


# -- a node's side ----------------------------------------------------------------------------------


@dataclass(slots=True)
class _Held:
    grant: Grant
    until: float
    requests: int | None  # left; None: no limit of that kind
    tokens: int | None


@dataclass(slots=True)
class _Demand:
    requests: int = 0
    tokens: int = 0


@dataclass
class LeaseHolder:
    """What a node holds of each budget, and when it must ask the leader again."""

    settings: RateLimitSettings
    lease_s: float
    on_leader_loss: Literal["refuse", "local"] = "refuse"
    clock: Callable[[], float] = time.monotonic
    # The leader is taken for lost when a request has gone unanswered this long.
    reply_timeout_s: float = 1.0
    _held: dict[str, list[_Held]] = field(default_factory=dict)
    _taken: dict[str, list[tuple[str, _Held, int]]] = field(default_factory=dict)
    _returns: list[Return] = field(default_factory=list)
    _demand: dict[str, _Demand] = field(default_factory=dict)
    _asked_at: float | None = None  # an unanswered request was sent then
    _last_ask: float = float("-inf")
    _lost: bool = False
    _started: float | None = None
    _answered: bool = False  # the leader has answered once
    # what it was granted in the last 60 s, by lease id: (when, the grant's scope, requests, tokens
    # charged, less what it returned), reported while no leader answers (a new one may not know it)
    _granted: dict[str, tuple[float, str, int, int]] = field(default_factory=dict)
    _report: bool = False

    # -- what the limiter asks ------------------------------------------------------------------

    def lack(self, scope: str, limits: Limits, tokens: int) -> str | None:
        """Why the node cannot admit a call of `tokens` in `scope` now: the limit it lacks a
        lease for, "refuse" (no lease and no leader, policy "refuse"), or None: it may."""
        if not limits.uses_window:
            return None
        now = self.clock()
        self._expire(now)
        held = self._held.get(scope, [])
        demand = self._demand.setdefault(scope, _Demand())
        if self.leader_lost(now) and not held:
            if self.on_leader_loss == "local":
                return None  # admitted here: `take` records the demand
            # refused, but still wanted: the node goes on asking, and finds the leader when it is back
            demand.requests = max(demand.requests, 1)
            demand.tokens = max(demand.tokens, tokens)
            return "refuse"
        if limits.requests_per_minute is not None and sum(h.requests or 0 for h in held) < 1:
            demand.requests = max(demand.requests, 1)
            return "requests_per_minute"
        if limits.tokens_per_minute is not None and sum(h.tokens or 0 for h in held) < tokens:
            demand.tokens = max(demand.tokens, tokens)
            return "tokens_per_minute"
        return None

    def take(self, scope: str, request_id: str, limits: Limits, tokens: int) -> None:
        """A call was admitted in `scope`: charge it to the oldest grants that cover it."""
        demand = self._demand.setdefault(scope, _Demand())
        demand.requests += 1
        demand.tokens += tokens
        held = self._held.get(scope)
        if not limits.uses_window or not held:
            return  # admitted under the "local" policy: nothing to charge
        taken = self._taken.setdefault(request_id, [])
        need_request, need_tokens = limits.requests_per_minute is not None, tokens
        for h in held:
            if need_request and h.requests is not None and h.requests >= 1:
                h.requests -= 1
                need_request = False
                taken.append((scope, h, 0))
            if need_tokens and h.tokens is not None and h.tokens > 0:
                part = min(h.tokens, need_tokens)
                h.tokens -= part
                need_tokens -= part
                taken.append((scope, h, part))

    def settle(self, request_id: str, actual_tokens: int | None) -> None:
        """The call ended: replace its token estimate by its real usage in a grant still held."""
        taken = self._taken.pop(request_id, None)
        if not taken or actual_tokens is None:
            return
        for scope in {s for s, _, _ in taken}:
            parts = [(h, part) for s, h, part in taken if s == scope and part]
            if parts and parts[0][0].tokens is not None:  # refund, or charge the overrun
                parts[0][0].tokens = (
                    (parts[0][0].tokens or 0) + sum(p for _, p in parts) - max(actual_tokens, 0)
                )

    # -- talking to the leader ------------------------------------------------------------------

    def due(self, queued: Mapping[str, tuple[int, int]]) -> tuple[list[Want], list[Return]] | None:
        """A request to send now (wants, returns), or None. `queued`: calls and tokens waiting,
        by scope. At most one request is out at a time."""
        now = self.clock()
        if self._started is None:
            self._started = now
        self._expire(now)
        if self._asked_at is not None:
            if now - self._asked_at < self.reply_timeout_s:
                return None
            self._lost = self._report = True  # unanswered: ask again, and meanwhile follow the policy
        scopes = set(self._demand) | set(self._held) | {s for s, (n, _) in queued.items() if n}
        wants = []
        # what it holds must reach a leader that may have restarted, calls or not
        unreported = self._report and bool(self._recent(now))
        urgent = bool(self._returns) or unreported
        for scope in sorted(scopes):
            limits = scope_limits(self.settings, scope)
            if limits is None or not limits.uses_window:
                continue
            demand = self._demand.get(scope, _Demand())
            waiting, waiting_tokens = queued.get(scope, (0, 0))
            held = self._held.get(scope, [])
            have_r = sum(h.requests or 0 for h in held)
            have_t = sum(h.tokens or 0 for h in held)
            # Twice the recent demand: room for growth until the next request shows it.
            want_r = max(0, 2 * (demand.requests + waiting) - have_r)
            want_t = max(0, 2 * (demand.tokens + waiting_tokens) - have_t)
            expiring = any(h.until - now < self.lease_s / 3 for h in held)
            short = (
                waiting > 0 or (want_r > have_r) or (limits.tokens_per_minute is not None and want_t > have_t)
            )
            if short or expiring:
                urgent = True
            if demand.requests or waiting or held:
                wants.append(Want(scope, max(want_r, 1), max(want_t, 1)))
        if not wants and not self._returns and not unreported:
            return None
        if not urgent and now - self._last_ask < self.lease_s / 2:
            return None
        returns, self._returns = self._returns, []
        self._demand = {}
        self._asked_at = self._last_ask = now
        return wants, returns

    def granted(self, grants: Iterable[Grant]) -> None:
        """The leader's answer to the request out. Each grant counts from when it was asked for."""
        now = self.clock()
        since = self._asked_at if self._asked_at is not None else now
        for g in grants:
            self._held.setdefault(g.scope, []).append(_Held(g, since + g.lasts_s, g.requests, g.tokens))
            self._granted[g.lease_id] = (since, g.scope, g.requests or 0, g.tokens or 0)
        self._asked_at = None
        self._lost = self._report = False
        self._answered = True

    def report(self) -> tuple[Charged, ...]:
        """What to tell the leader it granted in the last 60 s: everything, while no leader has
        answered since one was lost (it may have restarted with an empty ledger); else nothing."""
        now = self.clock()
        if not self._report:
            return ()
        return tuple(Charged(i, s, now - at, r, t) for i, (at, s, r, t) in self._recent(now).items())

    def _recent(self, now: float) -> dict[str, tuple[float, str, int, int]]:
        for lease_id, (at, *_) in list(self._granted.items()):
            if now - at >= WINDOW_S:
                del self._granted[lease_id]
        return self._granted

    def unreachable(self) -> None:
        """The request could not be delivered: the leader is gone."""
        self._asked_at = None
        self._lost = self._report = True

    def leader_lost(self, now: float | None = None) -> bool:
        now = self.clock() if now is None else now
        if not self._answered and self._started is not None and now - self._started < self.lease_s:
            return False  # still joining: the leader may not be up yet; calls wait meanwhile
        if self._asked_at is not None and now - self._asked_at >= self.reply_timeout_s:
            return True
        return self._lost

    def holding(self, scope: str) -> tuple[int, int]:
        """Requests and tokens left in the unexpired grants of `scope`."""
        self._expire(self.clock())
        held = self._held.get(scope, [])
        return sum(h.requests or 0 for h in held), sum(h.tokens or 0 for h in held)

    def _expire(self, now: float) -> None:
        for scope, held in list(self._held.items()):
            alive = [h for h in held if h.until > now + EPSILON]
            for h in held:
                if h.until <= now + EPSILON:
                    self._returns.append(Return(h.grant.lease_id, h.requests or 0, h.tokens or 0))
                    past = self._granted.get(h.grant.lease_id)
                    if past is not None:  # what the leader refunds is no longer charged
                        at, scope_, r, t = past
                        self._granted[h.grant.lease_id] = (
                            at,
                            scope_,
                            r - min(max(h.requests or 0, 0), r),
                            max(0, t - (h.tokens or 0)),
                        )
            if alive:
                self._held[scope] = alive
            else:
                del self._held[scope]
