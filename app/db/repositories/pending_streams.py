"""What change notifications pointed to since a pass last began (`pending_streams`), and
where our store last saw each notified message. Rows are written by the webhook log's
statement (app/db/repositories/notifications.py) and taken by the pass that follows them
(app/sync/targets.py)."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from app.providers.base import ChangeHint


@dataclass(frozen=True, slots=True)
class PendingHint:
    hint: ChangeHint
    # The stream our store holds the notified message in; None when it holds none.
    stored_stream: str | None
    # When a notification last pointed to it: a pass takes the hint only as it read it.
    noted_at: datetime


class PendingStreamRepository:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def read(self, mailbox_id: uuid.UUID, limit: int) -> list[PendingHint]:
        """Up to `limit` hints (more than `limit` rows: the caller passes over everything)."""
        result = await self.session.execute(
            text(
                """
                SELECT p.stream_key, p.message_id, p.locate, m.stream_key AS stored, p.noted_at
                  FROM (SELECT stream_key, message_id, locate, noted_at FROM pending_streams
                         WHERE mailbox_id = :id ORDER BY noted_at LIMIT :limit) AS p
                  LEFT JOIN messages m
                    ON p.message_id <> '' AND m.mailbox_id = :id
                   AND m.provider_message_id = p.message_id
                """
            ),
            {"id": mailbox_id, "limit": limit},
        )
        return [
            PendingHint(ChangeHint(row[0], row[1], bool(row[2])), row[3], row[4])
            for row in result.all()
        ]

    async def take(self, mailbox_id: uuid.UUID, hints: Sequence[PendingHint]) -> None:
        """Remove the hints a beginning pass covers, as it read them: one noted again since
        (the message changed again, perhaps moved) stays for the next pass."""
        if not hints:
            return
        await self.session.execute(
            text(
                """
                DELETE FROM pending_streams p
                 USING unnest(CAST(:streams AS text[]), CAST(:messages AS text[]),
                              CAST(:locates AS boolean[]), CAST(:noted AS timestamptz[]))
                       AS t(stream_key, message_id, locate, noted_at)
                 WHERE p.mailbox_id = :id AND p.stream_key = t.stream_key
                   AND p.message_id = t.message_id AND p.locate = t.locate
                   AND p.noted_at = t.noted_at
                """
            ),
            {
                "id": mailbox_id,
                "streams": [h.hint.stream for h in hints],
                "messages": [h.hint.message for h in hints],
                "locates": [h.hint.locate for h in hints],
                "noted": [h.noted_at for h in hints],
            },
        )

    async def note(self, mailbox_id: uuid.UUID, hints: Sequence[ChangeHint]) -> None:
        """Hints for the next pass, noted by a pass (not a notification)."""
        if not hints:
            return
        await self.session.execute(
            text(
                """
                INSERT INTO pending_streams (mailbox_id, stream_key, message_id, locate)
                SELECT CAST(:id AS uuid), stream_key, message_id, locate
                  FROM unnest(CAST(:streams AS text[]), CAST(:messages AS text[]),
                              CAST(:locates AS boolean[])) AS t(stream_key, message_id, locate)
                 ORDER BY 1, 2, 3, 4
                ON CONFLICT (mailbox_id, stream_key, message_id, locate)
                   DO UPDATE SET noted_at = EXCLUDED.noted_at
                """
            ),
            {
                "id": mailbox_id,
                "streams": [h.stream for h in hints],
                "messages": [h.message for h in hints],
                "locates": [h.locate for h in hints],
            },
        )

    async def take_all(self, mailbox_id: uuid.UUID) -> None:
        """A pass over every stream covers every hint noted before it began."""
        await self.session.execute(
            text("DELETE FROM pending_streams WHERE mailbox_id = :id"), {"id": mailbox_id}
        )

    async def any(self, mailbox_id: uuid.UUID) -> bool:
        result = await self.session.execute(
            text("SELECT EXISTS (SELECT 1 FROM pending_streams WHERE mailbox_id = :id)"),
            {"id": mailbox_id},
        )
        return bool(result.scalar_one())
