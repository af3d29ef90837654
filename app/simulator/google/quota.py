"""Gmail's per-user quota: documented units per method, spent from a moving-average bucket.

Google documents 250 quota units per user per second as a moving average that "allows
short bursts" (newer pages say 15,000 per user per minute). A token bucket holding one
second's worth of units, refilled continuously, is that rule: a burst up to the per-second
budget, then the sustained rate.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

# developers.google.com/gmail/api/reference/quota
QUOTA_UNITS: dict[str, int] = {
    "users.getProfile": 1,
    "users.labels.list": 1,
    "users.labels.get": 1,
    "users.labels.create": 5,
    "users.labels.update": 5,
    "users.labels.patch": 5,
    "users.messages.list": 5,
    "users.messages.get": 5,
    "users.messages.attachments.get": 5,
    "users.history.list": 2,
    "users.watch": 100,
    "users.stop": 50,
}


@dataclass
class QuotaBucket:
    """Units available to one user now; starts full."""

    tokens: float | None = None
    updated: float = field(default_factory=time.monotonic)

    def take(self, cost: int, rate: float, *, now: float | None = None) -> float:
        """Spend `cost` units and return 0, or return the seconds until they are available."""
        now = time.monotonic() if now is None else now
        capacity = rate
        tokens = capacity if self.tokens is None else self.tokens
        tokens = min(capacity, tokens + (now - self.updated) * rate)
        self.updated = now
        # A request dearer than a whole second of quota passes on a full bucket; Google
        # would never refuse a single watch() for being larger than its burst.
        needed = min(cost, capacity)
        if tokens >= needed:
            self.tokens = tokens - cost
            return 0.0
        self.tokens = tokens
        return (needed - tokens) / rate
