"""State shared by every simulated provider: fault switches, latency and counters.

Providers' documented limits (Graph's four concurrent requests, Gmail's quota units) live
in their own packages; what is common is here: how a request is admitted (latency, random
throttling, Retry-After bookkeeping) and what is counted about it.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import defaultdict
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, Field

# Seconds of slack around a Retry-After window unless a test sets its own.
RETRY_AFTER_GRACE = 0.1


class FaultSettings(BaseModel):
    """Switches set through `/_sim/faults`; all off by default."""

    latency_ms: float = Field(default=0.0, ge=0)
    # Probability that a provider API request is answered 429 (with Retry-After).
    throttle_rate: float = Field(default=0.0, ge=0, le=1)
    # Probability that a provider API request is answered 503 (with Retry-After).
    unavailable_rate: float = Field(default=0.0, ge=0, le=1)
    retry_after_seconds: float = Field(default=1.0, ge=0)
    # Gmail per-user quota enforcement (units per second, moving average); 0 turns it off.
    gmail_quota_units_per_second: float = Field(default=250.0, ge=0)
    # Gmail history retention: a startHistoryId older than this many history records → 404.
    gmail_history_retention: int = Field(default=100_000, ge=1)
    # Gmail's per-user concurrency limit, off when 0: every request and every batch part
    # Gmail works on at once counts; the excess is answered 429 "Too many concurrent
    # requests for user." without Retry-After. The limit a batch meets varies by
    # ±jitter around this value (large batches fail often, 50-part ones sometimes).
    gmail_user_concurrency: int = Field(default=0, ge=0)
    gmail_user_concurrency_jitter: float = Field(default=0.5, ge=0, le=1)
    # How a per-user quota refusal looks: 429 or 403, reason rateLimitExceeded or
    # userRateLimitExceeded; the wait is only in the message ("Retry after <RFC 3339>")
    # unless the header is switched on.
    gmail_quota_status: Literal[429, 403] = 429
    gmail_quota_reason: Literal["rateLimitExceeded", "userRateLimitExceeded"] = "rateLimitExceeded"
    gmail_quota_retry_after_header: bool = False
    # Batch answers: parts in an order of their own, parts without Content-Length.
    gmail_batch_shuffle: bool = False
    gmail_batch_content_length: bool = True
    # Graph concurrent requests per mailbox before a 429.
    graph_max_concurrency: int = Field(default=4, ge=1)
    # Graph's MailboxConcurrency 429 often comes without a Retry-After header.
    graph_concurrency_retry_after: bool = False
    # Slack around a Retry-After window before a request counts as a violation: requests
    # the client sent before it could read the 429 (in flight, or queued behind the 429's
    # read on a busy machine) and timer granularity.
    retry_after_grace_ms: float = Field(default=RETRY_AFTER_GRACE * 1000, ge=0)
    seed: int | None = None


@dataclass
class AccountCounters:
    requests: int = 0
    throttled: int = 0
    token_refreshes: int = 0
    concurrency_peak: int = 0
    retry_after_violations: int = 0
    in_flight: int = 0
    quota_units: int = 0
    # Gmail requests and batch parts refused for the per-user concurrency limit.
    concurrency_refused: int = 0
    # Requests answered, per API method (Gmail: users.messages.list, ...; batch parts each).
    methods: dict[str, int] = field(default_factory=dict)


@dataclass
class Counters:
    accounts: dict[str, AccountCounters] = field(
        default_factory=lambda: defaultdict(AccountCounters)
    )
    token_requests: int = 0

    def for_account(self, account: str) -> AccountCounters:
        return self.accounts[account]

    def snapshot(self) -> dict[str, Any]:
        totals = AccountCounters()
        for c in self.accounts.values():
            totals.requests += c.requests
            totals.throttled += c.throttled
            totals.token_refreshes += c.token_refreshes
            totals.concurrency_peak = max(totals.concurrency_peak, c.concurrency_peak)
            totals.retry_after_violations += c.retry_after_violations
            totals.quota_units += c.quota_units
            totals.concurrency_refused += c.concurrency_refused
            for method, count in c.methods.items():
                totals.methods[method] = totals.methods.get(method, 0) + count
        return {
            "token_requests": self.token_requests,
            "totals": asdict(totals),
            "accounts": {k: asdict(v) for k, v in self.accounts.items()},
        }


class Throttled(Exception):
    """Raised by `admit` when the request must be answered 429/503 with Retry-After."""

    def __init__(self, status: int, retry_after: float | None, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.retry_after = retry_after
        self.reason = reason


class SimulatorCore:
    """Holds fault settings and counters; one instance per simulator process."""

    def __init__(self, faults: FaultSettings | None = None) -> None:
        self.faults = faults or FaultSettings()
        self.counters = Counters()
        self._rng = random.Random(self.faults.seed)
        # account -> (when we said it, monotonic time before which it must not come back)
        self._retry_after_until: dict[str, tuple[float, float]] = {}

    def set_faults(self, faults: FaultSettings) -> None:
        self.faults = faults
        self._rng = random.Random(faults.seed)

    @property
    def rng(self) -> random.Random:
        """The fault dice, seeded by `FaultSettings.seed` for reproducible runs."""
        return self._rng

    def reset_counters(self) -> None:
        self.counters = Counters()
        self._retry_after_until.clear()

    def told_to_wait(self, account: str, seconds: float) -> None:
        """Remember a Retry-After we sent, to count clients that come back too early."""
        now = time.monotonic()
        until = now + seconds
        told_at, previous = self._retry_after_until.get(account, (now, 0.0))
        self._retry_after_until[account] = (
            told_at if previous > now else now,
            max(previous, until),
        )

    @asynccontextmanager
    async def admit(
        self, account: str, *, max_concurrency: int | None = None
    ) -> AsyncIterator[AccountCounters]:
        """Admit one provider API request for `account`, or raise Throttled.

        Counts the request, a Retry-After violation (a request that arrives before the
        Retry-After it was given), concurrency, random 429/503, and applies latency while
        the request is in flight so concurrency is observable.
        """
        c = self.counters.for_account(account)
        c.requests += 1
        now = time.monotonic()
        window = self._retry_after_until.get(account)
        if window is not None:
            told_at, until = window
            # A request that was already on its way when the 429 left is not a violation:
            # only one sent after the client could have read the Retry-After counts.
            # (Small tolerances absorb scheduling jitter on both sides.)
            grace = self.faults.retry_after_grace_ms / 1000
            if told_at + grace <= now < until - grace:
                c.retry_after_violations += 1
            elif now >= until:
                del self._retry_after_until[account]
        if max_concurrency is not None and c.in_flight >= max_concurrency:
            c.throttled += 1
            if not self.faults.graph_concurrency_retry_after:
                raise Throttled(429, None, "too many concurrent requests")
            wait = max(self.faults.retry_after_seconds, 0.0)
            self.told_to_wait(account, wait)
            raise Throttled(429, wait, "too many concurrent requests")
        roll = self._rng.random()
        if roll < self.faults.throttle_rate:
            c.throttled += 1
            self.told_to_wait(account, self.faults.retry_after_seconds)
            raise Throttled(429, self.faults.retry_after_seconds, "throttled")
        if roll < self.faults.throttle_rate + self.faults.unavailable_rate:
            c.throttled += 1
            self.told_to_wait(account, self.faults.retry_after_seconds)
            raise Throttled(503, self.faults.retry_after_seconds, "service unavailable")
        c.in_flight += 1
        c.concurrency_peak = max(c.concurrency_peak, c.in_flight)
        finish_at = time.monotonic() + self.faults.latency_ms / 1000
        try:
            if self.faults.latency_ms:
                await asyncio.sleep(self.faults.latency_ms / 1000)
            yield c
        finally:
            # A request its client gave up on is still worked on at the provider: it keeps
            # its place among the mailbox's concurrent requests until it would have ended.
            remaining = finish_at - time.monotonic()
            if remaining > 0:
                asyncio.get_running_loop().call_later(remaining, self._leave, c)
            else:
                c.in_flight -= 1

    @staticmethod
    def _leave(c: AccountCounters) -> None:
        c.in_flight -= 1
