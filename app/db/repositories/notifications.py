"""The webhook audit log (`webhook_notifications`): every request to a webhook route, with its
outcome. Rows hold what a notification said (resource, ids, history id), never a token, a
clientState or a body."""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

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
    # Graph: the subscription's encrypted clientState (verified against a cached keyed hash).
    client_state: bytes | None = None


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


class NotificationRepository:
    def __init__(self, session: Executor) -> None:
        self.session = session

    async def insert(self, rows: Sequence[LogRow]) -> None:
        """All rows in one statement (a batch of requests commits together)."""
        if not rows:
            return
        await self.session.execute(
            text(
                """
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
            ),
            {
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
                "payload": [json.dumps(r.payload, separators=(",", ":")) for r in rows],
                "count": [r.count for r in rows],
                "aggregated": [r.aggregated for r in rows],
            },
        )

    async def targets_by_subscription(self, subscription_ids: Sequence[str]) -> dict[str, Target]:
        """The mailbox each Graph subscription id belongs to: the active subscription, or
        one replaced recently (Graph may still deliver to it for a while)."""
        if not subscription_ids:
            return {}
        result = await self.session.execute(
            text(
                """
                SELECT s.subscription_id, s.mailbox_id, s.client_state, m.status,
                       m.pending_since, m.pass_started_at
                  FROM subscriptions s JOIN mailboxes m ON m.id = s.mailbox_id
                 WHERE s.subscription_id = ANY(CAST(:ids AS text[]))
                   AND (s.status = 'active'
                        OR s.replaced_at > now() - make_interval(secs => :grace))
                """
            ),
            {"ids": list(subscription_ids), "grace": REPLACED_GRACE_SECONDS},
        )
        return {
            row.subscription_id: Target(
                row.mailbox_id,
                row.status,
                row.pending_since,
                row.pass_started_at,
                bytes(row.client_state) if row.client_state is not None else None,
            )
            for row in result.all()
        }

    async def targets_by_address(
        self, provider: str, addresses: Sequence[str]
    ) -> dict[str, list[Target]]:
        """The live mailboxes of each address (two users may share one Gmail address)."""
        if not addresses:
            return {}
        result = await self.session.execute(
            text(
                """
                SELECT lower(email) AS address, id, status, pending_since, pass_started_at
                  FROM mailboxes
                 WHERE provider = :provider AND lower(email) = ANY(CAST(:addresses AS text[]))
                   AND status <> :disconnected
                 ORDER BY id
                """
            ),
            {
                "provider": provider,
                "addresses": [a.lower() for a in addresses],
                "disconnected": MailboxStatus.DISCONNECTED.value,
            },
        )
        targets: dict[str, list[Target]] = {}
        for row in result.all():
            targets.setdefault(row.address, []).append(
                Target(row.id, row.status, row.pending_since, row.pass_started_at)
            )
        return targets

    async def latest_accepted(
        self, keys: Sequence[tuple[uuid.UUID, str]]
    ) -> dict[tuple[uuid.UUID, str], datetime]:
        """When each (mailbox, dedup key) was last accepted, for the keys that ever were."""
        if not keys:
            return {}
        result = await self.session.execute(
            text(
                """
                SELECT mailbox_id, dedup_key, max(received_at) AS at
                  FROM webhook_notifications
                 WHERE dedup_key = ANY(CAST(:keys AS text[])) AND outcome = :accepted
                   AND mailbox_id = ANY(CAST(:mailboxes AS uuid[]))
                 GROUP BY mailbox_id, dedup_key
                """
            ),
            {
                "keys": sorted({k for _, k in keys}),
                "mailboxes": sorted({m for m, _ in keys}),
                "accepted": WebhookOutcome.ACCEPTED.value,
            },
        )
        return {(row.mailbox_id, row.dedup_key): row.at for row in result.all()}

    async def page(
        self,
        *,
        limit: int,
        before_id: int | None = None,
        outcome: str | None = None,
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
            clauses.append("outcome = :outcome")
            params["outcome"] = outcome
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

    async def prune(self, older_than: datetime, batch: int) -> int:
        """Delete up to `batch` of the oldest rows received before `older_than`."""
        result = await self.session.execute(
            text(
                """
                DELETE FROM webhook_notifications
                 WHERE id IN (SELECT id FROM webhook_notifications
                               WHERE received_at < :cutoff ORDER BY id LIMIT :batch)
                """
            ),
            {"cutoff": older_than, "batch": batch},
        )
        return int(getattr(result, "rowcount", 0) or 0)
