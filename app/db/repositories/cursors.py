"""Per-stream sync cursors: declared state, saved in the same transaction as the page."""

from __future__ import annotations

import builtins
import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from app.providers.base import StreamInfo
from app.sync.states import StreamMode, StreamProgress


@dataclass(frozen=True, slots=True)
class StreamState:
    stream_key: str
    name: str | None
    labels: tuple[str, ...]
    cursor: dict[str, Any] | None
    mode: str
    generation: int
    caught_up: bool
    total_estimate: int | None
    enumerated: int = 0

    def progress(self) -> StreamProgress:
        return StreamProgress(
            mode=self.mode,
            caught_up=self.caught_up,
            generation=self.generation,
            total_estimate=self.total_estimate,
            enumerated=self.enumerated,
            rebuilding=self.generation > 1,
        )

    def as_stream(self) -> StreamInfo:
        return StreamInfo(
            key=self.stream_key,
            name=self.name or self.stream_key,
            total_estimate=self.total_estimate,
            labels=self.labels,
        )


class CursorRepository:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def list(self, mailbox_id: uuid.UUID) -> list[StreamState]:
        result = await self.session.execute(
            text(
                "SELECT stream_key, name, labels, cursor, mode, generation, caught_up, "
                "total_estimate, enumerated "
                "FROM sync_cursors WHERE mailbox_id = :id ORDER BY stream_key"
            ),
            {"id": mailbox_id},
        )
        return [
            StreamState(
                r[0], r[1], tuple(r[2] or ()), r[3], r[4], int(r[5]), bool(r[6]), r[7], int(r[8])
            )
            for r in result.all()
        ]

    async def progress(
        self, mailbox_ids: Sequence[uuid.UUID]
    ) -> dict[uuid.UUID, builtins.list[StreamProgress]]:
        """What status needs of every stream of these mailboxes, without their cursors."""
        result = await self.session.execute(
            text(
                "SELECT mailbox_id, mode, caught_up, generation, total_estimate, enumerated "
                "FROM sync_cursors WHERE mailbox_id = ANY(CAST(:ids AS uuid[]))"
            ),
            {"ids": list(mailbox_ids)},
        )
        found: dict[uuid.UUID, builtins.list[StreamProgress]] = {mid: [] for mid in mailbox_ids}
        for r in result.all():
            found.setdefault(r[0], []).append(
                StreamProgress(
                    mode=r[1],
                    caught_up=bool(r[2]),
                    generation=int(r[3]),
                    total_estimate=r[4],
                    enumerated=int(r[5]),
                    rebuilding=int(r[3]) > 1,
                )
            )
        return found

    async def sync_streams(self, mailbox_id: uuid.UUID, streams: Sequence[StreamInfo]) -> None:
        """Add new streams, refresh names/labels/totals, drop streams that no longer exist."""
        rows = [
            {"key": s.key, "name": s.name, "labels": list(s.labels), "total": s.total_estimate}
            for s in streams
        ]
        await self.session.execute(
            text(
                """
                INSERT INTO sync_cursors (mailbox_id, stream_key, name, labels, total_estimate, mode,
                                          generation, caught_up)
                SELECT :id, r.key, r.name, r.labels, r.total, :full, 1, false
                  FROM jsonb_to_recordset(CAST(:rows AS jsonb))
                       AS r(key text, name text, labels text[], total bigint)
                ON CONFLICT (mailbox_id, stream_key) DO UPDATE
                   SET name = EXCLUDED.name, labels = EXCLUDED.labels,
                       total_estimate = COALESCE(EXCLUDED.total_estimate, sync_cursors.total_estimate),
                       updated_at = now()
                """
            ),
            {"id": mailbox_id, "rows": json.dumps(rows), "full": StreamMode.FULL.value},
        )
        await self.session.execute(
            text(
                "DELETE FROM sync_cursors WHERE mailbox_id = :id "
                "AND NOT (stream_key = ANY(CAST(:keys AS text[])))"
            ),
            {"id": mailbox_id, "keys": [s.key for s in streams]},
        )

    async def save(
        self,
        mailbox_id: uuid.UUID,
        stream_key: str,
        *,
        cursor: dict[str, Any],
        caught_up: bool,
        mode: StreamMode,
        total_estimate: int | None,
        enumerated: int = 0,
    ) -> None:
        """Store a page's cursor; `enumerated`: messages the page added to a full
        enumeration (the stream's progress)."""
        await self.session.execute(
            text(
                """
                UPDATE sync_cursors
                   SET cursor = CAST(:cursor AS jsonb), caught_up = :caught_up, mode = :mode,
                       total_estimate = COALESCE(:total, total_estimate),
                       enumerated = enumerated + :enumerated, updated_at = now()
                 WHERE mailbox_id = :id AND stream_key = :key
                """
            ),
            {
                "id": mailbox_id,
                "key": stream_key,
                "cursor": json.dumps(cursor),
                "caught_up": caught_up,
                "mode": StreamMode(mode).value,
                "total": total_estimate,
                "enumerated": enumerated,
            },
        )

    async def start_pass(self, mailbox_id: uuid.UUID, only: Sequence[str] | None = None) -> None:
        """Begin a pass: every stream (or only those named) owes one fetch from its cursor
        before the pass ends; the others keep their cursors where they are."""
        if only is None:
            await self.session.execute(
                text("UPDATE sync_cursors SET caught_up = false WHERE mailbox_id = :id"),
                {"id": mailbox_id},
            )
            return
        await self.session.execute(
            text(
                "UPDATE sync_cursors SET caught_up = false "
                "WHERE mailbox_id = :id AND stream_key = ANY(CAST(:keys AS text[]))"
            ),
            {"id": mailbox_id, "keys": list(only)},
        )

    async def drop(self, mailbox_id: uuid.UUID, stream_key: str) -> None:
        """The stream no longer exists at the provider."""
        await self.session.execute(
            text("DELETE FROM sync_cursors WHERE mailbox_id = :id AND stream_key = :key"),
            {"id": mailbox_id, "key": stream_key},
        )

    async def restart(self, mailbox_id: uuid.UUID, stream_key: str) -> int:
        """A dead cursor: start a new full enumeration (new generation) of this stream."""
        result = await self.session.execute(
            text(
                """
                UPDATE sync_cursors
                   SET cursor = NULL, mode = :full, caught_up = false, enumerated = 0,
                       generation = generation + 1, updated_at = now()
                 WHERE mailbox_id = :id AND stream_key = :key
             RETURNING generation
                """
            ),
            {"id": mailbox_id, "key": stream_key, "full": StreamMode.FULL.value},
        )
        return int(result.scalar_one())
