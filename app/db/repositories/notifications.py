"""The webhook audit log (`webhook_notifications`): every request to a webhook route, with its
outcome. Rows hold what a notification said (resource, ids, history id), never a token, a
clientState or a body."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import orjson
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from app.db.repositories.mailboxes import REQUEST_SYNC_SQL, request_sync_params
from app.db.repositories.subscriptions import REPLACED_GRACE_SECONDS
from app.sync.states import MailboxStatus
from app.sync.webhook_log import WebhookOutcome


@dataclass(slots=True)
class LogRow:
    provider: str
    outcome: WebhookOutcome
    kind: str
    mailbox_id: uuid.UUID | None = None
    subscription_id: str | None = None
    source: str | None = None
    http_status: int | None = None
    handling_ms: float | None = None
    dedup_key: str | None = None
    detail: str | None = None
    payload: dict[str, Any] = field(default_factory=dict)
    count: int = 1
    aggregated: bool = False
    # None: the transaction's time (what `pending_since` is compared with).
    received_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class Target:
    """A mailbox a notification names, as the intake needs it."""

    mailbox_id: uuid.UUID
    status: str
    pending_since: datetime | None
    pass_started_at: datetime | None
    # When the mailbox's latest slice began (a queued job has been picked up since).
    sync_started_at: datetime | None
    # When a notification with the same dedup key was last accepted for this mailbox.
    accepted_at: datetime | None
    # Graph: the subscription's encrypted clientState (verified against a cached keyed hash).
    client_state: bytes | None = None


def _target(row: Any) -> Target:
    client_state = getattr(row, "client_state", None)
    return Target(
        mailbox_id=row.mailbox_id,
        status=row.status,
        pending_since=row.pending_since,
        pass_started_at=row.pass_started_at,
        sync_started_at=row.sync_started_at,
        accepted_at=row.accepted_at,
        client_state=bytes(client_state) if client_state is not None else None,
    )


@dataclass(frozen=True, slots=True)
class LogEntry:
    id: int
    received_at: datetime
    provider: str
    outcome: str
    kind: str
    mailbox_id: uuid.UUID | None
    subscription_id: str | None
    source: str | None
    http_status: int | None
    handling_ms: float | None
    count: int
    aggregated: bool
    detail: str | None
    payload: dict[str, Any]


Executor = AsyncSession | AsyncConnection
# Literals, not parameters, where a partial index must match (`outcome = 'accepted'`): a
# generic plan cannot prove `outcome = $1` implies the index's predicate.
_ACCEPTED = WebhookOutcome.ACCEPTED.value

_ENTRY_COLUMNS = (
    "id, received_at, provider, outcome, kind, mailbox_id, subscription_id, source, "
    "http_status, handling_ms, count, aggregated, detail, payload"
)


def _entry(row: Any) -> LogEntry:
    return LogEntry(
        id=int(row.id),
        received_at=row.received_at,
        provider=row.provider,
        outcome=row.outcome,
        kind=row.kind,
        mailbox_id=row.mailbox_id,
        subscription_id=row.subscription_id,
        source=row.source,
        http_status=row.http_status,
        handling_ms=row.handling_ms,
        count=int(row.count),
        aggregated=bool(row.aggregated),
        detail=row.detail,
        payload=dict(row.payload or {}),
    )


_INSERT_ROWS = """
                INSERT INTO webhook_notifications
                       (received_at, provider, outcome, kind, mailbox_id, subscription_id,
                        source, http_status, handling_ms, dedup_key, detail, payload, count,
                        aggregated)
                SELECT COALESCE(r.received_at, now()), r.provider, r.outcome, r.kind,
                       r.mailbox_id, r.subscription_id, r.source, r.http_status,
                       r.handling_ms, r.dedup_key, r.detail, CAST(r.payload AS jsonb), r.count,
                       r.aggregated
                  FROM unnest(CAST(:received_at AS timestamptz[]), CAST(:provider AS text[]),
                              CAST(:outcome AS text[]), CAST(:kind AS text[]),
                              CAST(:mailbox_id AS uuid[]), CAST(:subscription_id AS text[]),
                              CAST(:source AS text[]), CAST(:http_status AS smallint[]),
                              CAST(:handling_ms AS real[]), CAST(:dedup_key AS text[]),
                              CAST(:detail AS text[]), CAST(:payload AS text[]),
                              CAST(:count AS integer[]), CAST(:aggregated AS boolean[]))
                       AS r(received_at, provider, outcome, kind, mailbox_id, subscription_id,
                            source, http_status, handling_ms, dedup_key, detail, payload,
                            count, aggregated)
                """


class NotificationRepository:
    def __init__(self, session: Executor) -> None:
        self.session = session

    async def record(self, rows: Sequence[LogRow], *, owed: Sequence[uuid.UUID] = ()) -> None:
        """Write the rows and, in the same statement (so atomically, and in one round trip),
        note that a pass is owed to the `owed` mailboxes (MailboxRepository.request_sync)."""
        if not rows and not owed:
            return
        owed_cte = f"WITH owed AS ({REQUEST_SYNC_SQL} RETURNING id) " if owed else ""
        await self.session.execute(
            text(owed_cte + _INSERT_ROWS),
            {
                **(request_sync_params(owed) if owed else {}),
                "received_at": [r.received_at for r in rows],
                "provider": [r.provider for r in rows],
                "outcome": [r.outcome.value for r in rows],
                "kind": [r.kind for r in rows],
                "mailbox_id": [r.mailbox_id for r in rows],
                "subscription_id": [r.subscription_id for r in rows],
                "source": [r.source for r in rows],
                "http_status": [r.http_status for r in rows],
                "handling_ms": [r.handling_ms for r in rows],
                "dedup_key": [r.dedup_key for r in rows],
                "detail": [r.detail for r in rows],
                "payload": [orjson.dumps(r.payload).decode() for r in rows],
                "count": [r.count for r in rows],
                "aggregated": [r.aggregated for r in rows],
            },
        )

    async def resolve_subscriptions(
        self, wanted: Sequence[tuple[str, str | None]]
    ) -> tuple[datetime, dict[tuple[str, str | None], Target]]:
        """For each (Graph subscription id, dedup key): its mailbox (the active subscription,
        or one replaced recently: Graph may still deliver to it for a while), and when a
        notification with that key was last accepted for the mailbox. With the database's
        clock, in one round trip."""
        result = await self.session.execute(
            text(
                f"""
                SELECT now() AS db_now, t.* FROM (SELECT 1) AS one LEFT JOIN (
                  SELECT w.subscription_id, w.dedup_key, s.mailbox_id, s.client_state,
                         m.status, m.pending_since, m.pass_started_at, m.sync_started_at,
                         (SELECT max(n.received_at) FROM webhook_notifications n
                           WHERE n.dedup_key = w.dedup_key AND n.outcome = '{_ACCEPTED}'
                             AND n.mailbox_id = s.mailbox_id) AS accepted_at
                    FROM unnest(CAST(:ids AS text[]), CAST(:keys AS text[]))
                         AS w(subscription_id, dedup_key)
                    JOIN subscriptions s ON s.subscription_id = w.subscription_id
                    JOIN mailboxes m ON m.id = s.mailbox_id
                   WHERE s.status = 'active'
                      OR s.replaced_at > now() - make_interval(secs => :grace)
                ) AS t ON true
                """  # noqa: S608 - a constant
            ),
            {
                "ids": [sid for sid, _ in wanted],
                "keys": [key for _, key in wanted],
                "grace": REPLACED_GRACE_SECONDS,
            },
        )
        rows = result.all()
        found = {
            (row.subscription_id, row.dedup_key): _target(row)
            for row in rows
            if row.mailbox_id is not None
        }
        return rows[0].db_now, found

    async def resolve_addresses(
        self, provider: str, wanted: Sequence[tuple[str, str | None]]
    ) -> tuple[datetime | None, dict[tuple[str, str | None], list[Target]]]:
        """For each (address, dedup key): the address's live mailboxes (two users may share
        one Gmail address), each with when that key was last accepted for it."""
        result = await self.session.execute(
            text(
                f"""
                SELECT now() AS db_now, w.address, w.dedup_key, m.id AS mailbox_id, m.status,
                       m.pending_since,
                       m.pass_started_at, m.sync_started_at,
                       (SELECT max(n.received_at) FROM webhook_notifications n
                         WHERE n.dedup_key = w.dedup_key AND n.outcome = '{_ACCEPTED}'
                           AND n.mailbox_id = m.id) AS accepted_at
                  FROM unnest(CAST(:addresses AS text[]), CAST(:keys AS text[]))
                       AS w(address, dedup_key)
                  JOIN mailboxes m ON m.provider = :provider AND lower(m.email) = w.address
                 WHERE m.status <> :disconnected
                 ORDER BY m.id
                """  # noqa: S608 - a constant
            ),
            {
                "provider": provider,
                "addresses": [address.lower() for address, _ in wanted],
                "keys": [key for _, key in wanted],
                "disconnected": MailboxStatus.DISCONNECTED.value,
            },
        )
        found: dict[tuple[str, str | None], list[Target]] = {}
        rows = result.all()
        for row in rows:
            found.setdefault((row.address, row.dedup_key), []).append(_target(row))
        return (rows[0].db_now if rows else None), found

    async def page(
        self,
        *,
        limit: int,
        before_id: int | None = None,
        outcome: WebhookOutcome | None = None,
        provider: str | None = None,
        mailbox_id: uuid.UUID | None = None,
        since: datetime | None = None,
    ) -> list[LogEntry]:
        """Newest first, keyset-paginated on id."""
        clauses = []
        params: dict[str, Any] = {"limit": limit}
        if before_id is not None:
            clauses.append("id < :before_id")
            params["before_id"] = before_id
        if outcome is not None:
            # A literal, not a parameter: a generic plan could not use the partial index
            # of refusals with `outcome = $1`.
            clauses.append(f"outcome = '{WebhookOutcome(outcome).value}'")
        if provider is not None:
            clauses.append("provider = :provider")
            params["provider"] = provider
        if mailbox_id is not None:
            clauses.append("mailbox_id = :mailbox_id")
            params["mailbox_id"] = mailbox_id
        if since is not None:
            clauses.append("received_at >= :since")
            params["since"] = since
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        result = await self.session.execute(
            text(
                f"SELECT {_ENTRY_COLUMNS} FROM webhook_notifications {where} "  # noqa: S608 - constant fragments
                "ORDER BY id DESC LIMIT :limit"
            ),
            params,
        )
        return [_entry(row) for row in result.all()]

    async def recent_for_mailbox(self, mailbox_id: uuid.UUID, limit: int = 20) -> list[LogEntry]:
        """The mailbox's latest notifications with their outcomes (newest first)."""
        return await self.page(limit=limit, mailbox_id=mailbox_id)

    async def prune(self, keep_seconds: float, batch: int) -> int:
        """Delete up to `batch` of the oldest rows received more than `keep_seconds` ago
        (by the database's clock)."""
        result = await self.session.execute(
            text(
                """
                DELETE FROM webhook_notifications
                 WHERE id IN (SELECT id FROM webhook_notifications
                               WHERE received_at < now() - make_interval(secs => :keep)
                               ORDER BY id LIMIT :batch)
                """
            ),
            {"keep": keep_seconds, "batch": batch},
        )
        return int(getattr(result, "rowcount", 0) or 0)
