"""Backfill partitions: a large stream's first enumeration as leased windows.

A stream being partitioned has a `backfill_streams` row (its live cursor) and one
`backfill_partitions` row per window. A window is a lease like a mailbox's: claiming it
bumps its fencing token, and every write of its pages checks that token, so a worker whose
lease lapsed (killed, paused, partitioned from PostgreSQL) cannot write anything after
another worker took the window over.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from app.sync import states

_SYNCABLE = sorted(s.value for s in states.SYNCABLE)

# The open windows `p` that may run now: of their stream's current plan and generation (a
# stream restarted since runs none of its old windows), of a mailbox that may sync (not
# paused, not parked). Claims, shares and the recovery cron read windows through it.
_RUNNABLE_WINDOWS = """
      FROM backfill_partitions p
      JOIN backfill_streams s
        ON s.mailbox_id = p.mailbox_id AND s.stream_key = p.stream_key
       AND s.generation = p.generation
      JOIN sync_cursors c
        ON c.mailbox_id = s.mailbox_id AND c.stream_key = s.stream_key
       AND c.generation = s.generation
      JOIN mailboxes m ON m.id = p.mailbox_id
     WHERE NOT p.done AND m.status = ANY(CAST(:syncable AS text[])) AND NOT m.paused
"""


class PartitionLost(Exception):
    """The partition's lease lapsed or was taken over: the caller must stop and roll back."""


@dataclass(frozen=True, slots=True)
class PartitionLease:
    partition_id: int
    mailbox_id: uuid.UUID
    stream_key: str
    generation: int
    owner: str
    fencing_token: int
    window_start: datetime | None
    window_end: datetime | None
    checkpoint: dict[str, Any] | None
    listed: int


@dataclass(frozen=True, slots=True)
class WindowEnd:
    """A window's end as its row says now (None: open-ended)."""

    at: datetime | None


@dataclass(frozen=True, slots=True)
class HeldWindow:
    """A window another worker holds, and how far it has listed."""

    partition_id: int
    provider: str
    stream_key: str
    window_end: datetime | None
    # The received times its pages have covered so far, and how many messages they held.
    listed_from: datetime
    listed_before: datetime
    listed: int
    # The database's clock when it was read: an open window ends now.
    now: datetime


@dataclass(frozen=True, slots=True)
class PlannedWindow:
    start: datetime | None
    end: datetime | None


@dataclass(frozen=True, slots=True)
class StreamBackfill:
    stream_key: str
    generation: int
    live_cursor: dict[str, Any]
    open_partitions: int


class PartitionRepository:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    # -- planning ---------------------------------------------------------------------

    async def plan(
        self,
        mailbox_id: uuid.UUID,
        stream_key: str,
        generation: int,
        live_cursor: dict[str, Any],
        windows: Sequence[PlannedWindow],
    ) -> list[int]:
        """Record the stream's live cursor and its windows; a plan of an older generation
        (a stream restarted since) is replaced. Returns the new partitions' ids."""
        await self.session.execute(
            text("DELETE FROM backfill_streams WHERE mailbox_id = :id AND stream_key = :key"),
            {"id": mailbox_id, "key": stream_key},
        )
        await self.session.execute(
            text(
                """
                INSERT INTO backfill_streams (mailbox_id, stream_key, generation, live_cursor)
                VALUES (:id, :key, :generation, CAST(:cursor AS jsonb))
                """
            ),
            {
                "id": mailbox_id,
                "key": stream_key,
                "generation": generation,
                "cursor": json.dumps(live_cursor),
            },
        )
        result = await self.session.execute(
            text(
                """
                INSERT INTO backfill_partitions (mailbox_id, stream_key, generation,
                                                 window_start, window_end)
                SELECT :id, :key, :generation, w.window_start, w.window_end
                  FROM jsonb_to_recordset(CAST(:windows AS jsonb))
                       AS w(window_start timestamptz, window_end timestamptz)
             RETURNING id
                """
            ),
            {
                "id": mailbox_id,
                "key": stream_key,
                "generation": generation,
                "windows": json.dumps(
                    [
                        {
                            "window_start": w.start.isoformat() if w.start else None,
                            "window_end": w.end.isoformat() if w.end else None,
                        }
                        for w in windows
                    ]
                ),
            },
        )
        return sorted(int(r) for r in result.scalars().all())

    async def active(self, mailbox_id: uuid.UUID) -> dict[str, StreamBackfill]:
        """The mailbox's streams being partitioned at their current generation (a plan left
        by a generation restarted since does not count), with their open windows."""
        result = await self.session.execute(
            text(
                """
                SELECT s.stream_key, s.generation, s.live_cursor,
                       (SELECT count(*) FROM backfill_partitions p
                         WHERE p.mailbox_id = s.mailbox_id AND p.stream_key = s.stream_key
                           AND NOT p.done)
                  FROM backfill_streams s
                  JOIN sync_cursors c
                    ON c.mailbox_id = s.mailbox_id AND c.stream_key = s.stream_key
                   AND c.generation = s.generation
                 WHERE s.mailbox_id = :id
                """
            ),
            {"id": mailbox_id},
        )
        return {r[0]: StreamBackfill(r[0], int(r[1]), r[2], int(r[3])) for r in result.all()}

    async def forget_stale(self, mailbox_id: uuid.UUID) -> None:
        """Drop plans whose stream is gone or has been restarted (a new generation)."""
        await self.session.execute(
            text(
                """
                DELETE FROM backfill_streams s
                 WHERE s.mailbox_id = :id
                   AND NOT EXISTS (SELECT 1 FROM sync_cursors c
                                    WHERE c.mailbox_id = s.mailbox_id
                                      AND c.stream_key = s.stream_key
                                      AND c.generation = s.generation)
                """
            ),
            {"id": mailbox_id},
        )

    # -- leases -----------------------------------------------------------------------

    async def claim(self, mailbox_id: uuid.UUID, owner: str, seconds: int) -> PartitionLease | None:
        """Take one open window of the mailbox whose lease is free or lapsed, skipping the
        ones other workers are claiming this instant; None when there is none to take.

        Only windows of the stream's current generation of a mailbox that may sync now: a
        stream restarted since, or a paused or disconnected mailbox, runs none."""
        result = await self.session.execute(
            text(
                f"""
                UPDATE backfill_partitions AS w
                   SET lease_owner = :owner,
                       lease_expires_at = now() + make_interval(secs => :seconds),
                       fencing_token = w.fencing_token + 1,
                       updated_at = now()
                  FROM (SELECT p.id {_RUNNABLE_WINDOWS}
                           AND p.mailbox_id = :id
                           AND (p.lease_owner IS NULL OR p.lease_expires_at < now())
                         ORDER BY p.window_start NULLS FIRST, p.id
                         LIMIT 1
                           FOR UPDATE OF p SKIP LOCKED) AS free
                 WHERE w.id = free.id
             RETURNING w.id, w.mailbox_id, w.stream_key, w.generation, w.fencing_token,
                       w.window_start, w.window_end, w.checkpoint, w.listed
                """  # noqa: S608 - a constant fragment
            ),
            {"id": mailbox_id, "owner": owner, "seconds": seconds, "syncable": _SYNCABLE},
        )
        row = result.one_or_none()
        return None if row is None else _lease(row, owner)

    async def heartbeat(self, lease: PartitionLease, seconds: int) -> bool:
        """Renew the lease without writing anything else; False when it is no longer held."""
        result = await self.session.execute(
            text(
                """
                UPDATE backfill_partitions
                   SET lease_expires_at = now() + make_interval(secs => :seconds)
                 WHERE id = :id AND fencing_token = :token AND lease_owner = :owner
                   AND lease_expires_at > now() AND NOT done
                """
            ),
            self._fence_params(lease) | {"seconds": seconds},
        )
        return bool(result.rowcount == 1)  # type: ignore[attr-defined]

    async def checkpoint(
        self,
        lease: PartitionLease,
        seconds: int,
        *,
        checkpoint: dict[str, Any] | None,
        listed: int,
        done: bool,
        listed_from: datetime | None = None,
        listed_before: datetime | None = None,
    ) -> WindowEnd:
        """A page's position in its window, in the page's transaction; renews the lease.
        Returns the window's end as it is now: another worker may have taken the second
        half of what the window had left (`steal`). Raises PartitionLost when the lease is
        no longer held, or the mailbox was paused or disconnected meanwhile (the page must
        roll back)."""
        result = await self.session.execute(
            text(
                """
                UPDATE backfill_partitions AS p
                   SET checkpoint = CAST(:checkpoint AS jsonb), listed = listed + :listed,
                       done = :done, listed_before = :listed_before,
                       listed_from = COALESCE(listed_from, :listed_from),
                       lease_expires_at = now() + make_interval(secs => :seconds),
                       updated_at = now()
                 WHERE id = :id AND fencing_token = :token AND lease_owner = :owner
                   AND lease_expires_at > now() AND NOT done
                   -- Paused or disconnected since the claim: nothing more is written.
                   AND EXISTS (SELECT 1 FROM mailboxes m
                                WHERE m.id = p.mailbox_id AND NOT m.paused
                                  AND m.status = ANY(CAST(:syncable AS text[])))
             RETURNING p.window_end
                """
            ),
            self._fence_params(lease)
            | {
                "syncable": _SYNCABLE,
                "checkpoint": None if checkpoint is None else json.dumps(checkpoint),
                "listed": listed,
                "done": done,
                "seconds": seconds,
                "listed_before": listed_before,
                "listed_from": listed_from if listed_before is not None else None,
            },
        )
        row = result.one_or_none()
        if row is None:
            raise PartitionLost(f"partition {lease.partition_id} is no longer held")
        return WindowEnd(row[0])

    async def split(self, lease: PartitionLease, at: datetime) -> int | None:
        """The window turned out large: it ends at `at` from now on, and a new window takes
        [at, its end). Fenced like a page. Returns the new partition's id, or None when the
        window already ends at `at` or before (another worker took part of it meanwhile)."""
        current = await self.session.execute(
            text(
                """
                SELECT window_end FROM backfill_partitions
                 WHERE id = :id AND fencing_token = :token AND lease_owner = :owner
                   AND lease_expires_at > now() AND NOT done
                   FOR UPDATE
                """
            ),
            self._fence_params(lease),
        )
        row = current.one_or_none()
        if row is None:
            raise PartitionLost(f"partition {lease.partition_id} is no longer held")
        end: datetime | None = row[0]
        if end is not None and end <= at:
            return None
        result = await self.session.execute(
            text(
                """
                WITH shrunk AS (
                    UPDATE backfill_partitions SET window_end = :at, updated_at = now()
                     WHERE id = :id
                 RETURNING mailbox_id, stream_key, generation
                )
                INSERT INTO backfill_partitions (mailbox_id, stream_key, generation,
                                                 window_start, window_end)
                SELECT mailbox_id, stream_key, generation, :at, :old_end FROM shrunk
             RETURNING id
                """
            ),
            {"id": lease.partition_id, "at": at, "old_end": end},
        )
        return int(result.scalar_one())

    async def shared_candidates(self, mailbox_id: uuid.UUID) -> list[HeldWindow]:
        """Windows of the mailbox other workers hold now that know how far they have
        listed: what an idle worker may take half of (`steal`)."""
        result = await self.session.execute(
            text(
                f"""
                SELECT p.id, m.provider, p.stream_key, p.window_end, p.listed_from,
                       p.listed_before, p.listed, now()
                {_RUNNABLE_WINDOWS}
                   AND p.mailbox_id = :id
                   AND p.listed_before IS NOT NULL AND p.listed_from IS NOT NULL
                   AND p.lease_owner IS NOT NULL AND p.lease_expires_at >= now()
                """
            ),
            {"id": mailbox_id, "syncable": _SYNCABLE},
        )
        return [
            HeldWindow(int(r[0]), r[1], r[2], r[3], r[4], r[5], int(r[6]), r[7]) for r in result
        ]

    async def steal(
        self, victim: HeldWindow, at: datetime, owner: str, seconds: int
    ) -> PartitionLease | None:
        """Take [at, end) of a window another worker holds, as a new window leased to
        `owner`: the holder learns its new end with its next page (`checkpoint`). Nothing
        happens (None) when the window changed since it was read (done, split, shared, or
        listed past `at`); waits for the holder's page in flight to commit, if any."""
        result = await self.session.execute(
            text(
                """
                WITH victim AS (
                    SELECT id, mailbox_id, stream_key, generation, window_end
                      FROM backfill_partitions
                     WHERE id = :id AND NOT done
                       AND window_end IS NOT DISTINCT FROM CAST(:end AS timestamptz)
                       AND listed_before < :at
                       FOR UPDATE
                ), shrunk AS (
                    UPDATE backfill_partitions p SET window_end = :at, updated_at = now()
                      FROM victim WHERE p.id = victim.id
                 RETURNING victim.mailbox_id, victim.stream_key, victim.generation,
                           victim.window_end
                )
                INSERT INTO backfill_partitions (mailbox_id, stream_key, generation,
                                                 window_start, window_end, lease_owner,
                                                 lease_expires_at, fencing_token)
                SELECT mailbox_id, stream_key, generation, :at, window_end, :owner,
                       now() + make_interval(secs => :seconds), 1
                  FROM shrunk
             RETURNING id, mailbox_id, stream_key, generation, fencing_token, window_start,
                       window_end, checkpoint, listed
                """
            ),
            {
                "id": victim.partition_id,
                "end": victim.window_end,
                "at": at,
                "owner": owner,
                "seconds": seconds,
            },
        )
        row = result.one_or_none()
        return None if row is None else _lease(row, owner)

    async def release(self, lease: PartitionLease) -> None:
        """Give the window back (its slice's budget is spent) so any worker may go on."""
        await self.session.execute(
            text(
                """
                UPDATE backfill_partitions
                   SET lease_owner = NULL, lease_expires_at = NULL, updated_at = now()
                 WHERE id = :id AND fencing_token = :token AND lease_owner = :owner
                """
            ),
            self._fence_params(lease),
        )

    @staticmethod
    def _fence_params(lease: PartitionLease) -> dict[str, Any]:
        return {"id": lease.partition_id, "token": lease.fencing_token, "owner": lease.owner}

    # -- completion -------------------------------------------------------------------

    async def lock_finished_stream(
        self, mailbox_id: uuid.UUID, stream_key: str
    ) -> StreamBackfill | None:
        """The stream's backfill, locked, when every window of it is done; None when a
        window is still open or the stream was already finished (by another worker)."""
        result = await self.session.execute(
            text(
                """
                SELECT s.stream_key, s.generation, s.live_cursor
                  FROM backfill_streams s
                 WHERE s.mailbox_id = :id AND s.stream_key = :key
                   FOR UPDATE
                """
            ),
            {"id": mailbox_id, "key": stream_key},
        )
        row = result.one_or_none()
        if row is None:
            return None
        open_left = await self.session.execute(
            text(
                "SELECT count(*) FROM backfill_partitions "
                "WHERE mailbox_id = :id AND stream_key = :key AND NOT done"
            ),
            {"id": mailbox_id, "key": stream_key},
        )
        if int(open_left.scalar_one()) > 0:
            return None
        return StreamBackfill(row[0], int(row[1]), row[2], 0)

    async def forget_stream(self, mailbox_id: uuid.UUID, stream_key: str) -> None:
        """The stream's backfill is over (or abandoned): its windows go with it."""
        await self.session.execute(
            text("DELETE FROM backfill_streams WHERE mailbox_id = :id AND stream_key = :key"),
            {"id": mailbox_id, "key": stream_key},
        )

    async def count_enumerated(
        self, mailbox_id: uuid.UUID, stream_key: str, generation: int, listed: int
    ) -> None:
        """A window's page counts toward its stream's enumeration progress."""
        if not listed:
            return
        await self.session.execute(
            text(
                """
                UPDATE sync_cursors SET enumerated = enumerated + :listed, updated_at = now()
                 WHERE mailbox_id = :id AND stream_key = :key AND generation = :generation
                """
            ),
            {"id": mailbox_id, "key": stream_key, "generation": generation, "listed": listed},
        )

    async def mailboxes_with_claimable(self, limit: int) -> list[tuple[uuid.UUID, int]]:
        """Mailboxes with a window whose lease lapsed (a dead worker's), or with open windows
        and none held (their jobs lost with Redis), with a number that changes with each
        claim (for job ids)."""
        result = await self.session.execute(
            text(
                f"""
                SELECT p.mailbox_id, max(p.fencing_token) + max(p.id)
                {_RUNNABLE_WINDOWS}
                 GROUP BY p.mailbox_id
                -- A lapsed lease, or open windows and no live lease at all (no job running).
                HAVING bool_or(p.lease_owner IS NOT NULL AND p.lease_expires_at < now())
                    OR NOT bool_or(p.lease_owner IS NOT NULL AND p.lease_expires_at >= now())
                 LIMIT :limit
                """
            ),
            {"limit": limit, "syncable": _SYNCABLE},
        )
        return [(r[0], int(r[1])) for r in result.all()]

    async def count_synced(self, mailbox_id: uuid.UUID, delta: int) -> bool:
        """A window's page moves its mailbox's progress (without the mailbox's lease, which
        the windows do not hold: their own fences guard them). Returns whether the mailbox
        belongs to a case, read under the row's lock like MailboxRepository.fence."""
        result = await self.session.execute(
            text(
                """
                UPDATE mailboxes
                   SET messages_synced = GREATEST(messages_synced + :delta, 0),
                       updated_at = now()
                 WHERE id = :id
             RETURNING EXISTS (SELECT 1 FROM case_mailboxes WHERE mailbox_id = :id)
                """
            ),
            {"id": mailbox_id, "delta": delta},
        )
        return bool(result.scalar_one_or_none())


def _lease(row: Any, owner: str) -> PartitionLease:
    return PartitionLease(
        partition_id=int(row[0]),
        mailbox_id=row[1],
        stream_key=row[2],
        generation=int(row[3]),
        owner=owner,
        fencing_token=int(row[4]),
        window_start=row[5],
        window_end=row[6],
        checkpoint=row[7],
        listed=int(row[8]),
    )
