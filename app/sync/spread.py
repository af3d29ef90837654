"""When a mailbox's periodic pass comes: at its own phase of the interval.

Each mailbox owns a fixed moment within the periodic interval (its phase, from its id, which
is random), and its next periodic pass is the first such moment at least half an interval
after the pass that completed. Mailboxes connected in one burst, or whose passes all came
due while the workers were down, are therefore spread evenly over the interval instead of
coming due together. The scheduler computes the same phase in SQL when it moves a late
periodic pass to its next slot (app/db/repositories/mailboxes.py `reslot_late`).
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime


def phase_of(mailbox_id: uuid.UUID, interval: float) -> float:
    """Seconds into each interval at which this mailbox's periodic pass falls."""
    millis = max(int(interval * 1000), 1)
    # The first 32 bits of the id: the SQL side reads the same eight hex digits.
    return (int(mailbox_id.hex[:8], 16) % millis) / 1000


def next_periodic_pass(
    mailbox_id: uuid.UUID, interval: float, now: datetime | None = None
) -> datetime:
    """The mailbox's next slot, between half an interval and one and a half from now."""
    now = now or datetime.now(UTC)
    earliest = now.timestamp() + interval / 2
    slot = earliest - (earliest % interval) + phase_of(mailbox_id, interval)
    if slot < earliest:
        slot += interval
    return datetime.fromtimestamp(slot, UTC)
