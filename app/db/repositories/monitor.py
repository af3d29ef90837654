"""What the completion monitor reads and writes: when each mailbox is checked, what the
store holds per stream and label, suspected differences, repairs, and push health.

Rules (what is verifiable, which push state polls fast, what counts as a difference) are
the caller's, from app/sync/states.py and app/sync/monitor.py; the statements here take
them as parameters.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from app.sync import states
from app.sync.states import MailboxStatus, PushState, RepairState

_VERIFIABLE = sorted(s.value for s in MailboxStatus if states.verifiable(s))
_SYNCABLE = sorted(s.value for s in states.SYNCABLE)


@dataclass(frozen=True, slots=True)
class Counted:
    total: int
    unread: int


@dataclass(frozen=True, slots=True)
class OpenRepair:
    id: int
    scope_kind: str
    scope_key: str
    method: str


@dataclass(frozen=True, slots=True)
class Residual:
    """provider minus stored, as a finished repair left it: what an exact copy still differs by
    (the provider counts something it does not list or enumerate)."""

    total: int
    unread: int | None


class MonitorRepository:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    # -- when to check ----------------------------------------------------------------

    async def schedule_first_checks(self, interval: float) -> int:
        """Give every mailbox that completed its first pass a first check, at a uniformly
        random moment of the interval after that pass (mailboxes connected together are
        not checked together); one connected long ago gets a random moment from now."""
        result = await self.session.execute(
            text(
                """
                UPDATE mailboxes
                   SET next_verify_at = CASE
                         WHEN connected_at > now() - make_interval(secs => :interval)
                         THEN GREATEST(now(),
                                       connected_at + make_interval(secs => :interval * random()))
                         ELSE now() + make_interval(secs => :interval * random()) END
                 WHERE next_verify_at IS NULL AND connected_at IS NOT NULL
                   AND status = ANY(CAST(:verifiable AS text[]))
                """
            ),
            {"interval": float(interval), "verifiable": _VERIFIABLE},
        )
        return int(result.rowcount)  # type: ignore[attr-defined]

    async def due_checks(self, limit: int) -> list[uuid.UUID]:
        result = await self.session.execute(
            text(
                """
                SELECT id FROM mailboxes
                 WHERE next_verify_at <= now() AND status = ANY(CAST(:verifiable AS text[]))
                 ORDER BY next_verify_at
                 LIMIT :limit
                """
            ),
            {"verifiable": _VERIFIABLE, "limit": limit},
        )
        return [row[0] for row in result.all()]

    async def is_due(self, mailbox_id: uuid.UUID) -> bool:
        result = await self.session.execute(
            text("SELECT next_verify_at <= now() FROM mailboxes WHERE id = :id"),
            {"id": mailbox_id},
        )
        return bool(result.scalar_one_or_none())

    async def postpone(self, mailbox_id: uuid.UUID, seconds: float) -> None:
        await self.session.execute(
            text(
                "UPDATE mailboxes SET next_verify_at = now() + make_interval(secs => :s) "
                "WHERE id = :id"
            ),
            {"id": mailbox_id, "s": float(seconds)},
        )

    async def mark_verified(self, mailbox_id: uuid.UUID, next_in: float) -> None:
        """The store matched the provider: say so, and check again an interval later."""
        await self.session.execute(
            text(
                """
                UPDATE mailboxes
                   SET last_verified_at = now(),
                       next_verify_at = now() + make_interval(secs => :next_in),
                       verify_suspect = NULL, verify_suspect_at = NULL, verify_attempts = 0
                 WHERE id = :id
                """
            ),
            {"id": mailbox_id, "next_in": float(next_in)},
        )

    async def suspect(
        self, mailbox_id: uuid.UUID, gaps: dict[str, list[int | None]], recheck_in: float
    ) -> None:
        """A difference seen once: remember it, ask for a pass (it applies any change that
        was in flight) and look again after it."""
        await self.session.execute(
            text(
                """
                UPDATE mailboxes
                   SET verify_suspect = CAST(:gaps AS jsonb), verify_suspect_at = now(),
                       verify_attempts = verify_attempts + 1,
                       next_verify_at = now() + make_interval(secs => :recheck),
                       next_sync_at = LEAST(COALESCE(next_sync_at, now()), now())
                 WHERE id = :id AND status = ANY(CAST(:syncable AS text[]))
                """
            ),
            {
                "id": mailbox_id,
                "gaps": json.dumps(gaps),
                "recheck": float(recheck_in),
                "syncable": _SYNCABLE,
            },
        )

    async def clear_suspect(self, mailbox_id: uuid.UUID, next_in: float) -> None:
        """Forget a suspected difference (repaired, or it kept moving while changes arrived)
        and look again in `next_in` seconds."""
        await self.session.execute(
            text(
                """
                UPDATE mailboxes
                   SET verify_suspect = NULL, verify_suspect_at = NULL, verify_attempts = 0,
                       next_verify_at = now() + make_interval(secs => :next_in)
                 WHERE id = :id
                """
            ),
            {"id": mailbox_id, "next_in": float(next_in)},
        )

    async def request_pass(self, mailbox_id: uuid.UUID) -> None:
        """A pass now (after a repair restarted a stream), without claiming a known change."""
        await self.session.execute(
            text(
                """
                UPDATE mailboxes SET next_sync_at = LEAST(COALESCE(next_sync_at, now()), now())
                 WHERE id = :id AND status = ANY(CAST(:syncable AS text[]))
                """
            ),
            {"id": mailbox_id, "syncable": _SYNCABLE},
        )

    # -- overdue syncs ----------------------------------------------------------------

    async def overdue(
        self,
        *,
        stall_seconds: float,
        slow_interval: float,
        fast_interval: float,
        polling: Sequence[PushState],
        limit: int,
    ) -> list[tuple[uuid.UUID, str | None]]:
        """Mailboxes nothing has moved for `stall_seconds` although they should be syncing:
        due (or their lease lapsed) that long ago, or with no completed pass for twice
        their interval (fast for those whose push state polls) and not backing off; each
        with the suffix of its connect's job while no slice has taken the lease."""
        result = await self.session.execute(
            text(
                """
                SELECT id, connect_job FROM mailboxes
                 WHERE status = ANY(CAST(:syncable AS text[]))
                   AND updated_at < now() - make_interval(secs => :stall)
                   AND (lease_owner IS NULL
                        OR lease_expires_at < now() - make_interval(secs => :stall))
                   AND (next_sync_at < now() - make_interval(secs => :stall)
                        OR lease_expires_at < now() - make_interval(secs => :stall)
                        OR (consecutive_failures = 0
                            AND last_synced_at < now() - make_interval(secs => CASE
                                WHEN push_state = ANY(CAST(:polling AS text[]))
                                THEN CAST(:fast AS double precision)
                                ELSE CAST(:slow AS double precision) END)))
                 ORDER BY next_sync_at NULLS FIRST
                 LIMIT :limit
                """
            ),
            {
                "syncable": _SYNCABLE,
                "stall": float(stall_seconds),
                "slow": 2 * float(slow_interval),
                "fast": 2 * float(fast_interval),
                "polling": [p.value for p in polling],
                "limit": limit,
            },
        )
        return [(row[0], row[1]) for row in result.all()]

    # -- what the store holds ---------------------------------------------------------

    async def stream_counts(self, mailbox_id: uuid.UUID) -> dict[str, Counted]:
        result = await self.session.execute(
            text(
                "SELECT stream_key, count(*), count(*) FILTER (WHERE NOT is_read) "
                "FROM messages WHERE mailbox_id = :id GROUP BY stream_key"
            ),
            {"id": mailbox_id},
        )
        return {row[0]: Counted(int(row[1]), int(row[2])) for row in result.all()}

    async def label_counts(self, mailbox_id: uuid.UUID) -> dict[str, Counted]:
        result = await self.session.execute(
            text(
                "SELECT label, count(*), count(*) FILTER (WHERE NOT m.is_read) "
                "FROM messages m CROSS JOIN LATERAL unnest(m.labels) AS label "
                "WHERE m.mailbox_id = :id GROUP BY label"
            ),
            {"id": mailbox_id},
        )
        return {row[0]: Counted(int(row[1]), int(row[2])) for row in result.all()}

    async def stream_ids(self, mailbox_id: uuid.UUID, stream_key: str) -> set[str]:
        result = await self.session.execute(
            text(
                "SELECT provider_message_id FROM messages "
                "WHERE mailbox_id = :id AND stream_key = :stream"
            ),
            {"id": mailbox_id, "stream": stream_key},
        )
        return {row[0] for row in result.all()}

    async def label_ids(self, mailbox_id: uuid.UUID, label: str) -> set[str]:
        result = await self.session.execute(
            text(
                "SELECT provider_message_id FROM messages "
                "WHERE mailbox_id = :id AND :label = ANY(labels)"
            ),
            {"id": mailbox_id, "label": label},
        )
        return {row[0] for row in result.all()}

    async def present(self, mailbox_id: uuid.UUID, ids: Sequence[str]) -> set[str]:
        """Which of `ids` the store holds (anywhere in the mailbox)."""
        if not ids:
            return set()
        result = await self.session.execute(
            text(
                "SELECT provider_message_id FROM messages WHERE mailbox_id = :id "
                "AND provider_message_id = ANY(CAST(:ids AS text[]))"
            ),
            {"id": mailbox_id, "ids": list(ids)},
        )
        return {row[0] for row in result.all()}

    async def unread_among(self, mailbox_id: uuid.UUID, ids: Sequence[str]) -> set[str]:
        """Which of `ids` the store holds as unread."""
        if not ids:
            return set()
        result = await self.session.execute(
            text(
                "SELECT provider_message_id FROM messages WHERE mailbox_id = :id "
                "AND provider_message_id = ANY(CAST(:ids AS text[])) AND NOT is_read"
            ),
            {"id": mailbox_id, "ids": list(ids)},
        )
        return {row[0] for row in result.all()}

    # -- repairs ----------------------------------------------------------------------

    async def open_repair(
        self,
        mailbox_id: uuid.UUID,
        *,
        provider: str,
        scope_kind: str,
        scope_key: str,
        method: str,
        provider_total: int,
        provider_unread: int | None,
        stored_total: int,
        stored_unread: int | None,
        fetched: int | None = None,
        removed: int | None = None,
        relabelled: int | None = None,
    ) -> int:
        result = await self.session.execute(
            text(
                """
                INSERT INTO monitor_repairs (mailbox_id, provider, scope_kind, scope_key, method,
                    state, provider_total, provider_unread, stored_total_before,
                    stored_unread_before, fetched, removed, relabelled)
                VALUES (:mailbox_id, :provider, :kind, :key, :method, :state, :p_total,
                        :p_unread, :s_total, :s_unread, :fetched, :removed, :relabelled)
                RETURNING id
                """
            ),
            {
                "mailbox_id": mailbox_id,
                "provider": provider,
                "kind": scope_kind,
                "key": scope_key,
                "method": method,
                "state": RepairState.RUNNING.value,
                "p_total": provider_total,
                "p_unread": provider_unread,
                "s_total": stored_total,
                "s_unread": stored_unread,
                "fetched": fetched,
                "removed": removed,
                "relabelled": relabelled,
            },
        )
        return int(result.scalar_one())

    async def open_repairs(self, mailbox_id: uuid.UUID) -> list[OpenRepair]:
        result = await self.session.execute(
            text(
                "SELECT id, scope_kind, scope_key, method FROM monitor_repairs "
                "WHERE mailbox_id = :id AND state = :running ORDER BY id"
            ),
            {"id": mailbox_id, "running": RepairState.RUNNING.value},
        )
        return [OpenRepair(int(r[0]), r[1], r[2], r[3]) for r in result.all()]

    async def close_repair(
        self,
        repair_id: int,
        *,
        state: RepairState,
        provider_total: int | None,
        provider_unread: int | None,
        stored_total: int | None,
        stored_unread: int | None,
        detail: str | None = None,
    ) -> None:
        await self.session.execute(
            text(
                """
                UPDATE monitor_repairs
                   SET state = :state, finished_at = now(),
                       provider_total_after = :p_total, provider_unread_after = :p_unread,
                       stored_total_after = :s_total, stored_unread_after = :s_unread,
                       detail = COALESCE(:detail, detail)
                 WHERE id = :id AND state = :running
                """
            ),
            {
                "id": repair_id,
                "state": state.value,
                "running": RepairState.RUNNING.value,
                "p_total": provider_total,
                "p_unread": provider_unread,
                "s_total": stored_total,
                "s_unread": stored_unread,
                "detail": detail,
            },
        )

    async def residuals(self, mailbox_id: uuid.UUID) -> dict[tuple[str, str], Residual]:
        """Per scope, the difference its latest finished repair left behind."""
        result = await self.session.execute(
            text(
                """
                SELECT DISTINCT ON (scope_kind, scope_key) scope_kind, scope_key,
                       provider_total_after - stored_total_after,
                       provider_unread_after - stored_unread_after
                  FROM monitor_repairs
                 WHERE mailbox_id = :id AND state = :done
                   AND provider_total_after IS NOT NULL AND stored_total_after IS NOT NULL
                 ORDER BY scope_kind, scope_key, id DESC
                """
            ),
            {"id": mailbox_id, "done": RepairState.DONE.value},
        )
        return {
            (r[0], r[1]): Residual(int(r[2]), None if r[3] is None else int(r[3]))
            for r in result.all()
        }

    async def repairs_for(self, mailbox_id: uuid.UUID) -> list[dict[str, Any]]:
        result = await self.session.execute(
            text("SELECT * FROM monitor_repairs WHERE mailbox_id = :id ORDER BY id"),
            {"id": mailbox_id},
        )
        return [dict(row._mapping) for row in result.all()]

    # -- push health ------------------------------------------------------------------

    async def set_push_state(
        self,
        mailbox_ids: Sequence[uuid.UUID],
        state: PushState,
        *,
        poll_within: float | None = None,
    ) -> list[uuid.UUID]:
        """Record whether pushes reach these mailboxes; returns those whose state changed.
        `poll_within`: when push stopped working, the next pass comes at most this soon."""
        if not mailbox_ids:
            return []
        result = await self.session.execute(
            text(
                """
                UPDATE mailboxes
                   SET push_state = :state,
                       next_sync_at = CASE
                           WHEN CAST(:poll_within AS double precision) IS NULL THEN next_sync_at
                           ELSE LEAST(next_sync_at,
                                      now() + make_interval(secs => :poll_within)) END,
                       -- The poll is a pass over every stream (NULL: one is due or running).
                       full_pass_at = CASE
                           WHEN CAST(:poll_within AS double precision) IS NULL
                                OR full_pass_at IS NULL THEN full_pass_at
                           ELSE LEAST(full_pass_at,
                                      now() + make_interval(secs => :poll_within)) END
                 WHERE id = ANY(CAST(:ids AS uuid[])) AND push_state <> :state
             RETURNING id
                """
            ),
            {
                "ids": list(mailbox_ids),
                "state": state.value,
                "poll_within": None if poll_within is None else float(poll_within),
            },
        )
        return [row[0] for row in result.all()]

    async def push_lapsed(self, limit: int) -> list[uuid.UUID]:
        """Mailboxes said to have working push whose channel is gone or has expired."""
        result = await self.session.execute(
            text(
                """
                SELECT m.id FROM mailboxes m
                 WHERE m.push_state = :active
                   AND m.status = ANY(CAST(:syncable AS text[]))
                   AND NOT EXISTS (SELECT 1 FROM subscriptions s
                                    WHERE s.mailbox_id = m.id AND s.status = 'active'
                                      AND s.expires_at > now())
                 LIMIT :limit
                """
            ),
            {"active": PushState.ACTIVE.value, "syncable": _SYNCABLE, "limit": limit},
        )
        return [row[0] for row in result.all()]
