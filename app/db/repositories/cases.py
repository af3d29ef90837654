"""Cases, their contacts and mailboxes, search entries with leases, and message links.

Locks, in the one order every writer takes them (so no two wait on each other):
  a case's row (API changes, case completion) → the case's mailbox rows (taken FOR NO KEY
  UPDATE, as a page's fence and the outbox's position trigger take them, and held to
  commit) → entry rows → links and messages (orphans are deleted SKIP LOCKED: a row a page
  holds is that page's to clean up).
A mailbox's page transaction reads the case contacts only after its fence, so a contact
added or removed either commits before that read or waits for the page to commit; a
query that links stored mail first takes the mailbox row, so every page in flight has
committed (and is visible to it) when it reads.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

import orjson
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from app.db.repositories.reading import MESSAGE_COLUMNS, Key
from app.sync.cases.states import RUNNABLE, EntryStatus, MailboxScope, allowed_sources

_RUNNABLE = sorted(s.value for s in RUNNABLE)


class EntryLeaseLost(Exception):
    """The entry's lease lapsed, was taken over, or the entry is gone (contact removed)."""


@dataclass(frozen=True, slots=True)
class CaseRow:
    key: int
    user_id: str
    case_id: str
    title: str | None
    since: date | None


@dataclass(frozen=True, slots=True)
class EntryRow:
    id: int
    case_key: int
    mailbox_id: uuid.UUID
    email: str
    status: EntryStatus
    found: int
    estimate: int | None
    requests: int
    plan: dict[str, Any] | None
    last_error: str | None
    consecutive_failures: int


@dataclass(frozen=True, slots=True)
class EntryLease:
    entry_id: int
    owner: str
    fencing_token: int


@dataclass(frozen=True, slots=True)
class EntryView:
    mailbox_id: uuid.UUID
    email: str
    status: EntryStatus
    found: int
    linked: int
    estimate: int | None
    last_error: str | None


_ENTRY_COLUMNS = (
    "id, case_key, mailbox_id, email, status, found, estimate, requests, plan, last_error, "
    "consecutive_failures"
)


def _entry(row: Any) -> EntryRow:
    return EntryRow(
        id=int(row.id),
        case_key=int(row.case_key),
        mailbox_id=row.mailbox_id,
        email=row.email,
        status=EntryStatus(row.status),
        found=int(row.found),
        estimate=row.estimate,
        requests=int(row.requests),
        plan=row.plan,
        last_error=row.last_error,
        consecutive_failures=int(row.consecutive_failures),
    )


_CASE = text(
    "SELECT id, user_id, case_id, title, since FROM cases WHERE user_id = :user AND case_id = :case"
)
_CASE_FOR_UPDATE = text(
    "SELECT id, user_id, case_id, title, since FROM cases "
    "WHERE user_id = :user AND case_id = :case FOR UPDATE"
)


# The /mail/messages item's columns (app/db/repositories/reading.py), of the joined row.
_CASE_MESSAGE_COLUMNS = ", ".join("m." + column.strip() for column in MESSAGE_COLUMNS.split(","))


class CaseRepository:
    """Cases as the API changes them."""

    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def get(self, user_id: str, case_id: str, *, for_update: bool = False) -> CaseRow | None:
        row = (
            await self.session.execute(
                _CASE_FOR_UPDATE if for_update else _CASE,
                {"user": user_id, "case": case_id},
            )
        ).one_or_none()
        return None if row is None else CaseRow(int(row[0]), row[1], row[2], row[3], row[4])

    async def upsert(
        self, user_id: str, case_id: str, *, title: str | None, since: date | None
    ) -> tuple[CaseRow, bool, date | None]:
        """Create or update the case, its row locked; (case, created, the `since` before)."""
        existing = await self.get(user_id, case_id, for_update=True)
        if existing is None:
            key = (
                await self.session.execute(
                    text(
                        "INSERT INTO cases (user_id, case_id, title, since) "
                        "VALUES (:user, :case, :title, :since) "
                        "ON CONFLICT (user_id, case_id) DO NOTHING RETURNING id"
                    ),
                    {"user": user_id, "case": case_id, "title": title, "since": since},
                )
            ).scalar_one_or_none()
            if key is not None:
                return CaseRow(int(key), user_id, case_id, title, since), True, None
            # A concurrent PUT created it first: update it like any existing case.
            existing = await self.get(user_id, case_id, for_update=True)
            assert existing is not None
        await self.session.execute(
            text(
                "UPDATE cases SET title = :title, since = :since, updated_at = now() "
                "WHERE id = :key"
            ),
            {"key": existing.key, "title": title, "since": since},
        )
        return (
            CaseRow(existing.key, user_id, case_id, title, since),
            False,
            existing.since,
        )

    async def by_key(self, case_key: int) -> CaseRow | None:
        row = (
            await self.session.execute(
                text("SELECT id, user_id, case_id, title, since FROM cases WHERE id = :key"),
                {"key": case_key},
            )
        ).one_or_none()
        return None if row is None else CaseRow(int(row[0]), row[1], row[2], row[3], row[4])

    async def delete(self, case_key: int) -> None:
        await self.session.execute(
            text("DELETE FROM case_links WHERE case_key = :key"), {"key": case_key}
        )
        await self.session.execute(text("DELETE FROM cases WHERE id = :key"), {"key": case_key})

    async def contacts(self, case_key: int) -> list[str]:
        result = await self.session.execute(
            text("SELECT email FROM case_contacts WHERE case_key = :key ORDER BY position"),
            {"key": case_key},
        )
        return [row[0] for row in result.all()]

    async def mailbox_ids(self, case_key: int) -> list[uuid.UUID]:
        result = await self.session.execute(
            text("SELECT mailbox_id FROM case_mailboxes WHERE case_key = :key ORDER BY mailbox_id"),
            {"key": case_key},
        )
        return [row[0] for row in result.all()]

    async def add_contacts(self, case_key: int, emails: Sequence[str]) -> list[str]:
        if not emails:
            return []
        result = await self.session.execute(
            text(
                "INSERT INTO case_contacts (case_key, email) "
                "SELECT :key, e FROM unnest(CAST(:emails AS text[])) WITH ORDINALITY AS x(e, n) "
                "ORDER BY n ON CONFLICT DO NOTHING RETURNING email"
            ),
            {"key": case_key, "emails": list(emails)},
        )
        return [row[0] for row in result.all()]

    async def add_mailboxes(self, case_key: int, mailbox_ids: Sequence[uuid.UUID]) -> None:
        if not mailbox_ids:
            return
        await self.session.execute(
            text(
                "INSERT INTO case_mailboxes (case_key, mailbox_id) "
                "SELECT :key, m FROM unnest(CAST(:ids AS uuid[])) AS m ON CONFLICT DO NOTHING"
            ),
            {"key": case_key, "ids": list(mailbox_ids)},
        )

    async def create_entries(self, case_key: int) -> list[int]:
        """An entry for every (mailbox, contact) of the case that has none yet."""
        result = await self.session.execute(
            text(
                """
                INSERT INTO case_searches (case_key, mailbox_id, email, status, next_run_at)
                SELECT m.case_key, m.mailbox_id, c.email, :pending, now()
                  FROM case_mailboxes m JOIN case_contacts c ON c.case_key = m.case_key
                 WHERE m.case_key = :key
                ON CONFLICT (case_key, mailbox_id, email) DO NOTHING
                RETURNING id
                """
            ),
            {"key": case_key, "pending": EntryStatus.PENDING.value},
        )
        return [int(row[0]) for row in result.all()]

    async def restart_entries(self, case_key: int) -> list[int]:
        """Every entry searches again from scratch (`since` moved): a fresh plan, and a new
        fencing token so a slice still running cannot write its old plan back."""
        result = await self.session.execute(
            text(
                """
                UPDATE case_searches
                   SET status = :pending, plan = NULL, estimate = NULL, last_error = NULL,
                       last_error_at = NULL, consecutive_failures = 0, completed_at = NULL,
                       next_run_at = now(), lease_owner = NULL, lease_expires_at = NULL,
                       fencing_token = fencing_token + 1, updated_at = now()
                 WHERE case_key = :key AND status = ANY(CAST(:sources AS text[]))
             RETURNING id
                """
            ),
            {
                "key": case_key,
                "pending": EntryStatus.PENDING.value,
                "sources": allowed_sources(EntryStatus.PENDING),
            },
        )
        return [int(row[0]) for row in result.all()]

    async def lock_mailboxes(self, mailbox_ids: Sequence[uuid.UUID]) -> None:
        """Wait for the mailboxes' page commits in flight and hold new ones off until commit:
        the lock a page's fence and the outbox's position trigger take, in id order."""
        if mailbox_ids:
            await self.session.execute(
                text(
                    "SELECT 1 FROM mailboxes WHERE id = ANY(CAST(:ids AS uuid[])) "
                    "ORDER BY id FOR NO KEY UPDATE"
                ),
                {"ids": sorted(mailbox_ids)},
            )

    async def remove_contacts(
        self, case_key: int, emails: Sequence[str]
    ) -> list[tuple[uuid.UUID, str]]:
        """Drop contacts (their entries go with them) and their links; returns the links
        removed as (mailbox, provider message id)."""
        if not emails:
            return []
        await self.session.execute(
            text(
                "DELETE FROM case_contacts WHERE case_key = :key "
                "AND email = ANY(CAST(:emails AS text[]))"
            ),
            {"key": case_key, "emails": list(emails)},
        )
        result = await self.session.execute(
            text(
                "DELETE FROM case_links WHERE case_key = :key "
                "AND email = ANY(CAST(:emails AS text[])) "
                "RETURNING mailbox_id, provider_message_id"
            ),
            {"key": case_key, "emails": list(emails)},
        )
        return [(row[0], row[1]) for row in result.all()]

    async def remove_mailboxes(
        self, case_key: int, mailbox_ids: Sequence[uuid.UUID]
    ) -> list[tuple[uuid.UUID, str]]:
        if not mailbox_ids:
            return []
        await self.session.execute(
            text(
                "DELETE FROM case_mailboxes WHERE case_key = :key "
                "AND mailbox_id = ANY(CAST(:ids AS uuid[]))"
            ),
            {"key": case_key, "ids": list(mailbox_ids)},
        )
        result = await self.session.execute(
            text(
                "DELETE FROM case_links WHERE case_key = :key "
                "AND mailbox_id = ANY(CAST(:ids AS uuid[])) "
                "RETURNING mailbox_id, provider_message_id"
            ),
            {"key": case_key, "ids": list(mailbox_ids)},
        )
        return [(row[0], row[1]) for row in result.all()]

    async def unlink_before(self, case_key: int, since: date) -> list[tuple[uuid.UUID, str]]:
        """`since` moved later: links to messages received before it go."""
        result = await self.session.execute(
            text(
                """
                DELETE FROM case_links l USING messages m
                 WHERE l.case_key = :key AND m.mailbox_id = l.mailbox_id
                   AND m.provider_message_id = l.provider_message_id
                   AND (m.received_at IS NULL
                        OR m.received_at < (CAST(CAST(:since AS date) AS timestamp) AT TIME ZONE 'UTC'))
             RETURNING l.mailbox_id, l.provider_message_id
                """
            ),
            {"key": case_key, "since": since},
        )
        return [(row[0], row[1]) for row in result.all()]

    async def delete_orphans(
        self, removed: Sequence[tuple[uuid.UUID, str]]
    ) -> dict[uuid.UUID, list[str]]:
        """In cases-only mailboxes, delete the messages among `removed` that no case links any
        more. A row a page transaction holds (it waits at its fence for this transaction) is
        skipped: that page's own link step finds it unlinked and deletes it."""
        if not removed:
            return {}
        result = await self.session.execute(
            text(
                """
                WITH removed AS (
                    SELECT DISTINCT r.m AS mailbox_id, r.p AS provider_message_id
                      FROM jsonb_to_recordset(CAST(:removed AS jsonb)) AS r(m uuid, p text)
                      JOIN mailboxes b ON b.id = r.m AND b.scope = :cases
                ), doomed AS (
                    SELECT msg.ctid FROM messages msg JOIN removed r
                        ON msg.mailbox_id = r.mailbox_id
                       AND msg.provider_message_id = r.provider_message_id
                     WHERE NOT EXISTS (
                           SELECT 1 FROM case_links l
                            WHERE l.mailbox_id = msg.mailbox_id
                              AND l.provider_message_id = msg.provider_message_id)
                       FOR UPDATE OF msg SKIP LOCKED
                )
                DELETE FROM messages WHERE ctid IN (SELECT ctid FROM doomed)
                RETURNING mailbox_id, provider_message_id
                """
            ),
            {
                "removed": orjson.dumps([{"m": str(m), "p": p} for m, p in removed]).decode(),
                "cases": MailboxScope.CASES.value,
            },
        )
        gone: dict[uuid.UUID, list[str]] = {}
        for mailbox_id, message_id in result.all():
            gone.setdefault(mailbox_id, []).append(message_id)
        for mailbox_id, ids in gone.items():
            await self.session.execute(
                text(
                    "UPDATE mailboxes SET messages_synced = GREATEST(messages_synced - :n, 0) "
                    "WHERE id = :id"
                ),
                {"id": mailbox_id, "n": len(ids)},
            )
        return gone

    async def reset_completion(self, case_key: int) -> None:
        """The case has new work (a contact, a mailbox, an earlier `since`): its next
        completion is announced again."""
        await self.session.execute(
            text("UPDATE cases SET completed_at = NULL, updated_at = now() WHERE id = :key"),
            {"key": case_key},
        )

    # -- reading ----------------------------------------------------------------------

    async def entries(self, case_key: int) -> list[EntryView]:
        result = await self.session.execute(
            text(
                """
                SELECT s.mailbox_id, s.email, s.status, s.found, s.estimate, s.last_error,
                       (SELECT count(*) FROM case_links l JOIN messages m
                                ON m.mailbox_id = l.mailbox_id
                               AND m.provider_message_id = l.provider_message_id
                         WHERE l.case_key = s.case_key AND l.mailbox_id = s.mailbox_id
                           AND l.email = s.email) AS linked
                  FROM case_searches s
                  JOIN case_contacts c ON c.case_key = s.case_key AND c.email = s.email
                 WHERE s.case_key = :key
                 ORDER BY s.mailbox_id, c.position
                """
            ),
            {"key": case_key},
        )
        return [
            EntryView(
                mailbox_id=r.mailbox_id,
                email=r.email,
                status=EntryStatus(r.status),
                found=int(r.found),
                linked=int(r.linked),
                estimate=r.estimate,
                last_error=r.last_error,
            )
            for r in result.all()
        ]

    async def list_messages(
        self, case_key: int, limit: int, after: Key | None
    ) -> list[dict[str, Any]]:
        """The case's messages (each once, however many contacts link it), newest first,
        keyset-paginated on (received_at, id) like /mail/messages."""
        keyset = ""
        params: dict[str, Any] = {"key": case_key, "limit": limit}
        if after is not None:
            keyset = (
                "WHERE (COALESCE(m.received_at, '-infinity'::timestamptz), m.id) < "
                "(COALESCE(CAST(:after_received AS timestamptz), '-infinity'::timestamptz), "
                ":after_id)"
            )
            params.update(after_received=after.received_at, after_id=after.id)
        result = await self.session.execute(
            text(
                f"""
                SELECT {_CASE_MESSAGE_COLUMNS}
                  FROM (SELECT DISTINCT mailbox_id, provider_message_id
                          FROM case_links WHERE case_key = :key) l
                  JOIN messages m ON m.mailbox_id = l.mailbox_id
                                 AND m.provider_message_id = l.provider_message_id
                  {keyset}
                 ORDER BY COALESCE(m.received_at, '-infinity'::timestamptz) DESC, m.id DESC
                 LIMIT :limit
                """  # noqa: S608 - `keyset` is a constant fragment
            ),
            params,
        )
        return [dict(row._mapping) for row in result.all()]


class CaseEntryRepository:
    """Search entries: leases, plans, status (guarded by app/sync/cases/states.py)."""

    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def get(self, entry_id: int) -> EntryRow | None:
        row = (
            await self.session.execute(
                text(f"SELECT {_ENTRY_COLUMNS} FROM case_searches WHERE id = :id"),  # noqa: S608
                {"id": entry_id},
            )
        ).one_or_none()
        return None if row is None else _entry(row)

    async def acquire(self, entry_id: int, owner: str, seconds: int) -> EntryLease | None:
        token = (
            await self.session.execute(
                text(
                    """
                    UPDATE case_searches
                       SET lease_owner = :owner,
                           lease_expires_at = now() + make_interval(secs => :seconds),
                           fencing_token = fencing_token + 1, updated_at = now()
                     WHERE id = :id AND status = ANY(CAST(:runnable AS text[]))
                       AND (lease_owner IS NULL OR lease_expires_at < now())
                 RETURNING fencing_token
                    """
                ),
                {"id": entry_id, "owner": owner, "seconds": seconds, "runnable": _RUNNABLE},
            )
        ).scalar_one_or_none()
        return None if token is None else EntryLease(entry_id, owner, int(token))

    async def heartbeat(self, lease: EntryLease, seconds: int) -> bool:
        result = await self.session.execute(
            text(
                """
                UPDATE case_searches
                   SET lease_expires_at = now() + make_interval(secs => :seconds)
                 WHERE id = :id AND fencing_token = :token AND lease_owner = :owner
                   AND lease_expires_at > now()
                """
            ),
            {
                "id": lease.entry_id,
                "token": lease.fencing_token,
                "owner": lease.owner,
                "seconds": seconds,
            },
        )
        return bool(result.rowcount == 1)  # type: ignore[attr-defined]

    async def fence(
        self,
        lease: EntryLease,
        seconds: int,
        *,
        status: EntryStatus | None = None,
        plan: dict[str, Any] | None = None,
        found: int | None = None,
        requests: int = 0,
        estimate: int | None = None,
    ) -> None:
        """Check the lease and renew it, saving the checkpoint, in one statement. `found`:
        the contact's messages linked in this mailbox so far (absolute)."""
        result = await self.session.execute(
            text(
                """
                UPDATE case_searches
                   SET lease_expires_at = now() + make_interval(secs => :seconds),
                       status = COALESCE(:status, status),
                       plan = COALESCE(CAST(:plan AS jsonb), plan),
                       found = COALESCE(:found, found), requests = requests + :requests,
                       estimate = COALESCE(:estimate, estimate), updated_at = now()
                 WHERE id = :id AND fencing_token = :token AND lease_owner = :owner
                   AND lease_expires_at > now()
                   AND status = ANY(CAST(:sources AS text[]))
                """
            ),
            {
                "id": lease.entry_id,
                "token": lease.fencing_token,
                "owner": lease.owner,
                "seconds": seconds,
                "status": status.value if status else None,
                "plan": orjson.dumps(plan).decode() if plan is not None else None,
                "found": found,
                "requests": requests,
                "estimate": estimate,
                "sources": allowed_sources(status) if status else _RUNNABLE,
            },
        )
        if result.rowcount != 1:  # type: ignore[attr-defined]
            raise EntryLeaseLost(f"lease on case entry {lease.entry_id} is no longer held")

    async def finish(
        self,
        lease: EntryLease,
        *,
        status: EntryStatus,
        next_run_at: datetime | None,
        last_error: str | None = None,
        failure: bool = False,
        estimate: int | None = None,
    ) -> None:
        """Release the lease with a status (moved only as the transition table allows)."""
        result = await self.session.execute(
            text(
                """
                UPDATE case_searches
                   SET status = :status, lease_owner = NULL, lease_expires_at = NULL,
                       next_run_at = :next_run_at,
                       last_error = CASE WHEN :failure THEN :last_error
                                         WHEN :status = :complete THEN NULL
                                         ELSE COALESCE(:last_error, last_error) END,
                       last_error_at = CASE WHEN :failure THEN now()
                                            WHEN :status = :complete THEN NULL
                                            ELSE last_error_at END,
                       consecutive_failures = CASE WHEN :failure
                                                   THEN consecutive_failures + 1 ELSE 0 END,
                       completed_at = CASE WHEN :status = :complete THEN now()
                                           ELSE completed_at END,
                       estimate = COALESCE(:estimate, estimate),
                       updated_at = now()
                 WHERE id = :id AND fencing_token = :token AND lease_owner = :owner
                   AND status = ANY(CAST(:sources AS text[]))
                """
            ),
            {
                "id": lease.entry_id,
                "token": lease.fencing_token,
                "owner": lease.owner,
                "status": status.value,
                "complete": EntryStatus.COMPLETE.value,
                "next_run_at": next_run_at,
                "last_error": last_error,
                "failure": failure,
                "estimate": estimate,
                "sources": allowed_sources(status),
            },
        )
        if result.rowcount != 1:  # type: ignore[attr-defined]
            raise EntryLeaseLost(f"lease on case entry {lease.entry_id} is no longer held")

    async def resume_mailbox(self, mailbox_id: uuid.UUID) -> list[int]:
        """A reconnect: the mailbox's parked or failed entries start again from their plans."""
        result = await self.session.execute(
            text(
                """
                UPDATE case_searches
                   SET status = :pending, next_run_at = now(), consecutive_failures = 0,
                       last_error = NULL, last_error_at = NULL, updated_at = now()
                 WHERE mailbox_id = :id AND status = ANY(CAST(:parked AS text[]))
             RETURNING id
                """
            ),
            {
                "id": mailbox_id,
                "pending": EntryStatus.PENDING.value,
                "parked": [EntryStatus.AUTH_EXPIRED.value, EntryStatus.ERROR.value],
            },
        )
        return [int(row[0]) for row in result.all()]

    async def waiting_on_mailbox(self, mailbox_id: uuid.UUID) -> list[int]:
        """Entries of a mailbox still syncing (a full mirror's waits for its backfill)."""
        result = await self.session.execute(
            text(
                "SELECT id FROM case_searches WHERE mailbox_id = :id AND status = :syncing "
                "AND lease_owner IS NULL"
            ),
            {"id": mailbox_id, "syncing": EntryStatus.SYNCING.value},
        )
        return [int(row[0]) for row in result.all()]

    async def due(self, limit: int) -> list[int]:
        result = await self.session.execute(
            text(
                """
                SELECT id FROM case_searches
                 WHERE next_run_at <= now() AND status = ANY(CAST(:runnable AS text[]))
                   AND (lease_owner IS NULL OR lease_expires_at < now())
                 ORDER BY next_run_at LIMIT :limit
                """
            ),
            {"runnable": _RUNNABLE, "limit": limit},
        )
        return [int(row[0]) for row in result.all()]

    async def with_lapsed_lease(self, limit: int) -> list[tuple[int, int]]:
        result = await self.session.execute(
            text(
                """
                SELECT id, fencing_token FROM case_searches
                 WHERE lease_expires_at < now() AND lease_owner IS NOT NULL
                   AND status = ANY(CAST(:runnable AS text[]))
                 LIMIT :limit
                """
            ),
            {"runnable": _RUNNABLE, "limit": limit},
        )
        return [(int(row[0]), int(row[1])) for row in result.all()]

    async def complete_case_if_done(self, case_key: int) -> CaseRow | None:
        """Lock the case; if every entry is complete and that was not announced yet, mark
        it announced and return the case (the caller writes case.sync_complete)."""
        row = (
            await self.session.execute(
                text(
                    """
                    SELECT c.id, c.user_id, c.case_id, c.title, c.since,
                           c.completed_at IS NOT NULL AS announced,
                           EXISTS (SELECT 1 FROM case_searches s
                                    WHERE s.case_key = c.id AND s.status <> :complete) AS open,
                           EXISTS (SELECT 1 FROM case_searches s
                                    WHERE s.case_key = c.id) AS searched
                      FROM cases c WHERE c.id = :key FOR UPDATE
                    """
                ),
                {"key": case_key, "complete": EntryStatus.COMPLETE.value},
            )
        ).one_or_none()
        if row is None or row.announced or row.open or not row.searched:
            return None
        await self.session.execute(
            text("UPDATE cases SET completed_at = now() WHERE id = :key"), {"key": case_key}
        )
        return CaseRow(int(row.id), row.user_id, row.case_id, row.title, row.since)
