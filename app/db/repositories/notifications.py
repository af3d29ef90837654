"""The webhook audit log (`webhook_notifications`): every request to a webhook route, with its
outcome. Rows hold what a notification said (resource, ids, history id), never a token, a
clientState or a body."""

from __future__ import annotations

import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import asyncpg
import orjson
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from app.db.repositories.mailboxes import REQUEST_SYNC_ASSIGNMENTS, REQUEST_SYNC_CHANGES
from app.db.repositories.subscriptions import REPLACED_GRACE_SECONDS
from app.providers.base import EVERY_STREAM, ChangeHint
from app.sync.states import MailboxStatus
from app.sync.webhook_log import WebhookOutcome


@dataclass(slots=True)
class LogRow:
    """One row of the log. With `outcome` None, record_group decides it (accepted,
    duplicate, lifecycle or unknown_subscription) and which mailbox rows it becomes."""

    provider: str
    outcome: WebhookOutcome | None
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
    # None: the statement's time (what `pending_since` is compared with).
    received_at: datetime | None = None
    # Gmail: the address whose live mailboxes it names (instead of mailbox_id).
    address: str | None = None
    lifecycle: bool = False
    # A pass is owed to its mailbox when it is accepted (or a lifecycle event).
    wants_sync: bool = False
    # What that pass must follow (pending_streams).
    hint: ChangeHint = EVERY_STREAM


@dataclass(frozen=True, slots=True)
class Decided:
    # The index of the LogRow it was written for (a Gmail address can make several).
    position: int
    outcome: WebhookOutcome
    mailbox_id: uuid.UUID | None
    # When the mailbox's latest slice began (a queued sync job has been picked up since).
    sync_started_at: datetime | None
    db_now: datetime


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
_DUPLICATE = WebhookOutcome.DUPLICATE.value
_LIFECYCLE = WebhookOutcome.LIFECYCLE.value
_UNKNOWN = WebhookOutcome.UNKNOWN_SUBSCRIPTION.value
_DISCONNECTED = MailboxStatus.DISCONNECTED.value

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


# One group of webhook requests (NotificationRepository.record_group). Outcome names are
# inlined from WebhookOutcome so that the partial index on accepted rows' dedup keys matches.
_RECORD_GROUP = f"""
WITH input AS (
    SELECT * FROM unnest(
        CAST(:position AS integer[]), CAST(:received_at AS timestamptz[]),
        CAST(:provider AS text[]), CAST(:kind AS text[]), CAST(:mailbox_id AS uuid[]),
        CAST(:address AS text[]), CAST(:subscription_id AS text[]), CAST(:source AS text[]),
        CAST(:http_status AS smallint[]), CAST(:handling_ms AS real[]),
        CAST(:dedup_key AS text[]), CAST(:detail AS text[]), CAST(:payload AS text[]),
        CAST(:count AS integer[]), CAST(:aggregated AS boolean[]), CAST(:outcome AS text[]),
        CAST(:lifecycle AS boolean[]), CAST(:wants_sync AS boolean[]),
        CAST(:hint_stream AS text[]), CAST(:hint_message AS text[]),
        CAST(:hint_locate AS boolean[])
    ) AS i(position, received_at, provider, kind, mailbox_id, address, subscription_id,
           source, http_status, handling_ms, dedup_key, detail, payload, count, aggregated,
           outcome, lifecycle, wants_sync, hint_stream, hint_message, hint_locate)
),
targets AS (
    SELECT i.*, COALESCE(i.mailbox_id, a.id) AS target
      FROM input i
      LEFT JOIN LATERAL (
          SELECT m.id FROM mailboxes m
           WHERE i.address IS NOT NULL AND m.provider = i.provider
             AND m.email = i.address AND m.status <> '{_DISCONNECTED}'
      ) AS a ON true
),
state AS (
    SELECT t.*, m.status AS mailbox_status, m.pending_since, m.pass_started_at,
           m.sync_started_at,
           CASE WHEN t.outcome IS NULL AND t.dedup_key IS NOT NULL THEN
               (SELECT max(n.received_at) FROM webhook_notifications n
                 WHERE n.dedup_key = t.dedup_key AND n.outcome = '{_ACCEPTED}'
                   AND n.mailbox_id = t.target)
           END AS accepted_at,
           row_number() OVER (PARTITION BY t.target, t.dedup_key, t.outcome IS NULL
                              ORDER BY t.position) AS nth
      FROM targets t LEFT JOIN mailboxes m ON m.id = t.target
),
decided AS (
    SELECT s.*,
           CASE WHEN s.outcome IS NOT NULL THEN s.outcome
                WHEN s.target IS NULL OR s.mailbox_status = '{_DISCONNECTED}'
                     THEN '{_UNKNOWN}'
                WHEN s.lifecycle THEN '{_LIFECYCLE}'
                WHEN s.dedup_key IS NOT NULL
                     AND (s.nth > 1
                          OR (s.pending_since <= s.accepted_at
                              AND (s.pass_started_at IS NULL
                                   OR s.pass_started_at < s.accepted_at)))
                     THEN '{_DUPLICATE}'
                ELSE '{_ACCEPTED}'
           END AS decided
      FROM state s
),
to_owe AS (
    -- Locked in id order: writers owing passes to overlapping mailboxes never deadlock.
    SELECT m.id FROM mailboxes m
     WHERE m.id IN (SELECT target FROM decided
                     WHERE wants_sync AND decided IN ('{_ACCEPTED}', '{_LIFECYCLE}'))
       AND m.status <> '{_DISCONNECTED}' AND {REQUEST_SYNC_CHANGES}
     ORDER BY m.id
       FOR UPDATE
),
owed AS (
    UPDATE mailboxes SET {REQUEST_SYNC_ASSIGNMENTS}
     WHERE id IN (SELECT id FROM to_owe)
    RETURNING id
),
hinted AS (
    -- What the owed pass follows. A hint already waiting is noted again: a pass that read
    -- it before this statement leaves it for the next pass (PendingStreamRepository.take).
    INSERT INTO pending_streams (mailbox_id, stream_key, message_id, locate)
    SELECT DISTINCT target, hint_stream, hint_message, hint_locate FROM decided
     WHERE wants_sync AND decided IN ('{_ACCEPTED}', '{_LIFECYCLE}')
       AND target IS NOT NULL AND mailbox_status <> '{_DISCONNECTED}'
     -- In key order, like the mailbox locks: writers of overlapping groups never deadlock.
     ORDER BY 1, 2, 3, 4
    ON CONFLICT (mailbox_id, stream_key, message_id, locate)
       DO UPDATE SET noted_at = EXCLUDED.noted_at
    RETURNING 1
),
logged AS (
    INSERT INTO webhook_notifications
           (received_at, provider, outcome, kind, mailbox_id, subscription_id, source,
            http_status, handling_ms, dedup_key, detail, payload, count, aggregated)
    SELECT COALESCE(received_at, now()), provider, decided, kind, target, subscription_id,
           source, http_status, handling_ms,
           CASE WHEN decided IN ('{_ACCEPTED}', '{_DUPLICATE}') THEN dedup_key END,
           detail, CAST(payload AS jsonb), count, aggregated
      FROM decided ORDER BY position
    RETURNING 1
)
SELECT position, decided, target AS mailbox_id, sync_started_at, now() AS db_now
  FROM decided ORDER BY position
"""  # noqa: S608 - constant fragments


def _positional(sql: str) -> tuple[str, list[str]]:
    """`:name` parameters as asyncpg's `$n`, and the names in order."""
    names: list[str] = []

    def number(match: re.Match[str]) -> str:
        if match.group(1) not in names:
            names.append(match.group(1))
        return f"${names.index(match.group(1)) + 1}"

    return re.sub(r"(?<![:\w]):([a-z_]+)", number, sql), names


_RECORD_GROUP_SQL, _RECORD_GROUP_PARAMS = _positional(_RECORD_GROUP)


class StoreError(Exception):
    """record_group failed: PostgreSQL's SQLSTATE ('' without one), and whether the
    connection is lost (then nothing was written)."""

    def __init__(self, message: str, sqlstate: str, connection_lost: bool) -> None:
        super().__init__(message)
        self.sqlstate = sqlstate
        self.connection_lost = connection_lost


def _group_params(rows: Sequence[LogRow]) -> dict[str, Any]:
    return {
        "position": list(range(len(rows))),
        "received_at": [r.received_at for r in rows],
        "provider": [r.provider for r in rows],
        "kind": [r.kind for r in rows],
        "mailbox_id": [r.mailbox_id for r in rows],
        "address": [r.address.lower() if r.address else None for r in rows],
        "subscription_id": [r.subscription_id for r in rows],
        "source": [r.source for r in rows],
        "http_status": [r.http_status for r in rows],
        "handling_ms": [r.handling_ms for r in rows],
        "dedup_key": [r.dedup_key for r in rows],
        "detail": [r.detail for r in rows],
        "payload": [orjson.dumps(r.payload).decode() for r in rows],
        "count": [r.count for r in rows],
        "aggregated": [r.aggregated for r in rows],
        "outcome": [r.outcome.value if r.outcome else None for r in rows],
        "lifecycle": [r.lifecycle for r in rows],
        "wants_sync": [r.wants_sync for r in rows],
        "hint_stream": [r.hint.stream for r in rows],
        "hint_message": [r.hint.message for r in rows],
        "hint_locate": [r.hint.locate for r in rows],
    }


class NotificationRepository:
    def __init__(self, session: Executor) -> None:
        self.session = session

    async def subscription_targets(
        self, subscription_ids: Sequence[str]
    ) -> dict[str, tuple[uuid.UUID, bytes | None]]:
        """Each Graph subscription id's mailbox and encrypted clientState: the active
        subscription, or one replaced recently (Graph may still deliver to it a while)."""
        if not subscription_ids:
            return {}
        result = await self.session.execute(
            text(
                """
                SELECT subscription_id, mailbox_id, client_state FROM subscriptions
                 WHERE subscription_id = ANY(CAST(:ids AS text[]))
                   AND (status = 'active'
                        OR replaced_at > now() - make_interval(secs => :grace))
                """
            ),
            {"ids": list(subscription_ids), "grace": REPLACED_GRACE_SECONDS},
        )
        return {
            row.subscription_id: (
                row.mailbox_id,
                bytes(row.client_state) if row.client_state is not None else None,
            )
            for row in result.all()
        }

    async def record_group(self, rows: Sequence[LogRow]) -> list[Decided]:
        """Decide what the intake left open, write every row, and owe the mailboxes their
        passes: one statement, so atomic, durable when it returns, and one round trip.
        Returns one Decided per row written, `position` being the index in `rows`.

        What the statement decides, for a row without an outcome:
        - its mailboxes: the given one, or the live mailboxes of its address (one row each;
          none: `unknown_subscription`, as for a disconnected mailbox);
        - `duplicate`: a notice with a dedup key that was accepted for the mailbox since a
          pass last began (the mailbox has been pending since then or earlier, and no pass
          has started after it), or that an earlier notice of this group already carries;
          the pass that notification owed covers this one;
        - otherwise `lifecycle` or `accepted`, and the mailbox owes a pass if the notice
          wants one (MailboxRepository.request_sync's assignments).
        """
        if not rows:
            return []
        if not isinstance(self.session, AsyncConnection):
            raise TypeError("record_group runs on a connection (the webhook intake's own)")
        # asyncpg directly: SQLAlchemy's execute costs ~0.6 ms of CPU per call here, as
        # much as a few dozen notifications' handling, on the hottest path of a storm.
        driver = (await self.session.get_raw_connection()).driver_connection
        if driver is None:
            raise StoreError("no database connection", "", connection_lost=True)
        params = _group_params(rows)
        try:
            records = await driver.fetch(
                _RECORD_GROUP_SQL, *(params[name] for name in _RECORD_GROUP_PARAMS)
            )
        except asyncpg.PostgresError as exc:
            sqlstate = str(exc.sqlstate or "")
            raise StoreError(str(exc), sqlstate, sqlstate[:2] in ("08", "57")) from exc
        except (asyncpg.InterfaceError, OSError) as exc:
            raise StoreError(str(exc), "", connection_lost=True) from exc
        return [
            Decided(
                position=record["position"],
                outcome=WebhookOutcome(record["decided"]),
                mailbox_id=record["mailbox_id"],
                sync_started_at=record["sync_started_at"],
                db_now=record["db_now"],
            )
            for record in records
        ]

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
