"""Links between a case and the messages of its mailboxes, and the reads that make them.

See app/db/repositories/cases.py for the order in which writers take their locks: a page's
link step runs after its fence (it holds the mailbox row), and a query over a full mirror
first takes that row, so it reads only after every page in flight committed.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from app.db.repositories.outbox import OutboxRepository

# The participants of a message, as ix_messages_participants (migration 0011) indexes them.
PARTICIPANTS = "(ARRAY[{a}from_address] || {a}to_addresses || {a}cc_addresses || {a}bcc_addresses)"


def participants(alias: str = "") -> str:
    return PARTICIPANTS.format(a=f"{alias}." if alias else "")


@dataclass(frozen=True, slots=True)
class Linked:
    """Links a statement created: (case key, provider message id, contact)."""

    rows: list[tuple[int, str, str]]

    def __len__(self) -> int:
        return len(self.rows)

    def by_case(self) -> dict[int, dict[str, list[str]]]:
        """case key -> provider message id -> the contacts that linked it."""
        found: dict[int, dict[str, list[str]]] = {}
        for case_key, message_id, email in self.rows:
            found.setdefault(case_key, {}).setdefault(message_id, []).append(email)
        return found


class CaseLinkRepository:
    """Links between a case and the messages of its mailboxes."""

    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def in_any_case(self, mailbox_id: uuid.UUID) -> bool:
        """Asked by every page a mailbox commits: one probe of a small index."""
        result = await self.session.execute(
            text("SELECT EXISTS (SELECT 1 FROM case_mailboxes WHERE mailbox_id = :id)"),
            {"id": mailbox_id},
        )
        return bool(result.scalar_one())

    async def contacts_of_mailbox(self, mailbox_id: uuid.UUID) -> dict[str, date | None]:
        """Every contact of the mailbox's cases, with the earliest `since` it is wanted from
        (None: all of its mail)."""
        result = await self.session.execute(
            text(
                """
                SELECT cc.email, bool_or(c.since IS NULL) AS unbounded, min(c.since) AS since
                  FROM case_mailboxes cm
                  JOIN cases c ON c.id = cm.case_key
                  JOIN case_contacts cc ON cc.case_key = cm.case_key
                 WHERE cm.mailbox_id = :id
                 GROUP BY cc.email
                """
            ),
            {"id": mailbox_id},
        )
        return {r.email: None if r.unbounded else r.since for r in result.all()}

    async def link_messages(
        self,
        mailbox_id: uuid.UUID,
        provider_message_ids: Sequence[str],
        *,
        case_key: int | None = None,
        email: str | None = None,
    ) -> Linked:
        """Link these stored messages to every case contact of the mailbox they involve (or
        only to `case_key`/`email`), honouring each case's `since`."""
        if not provider_message_ids:
            return Linked([])
        result = await self.session.execute(
            text(
                f"""
                WITH contacts AS (
                    SELECT c.id AS case_key, c.since, cc.email
                      FROM case_mailboxes cm
                      JOIN cases c ON c.id = cm.case_key
                      JOIN case_contacts cc ON cc.case_key = cm.case_key
                     WHERE cm.mailbox_id = :mailbox_id
                       AND (CAST(:case_key AS bigint) IS NULL OR cm.case_key = :case_key)
                       AND (CAST(:email AS text) IS NULL OR cc.email = :email)
                ), candidates AS (
                    SELECT DISTINCT k.case_key, k.email, m.provider_message_id
                      FROM messages m
                     CROSS JOIN LATERAL unnest({participants("m")}) AS p(address)
                      JOIN contacts k ON k.email = p.address
                     WHERE m.mailbox_id = :mailbox_id
                       AND m.provider_message_id = ANY(CAST(:ids AS text[]))
                       AND (k.since IS NULL OR m.received_at >= (CAST(k.since AS timestamp) AT TIME ZONE 'UTC'))
                )
                INSERT INTO case_links (case_key, mailbox_id, email, provider_message_id)
                SELECT case_key, :mailbox_id, email, provider_message_id FROM candidates
                ON CONFLICT DO NOTHING
                RETURNING case_key, provider_message_id, email
                """  # noqa: S608 - the participants expression is a constant
            ),
            {
                "mailbox_id": mailbox_id,
                "ids": list(provider_message_ids),
                "case_key": case_key,
                "email": email,
            },
        )
        return Linked([(int(r[0]), r[1], r[2]) for r in result.all()])

    async def link_found(
        self,
        case_key: int,
        mailbox_id: uuid.UUID,
        email: str,
        provider_message_ids: Sequence[str],
    ) -> Linked:
        """Messages a contact's search found (and checked: the contact takes part, received
        after the case's `since`), stored in this transaction or before it."""
        if not provider_message_ids:
            return Linked([])
        result = await self.session.execute(
            text(
                """
                INSERT INTO case_links (case_key, mailbox_id, email, provider_message_id)
                SELECT :case_key, :mailbox_id, :email, p
                  FROM unnest(CAST(:ids AS text[])) AS p
                ON CONFLICT DO NOTHING
                RETURNING provider_message_id
                """
            ),
            {
                "case_key": case_key,
                "mailbox_id": mailbox_id,
                "email": email,
                "ids": list(dict.fromkeys(provider_message_ids)),
            },
        )
        return Linked([(case_key, row[0], email) for row in result.all()])

    async def link_by_query(
        self, case_key: int, mailbox_id: uuid.UUID, email: str, since: date | None
    ) -> Linked:
        """A full mirror: every stored message with the contact among its participants,
        through ix_messages_participants, after every page in flight has committed (the
        mailbox row is taken as the outbox's position trigger and a page's fence take it)."""
        await OutboxRepository(self.session).lock_mailbox(mailbox_id)
        result = await self.session.execute(
            text(
                f"""
                INSERT INTO case_links (case_key, mailbox_id, email, provider_message_id)
                SELECT :case_key, m.mailbox_id, :email, m.provider_message_id
                  FROM messages m
                 WHERE m.mailbox_id = :mailbox_id
                   AND {participants("m")} @> ARRAY[CAST(:email AS text)]
                   AND (CAST(:since AS date) IS NULL
                        OR m.received_at >= (CAST(CAST(:since AS date) AS timestamp) AT TIME ZONE 'UTC'))
                ON CONFLICT DO NOTHING
                RETURNING provider_message_id
                """  # noqa: S608 - the participants expression is a constant
            ),
            {"case_key": case_key, "mailbox_id": mailbox_id, "email": email, "since": since},
        )
        return Linked([(case_key, row[0], email) for row in result.all()])

    async def count(self, case_key: int, mailbox_id: uuid.UUID, email: str) -> int:
        result = await self.session.execute(
            text(
                "SELECT count(*) FROM case_links WHERE case_key = :key "
                "AND mailbox_id = :mailbox_id AND email = :email"
            ),
            {"key": case_key, "mailbox_id": mailbox_id, "email": email},
        )
        return int(result.scalar_one())

    async def delete_unlinked(
        self, mailbox_id: uuid.UUID, provider_message_ids: Sequence[str]
    ) -> list[str]:
        """A cases-only mailbox's page stored these for a contact that was removed before
        the page could link them: they go again. Returns what went."""
        if not provider_message_ids:
            return []
        result = await self.session.execute(
            text(
                """
                DELETE FROM messages m
                 WHERE m.mailbox_id = :mailbox_id
                   AND m.provider_message_id = ANY(CAST(:ids AS text[]))
                   AND NOT EXISTS (SELECT 1 FROM case_links l
                                    WHERE l.mailbox_id = m.mailbox_id
                                      AND l.provider_message_id = m.provider_message_id)
             RETURNING m.provider_message_id
                """
            ),
            {"mailbox_id": mailbox_id, "ids": list(provider_message_ids)},
        )
        return [row[0] for row in result.all()]

    async def count_stored(self, mailbox_id: uuid.UUID, inserted: int) -> None:
        """Search results stored outside the mailbox's own sync join its message count."""
        await self.session.execute(
            text("UPDATE mailboxes SET messages_synced = messages_synced + :n WHERE id = :id"),
            {"id": mailbox_id, "n": inserted},
        )

    async def existing(
        self, mailbox_id: uuid.UUID, provider_message_ids: Sequence[str]
    ) -> set[str]:
        if not provider_message_ids:
            return set()
        result = await self.session.execute(
            text(
                "SELECT provider_message_id FROM messages WHERE mailbox_id = :mailbox_id "
                "AND provider_message_id = ANY(CAST(:ids AS text[]))"
            ),
            {"mailbox_id": mailbox_id, "ids": list(provider_message_ids)},
        )
        return {row[0] for row in result.all()}

    async def case_ids(self, case_keys: Sequence[int]) -> dict[int, tuple[str, str]]:
        """case key -> (user id, the caller's case id), for event payloads."""
        result = await self.session.execute(
            text("SELECT id, user_id, case_id FROM cases WHERE id = ANY(CAST(:keys AS bigint[]))"),
            {"keys": list(case_keys)},
        )
        return {int(r[0]): (r[1], r[2]) for r in result.all()}

    async def stream_generations(self, mailbox_id: uuid.UUID) -> dict[str, int]:
        """The mailbox's streams and their current generations (search results are written
        at their stream's generation, so an enumeration's sweep treats them as its own)."""
        result = await self.session.execute(
            text(
                "SELECT stream_key, generation, cursor IS NOT NULL AS started "
                "FROM sync_cursors WHERE mailbox_id = :id"
            ),
            {"id": mailbox_id},
        )
        return {r.stream_key: int(r.generation) for r in result.all() if r.started}

    async def streams_started(self, mailbox_id: uuid.UUID) -> bool | None:
        """Whether every stream of the mailbox has a cursor (None: no stream listed yet)."""
        row = (
            await self.session.execute(
                text(
                    "SELECT count(*) AS total, count(cursor) AS started "
                    "FROM sync_cursors WHERE mailbox_id = :id"
                ),
                {"id": mailbox_id},
            )
        ).one()
        if int(row.total) == 0:
            return None
        return bool(row.total == row.started)
