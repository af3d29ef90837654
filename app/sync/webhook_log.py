"""What the webhook audit log says about a request, and how a flood is kept from filling it.

Every request to a webhook route ends in one of these outcomes. Verified notifications
(`accepted`, `duplicate`, `lifecycle`) are each stored: they are what a pass is owed for.
Everything else can be sent by anyone, as fast as they like, so past
`WEBHOOK_LOG_REFUSALS_PER_MINUTE` per minute, identical outcomes from one source are
counted and written as one row per minute instead (`aggregated`, with `count`).
"""

from __future__ import annotations

import enum
import logging
import time
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime


class WebhookOutcome(enum.StrEnum):
    # A verified change notification: recorded, and a pass is owed for it.
    ACCEPTED = "accepted"
    # The same notification as one recorded since the mailbox's last pass began: that
    # pass (or the one already owed) covers it, so nothing more is owed.
    DUPLICATE = "duplicate"
    # Graph's subscription validation handshake (the token echoed back).
    VALIDATION = "validation"
    # A verified Graph lifecycle notification (reauthorizationRequired, subscriptionRemoved,
    # missed).
    LIFECYCLE = "lifecycle"
    # A Graph notification for a known subscription with a clientState that is not its own.
    FORGED_CLIENT_STATE = "forged_client_state"
    # A subscription (Graph) or an address (Gmail) we do not know, or of a disconnected mailbox.
    UNKNOWN_SUBSCRIPTION = "unknown_subscription"
    # A Pub/Sub push without an Authorization header (a push subscription without
    # authentication), and one whose OIDC token does not verify.
    MISSING_TOKEN = "missing_token"  # noqa: S105 - an outcome name
    BAD_TOKEN = "bad_token"  # noqa: S105 - an outcome name
    # Not a notification: not JSON, the wrong shape or types, too large.
    MALFORMED = "malformed"
    # We could not verify it now (Google's keys unreachable, push verification not configured).
    UNAVAILABLE = "unavailable"


# Outcomes of verified notifications: stored one row each, never counted away.
VERIFIED = frozenset({WebhookOutcome.ACCEPTED, WebhookOutcome.DUPLICATE, WebhookOutcome.LIFECYCLE})


@dataclass(frozen=True, slots=True)
class CountedRefusals:
    """Requests past the rate in one minute: one row of the log."""

    minute: datetime
    provider: str
    outcome: WebhookOutcome
    source: str
    count: int


# A source beyond this many distinct keys in one minute is counted as "*": the counter's
# memory (and the rows it writes) stay bounded however many addresses a flood comes from.
MAX_KEYS_PER_MINUTE = 1000
OTHER_SOURCES = "*"


class RefusalCounter:
    """Per minute and per (provider, outcome, source): the first `per_minute` requests are
    recorded one by one, the rest only counted. Process-local: each API process keeps its
    own, so the bound is per process."""

    def __init__(self, per_minute: int) -> None:
        self.per_minute = per_minute
        self._minute = self._current_minute()
        self._seen: Counter[tuple[str, WebhookOutcome, str]] = Counter()
        self._over: Counter[tuple[str, WebhookOutcome, str]] = Counter()
        self._closed: list[CountedRefusals] = []

    @staticmethod
    def _current_minute() -> int:
        return int(time.time() // 60)

    def _roll(self) -> None:
        minute = self._current_minute()
        if minute == self._minute:
            return
        start = datetime.fromtimestamp(self._minute * 60, UTC)
        self._closed.extend(
            CountedRefusals(start, provider, outcome, source, count)
            for (provider, outcome, source), count in sorted(self._over.items())
        )
        self._minute = minute
        self._seen.clear()
        self._over.clear()

    def admit(self, provider: str, outcome: WebhookOutcome, source: str | None) -> bool:
        """True: record this request in full. False: it was counted."""
        if outcome in VERIFIED:
            return True
        self._roll()
        key = (provider, outcome, source or "")
        if key not in self._seen and len(self._seen) >= MAX_KEYS_PER_MINUTE:
            key = (provider, outcome, OTHER_SOURCES)
        self._seen[key] += 1
        if self._seen[key] <= self.per_minute:
            return True
        self._over[key] += 1
        return False

    def closed(self, *, everything: bool = False) -> list[CountedRefusals]:
        """Counts of the minutes that have ended (with `everything`, the current one too),
        each handed out once."""
        self._roll()
        if everything and self._over:
            start = datetime.fromtimestamp(self._minute * 60, UTC)
            self._closed.extend(
                CountedRefusals(start, provider, outcome, source, count)
                for (provider, outcome, source), count in sorted(self._over.items())
            )
            self._over.clear()
        closed, self._closed = self._closed, []
        return closed


class OncePerInterval:
    """A log line that says what to do, at most once per interval however often the cause
    repeats, with how many times it happened since the last one."""

    def __init__(self, logger: logging.Logger, seconds: float = 60.0) -> None:
        self._log = logger
        self._seconds = seconds
        self._last: float | None = None
        self._since = 0

    def warning(self, message: str, *args: object) -> bool:
        self._since += 1
        now = time.monotonic()
        if self._last is not None and now - self._last < self._seconds:
            return False
        self._log.warning(message + " (%d times since the last such line)", *args, self._since)
        self._last = now
        self._since = 0
        return True
