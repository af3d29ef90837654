"""The transactional outbox: change events written in the same transaction as the change,
claimed and marked by the publisher (app/events/publisher.py).

Order. Ids of concurrent transactions are not commit-ordered (a transaction takes its id at
insert and may commit after one that took a later id), so nothing here uses "id greater
than the last published" as a watermark. Instead a trigger (migration 0005) gives each row
the next `position` of its mailbox while holding the mailbox row's lock, which the writing
transaction keeps until it commits: a mailbox's positions, and its ids, follow commit
order. A publisher publishes a row only when every unpublished row of the same mailbox
before it is in its own claim, so two publishers never interleave one mailbox's events.

EVENTS_ENABLED=false: sessions made for it (app/db/session.py) write no row at all, page,
lifecycle or snapshot alike, since no publisher runs to publish or prune them. The one
switch is here, where every row is written, so no kind of row can be forgotten.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from app.db.session import WRITES_EVENTS

# Listened to by publishers; the insert trigger notifies it (delivered at commit).
NOTIFY_CHANNEL = "mailsync_outbox"


def encode(payload: dict[str, Any]) -> bytes:
    # orjson: a page's row holds the values of up to a thousand messages.
    return orjson.dumps(payload, option=orjson.OPT_NAIVE_UTC)


@dataclass(frozen=True, slots=True)
class OutboxRow:
    id: int
    mailbox_id: uuid.UUID
    position: int | None
    kind: str
    payload: bytes
    created_at: datetime
    # From the mailbox row (None if it is gone): what every event's subject needs.
    user_id: str | None
    provider: str | None
    # An earlier row of the same mailbox is unpublished and held by another publisher:
    # this one must wait for it.
    blocked: bool


@dataclass(frozen=True, slots=True)
class OutboxLag:
    unpublished: int
    oldest_unpublished_at: datetime | None
    last_published_at: datetime | None


_CLAIM = text(
    """
    WITH claimed AS (
        SELECT id, mailbox_id, position, kind, payload, created_at
          FROM outbox_events
         WHERE published_at IS NULL
         ORDER BY id
         LIMIT :limit
           FOR UPDATE SKIP LOCKED
    )
    SELECT c.id, c.mailbox_id, c.position, c.kind, c.payload, c.created_at,
           m.user_id, m.provider,
           EXISTS (SELECT 1 FROM outbox_events e
                    WHERE e.mailbox_id = c.mailbox_id AND e.published_at IS NULL
                      AND e.position < c.position
                      AND e.id NOT IN (SELECT id FROM claimed)) AS blocked
      FROM claimed c LEFT JOIN mailboxes m ON m.id = c.mailbox_id
     -- Positions, not ids, are a mailbox's commit order: an id is drawn before the position
     -- trigger waits for the mailbox lock, which a transaction that changed the mailbox's
     -- status (and raises its lifecycle event) already holds.
     ORDER BY c.mailbox_id, c.position
    """
)


class OutboxRepository:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    @property
    def writes(self) -> bool:
        """False when events are off (EVENTS_ENABLED=false): `add` writes nothing."""
        return bool(self.session.info.get(WRITES_EVENTS, True))

    async def add(self, mailbox_id: uuid.UUID, kind: str, payload: dict[str, Any]) -> None:
        if not self.writes:
            return
        await self.session.execute(
            text("INSERT INTO outbox_events (mailbox_id, kind, payload) VALUES (:id, :kind, :p)"),
            {"id": mailbox_id, "kind": kind, "p": encode(payload)},
        )

    async def lock_mailbox(self, mailbox_id: uuid.UUID) -> bool:
        """Take the lock the position trigger takes, before reading what a row will say: a
        row written from reads made after it sees every change committed before its
        position (a snapshot)."""
        result = await self.session.execute(
            text("SELECT 1 FROM mailboxes WHERE id = :id FOR UPDATE"), {"id": mailbox_id}
        )
        return result.scalar_one_or_none() is not None

    async def for_mailbox(self, mailbox_id: uuid.UUID) -> list[dict[str, Any]]:
        result = await self.session.execute(
            text(
                "SELECT id, position, kind, payload, created_at, published_at FROM outbox_events "
                "WHERE mailbox_id = :id ORDER BY position, id"
            ),
            {"id": mailbox_id},
        )
        return [{**row._mapping, "payload": orjson.loads(row.payload)} for row in result.all()]

    # -- the publisher ----------------------------------------------------------------

    async def claim(self, limit: int) -> list[OutboxRow]:
        """Lock up to `limit` unpublished rows (skipping rows other publishers hold) until
        the caller's transaction ends."""
        result = await self.session.execute(_CLAIM, {"limit": limit})
        return [OutboxRow(*row) for row in result.all()]

    async def mark_published(self, ids: list[int]) -> None:
        if ids:
            await self.session.execute(
                text(
                    "UPDATE outbox_events SET published_at = clock_timestamp() "
                    "WHERE id = ANY(CAST(:ids AS bigint[]))"
                ),
                {"ids": ids},
            )

    async def prune(self, retention_hours: float, limit: int) -> int:
        """Delete up to `limit` rows published more than `retention_hours` ago."""
        result = await self.session.execute(
            text(
                """
                DELETE FROM outbox_events WHERE id IN (
                    SELECT id FROM outbox_events
                     WHERE published_at < now() - make_interval(secs => :seconds)
                     LIMIT :limit FOR UPDATE SKIP LOCKED)
                """
            ),
            {"seconds": retention_hours * 3600, "limit": limit},
        )
        return int(result.rowcount)  # type: ignore[attr-defined]

    async def lag(self) -> OutboxLag:
        row = (
            await self.session.execute(
                text(
                    """
                    SELECT (SELECT count(*) FROM outbox_events WHERE published_at IS NULL),
                           (SELECT min(created_at) FROM outbox_events
                             WHERE published_at IS NULL),
                           (SELECT max(published_at) FROM outbox_events)
                    """
                )
            )
        ).one()
        return OutboxLag(int(row[0]), row[1], row[2])
