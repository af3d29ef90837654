"""What the operator dashboard and `mailsync status` read: mailboxes across all users, their
streams and the webhook log (the outbox's lag: OutboxRepository.lag). Read-only, and never a credential column: the
credentials table is not joined, cursors leave as their keys and a few scalar fields.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from app.db.repositories.notifications import NotificationRepository

# Cursor fields that carry no token (Gmail's phase and history id, Graph's round flag).
_CURSOR_FIELDS_SHOWN = ("phase", "history_id", "initial")


@dataclass(frozen=True, slots=True)
class MailboxFilter:
    status: str | None = None
    provider: str | None = None
    user_id: str | None = None
    # A piece of the address, matched case-insensitively.
    search: str | None = None


@dataclass(frozen=True, slots=True)
class MailboxRow:
    id: uuid.UUID
    user_id: str
    provider: str
    email: str | None
    auth_mode: str
    status: str
    phase: str | None
    messages_synced: int
    messages_total_estimate: int | None
    last_synced_at: datetime | None
    last_error: str | None
    last_error_at: datetime | None
    consecutive_failures: int
    next_sync_at: datetime | None
    sync_requested_at: datetime | None
    pending_since: datetime | None
    last_verified_at: datetime | None
    push_state: str
    paused: bool
    lease_expires_at: datetime | None
    created_at: datetime | None
    disconnected_at: datetime | None


@dataclass(frozen=True, slots=True)
class StatusCount:
    provider: str
    status: str
    mailboxes: int
    messages: int


@dataclass(frozen=True, slots=True)
class StreamRow:
    stream_key: str
    name: str | None
    labels: tuple[str, ...]
    mode: str
    caught_up: bool
    generation: int
    total_estimate: int | None
    stored: int
    last_page_at: datetime | None
    # The stored cursor's keys and its token-free fields, never its links or page tokens.
    cursor_keys: tuple[str, ...]
    cursor_fields: dict[str, str]


@dataclass(frozen=True, slots=True)
class NotificationRow:
    id: int
    received_at: datetime
    provider: str
    kind: str
    # The webhook audit log's outcome (accepted, duplicate, forged_client_state, ...).
    outcome: str


_MAILBOX_COLUMNS = """
    id, user_id, provider, email, auth_mode, status, phase, messages_synced,
    messages_total_estimate, last_synced_at, last_error, last_error_at, consecutive_failures,
    next_sync_at, sync_requested_at, pending_since, last_verified_at, push_state, paused,
    lease_expires_at,
    created_at, disconnected_at
"""


def _mailbox(row: Any) -> MailboxRow:
    return MailboxRow(
        id=row.id,
        user_id=row.user_id,
        provider=row.provider,
        email=row.email,
        auth_mode=row.auth_mode,
        status=row.status,
        phase=row.phase,
        messages_synced=int(row.messages_synced),
        messages_total_estimate=row.messages_total_estimate,
        last_synced_at=row.last_synced_at,
        last_error=row.last_error,
        last_error_at=row.last_error_at,
        consecutive_failures=int(row.consecutive_failures),
        next_sync_at=row.next_sync_at,
        sync_requested_at=row.sync_requested_at,
        pending_since=row.pending_since,
        last_verified_at=row.last_verified_at,
        push_state=row.push_state,
        paused=bool(row.paused),
        lease_expires_at=row.lease_expires_at,
        created_at=row.created_at,
        disconnected_at=row.disconnected_at,
    )


class DashboardRepository:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def counts(self) -> list[StatusCount]:
        result = await self.session.execute(
            text(
                "SELECT provider, status, count(*) AS mailboxes, "
                "COALESCE(sum(messages_synced), 0) AS messages "
                "FROM mailboxes GROUP BY provider, status ORDER BY provider, status"
            )
        )
        return [
            StatusCount(r.provider, r.status, int(r.mailboxes), int(r.messages))
            for r in result.all()
        ]

    async def list_mailboxes(
        self,
        flt: MailboxFilter,
        *,
        status_order: Sequence[str],
        limit: int,
        offset: int,
    ) -> tuple[list[MailboxRow], int]:
        """One page of mailboxes, the statuses in `status_order` first (in that order, any
        other status after them), each status by address; and how many match in all.

        How many of each status match comes first; then only the statuses the page falls
        in are read, each an index scan (ix_mailboxes_dashboard) that stops at the page.
        """
        counts = await self._status_counts(flt)
        order = [s for s in status_order if s in counts]
        order += sorted(s for s in counts if s not in status_order)
        rows: list[MailboxRow] = []
        skip = offset
        for status in order:
            if len(rows) >= limit:
                break
            if skip >= counts[status]:
                skip -= counts[status]
                continue
            rows += await self._page_of_status(status, flt, limit - len(rows), skip)
            skip = 0
        return rows, sum(counts.values())

    @staticmethod
    def _where(flt: MailboxFilter) -> tuple[list[str], dict[str, Any]]:
        where: list[str] = []
        params: dict[str, Any] = {}
        if flt.status:
            where.append("status = :status")
            params["status"] = flt.status
        if flt.provider:
            where.append("provider = :provider")
            params["provider"] = flt.provider
        if flt.user_id:
            where.append("user_id = :user_id")
            params["user_id"] = flt.user_id
        if flt.search:
            # Addresses are stored lower-cased (connect and learn_email): a plain substring
            # test, several times cheaper than ILIKE, with no wildcard to escape.
            where.append("strpos(email, :needle) > 0")
            params["needle"] = flt.search.lower()
        return where, params

    async def _status_counts(self, flt: MailboxFilter) -> dict[str, int]:
        where, params = self._where(flt)
        clauses = " AND ".join(where) or "true"
        result = await self.session.execute(
            text(f"SELECT status, count(*) FROM mailboxes WHERE {clauses} GROUP BY status"),  # noqa: S608 - fixed clauses, bound values
            params,
        )
        return {row[0]: int(row[1]) for row in result.all()}

    async def _page_of_status(
        self, status: str, flt: MailboxFilter, limit: int, offset: int
    ) -> list[MailboxRow]:
        where, params = self._where(flt)
        where.append("status = :page_status")
        # The page's ids first: with no other filter that is an index-only scan, so a deep
        # page skips index entries instead of reading (and dropping) whole rows.
        result = await self.session.execute(
            text(
                f"""
                SELECT {_MAILBOX_COLUMNS} FROM mailboxes
                 WHERE id IN (SELECT id FROM mailboxes
                               WHERE {" AND ".join(where)}
                               ORDER BY email COLLATE "C" NULLS LAST, id
                               LIMIT :limit OFFSET :offset)
                 ORDER BY email COLLATE "C" NULLS LAST, id
                """  # noqa: S608 - fixed clauses, bound values
            ),
            {**params, "page_status": status, "limit": limit, "offset": offset},
        )
        return [_mailbox(r) for r in result.all()]

    async def mailbox(self, mailbox_id: uuid.UUID) -> MailboxRow | None:
        result = await self.session.execute(
            text(f"SELECT {_MAILBOX_COLUMNS} FROM mailboxes WHERE id = :id"),  # noqa: S608
            {"id": mailbox_id},
        )
        row = result.first()
        return _mailbox(row) if row else None

    async def streams(self, mailbox_id: uuid.UUID) -> list[StreamRow]:
        result = await self.session.execute(
            text(
                """
                SELECT c.stream_key, c.name, c.labels, c.mode, c.caught_up, c.generation,
                       c.total_estimate, c.updated_at,
                       CASE WHEN jsonb_typeof(c.cursor) = 'object'
                            THEN ARRAY(SELECT jsonb_object_keys(c.cursor) ORDER BY 1) END
                         AS cursor_keys,
                       CASE WHEN jsonb_typeof(c.cursor) = 'object'
                            THEN jsonb_strip_nulls(jsonb_build_object(
                                   'phase', c.cursor->>'phase',
                                   'history_id', c.cursor->>'history_id',
                                   'initial', c.cursor->>'initial')) END
                         AS cursor_fields,
                       COALESCE(s.stored, 0) AS stored
                  FROM sync_cursors c
                  LEFT JOIN (SELECT stream_key, count(*) AS stored FROM messages
                              WHERE mailbox_id = :id GROUP BY stream_key) s
                         ON s.stream_key = c.stream_key
                 WHERE c.mailbox_id = :id
                 ORDER BY c.total_estimate DESC NULLS LAST, c.stream_key
                """
            ),
            {"id": mailbox_id},
        )
        return [
            StreamRow(
                stream_key=r.stream_key,
                name=r.name,
                labels=tuple(r.labels or ()),
                mode=r.mode,
                caught_up=bool(r.caught_up),
                generation=int(r.generation),
                total_estimate=r.total_estimate,
                stored=int(r.stored),
                last_page_at=r.updated_at,
                cursor_keys=tuple(r.cursor_keys or ()),
                cursor_fields={
                    k: str(v)
                    for k, v in (r.cursor_fields or {}).items()
                    if k in _CURSOR_FIELDS_SHOWN
                },
            )
            for r in result.all()
        ]

    async def recent_notifications(
        self, mailbox_id: uuid.UUID, limit: int = 20
    ) -> list[NotificationRow]:
        entries = await NotificationRepository(self.session).recent_for_mailbox(mailbox_id, limit)
        return [
            NotificationRow(e.id, e.received_at, e.provider, e.kind, e.outcome) for e in entries
        ]
