"""Messages: one set-based statement per page for upserts, deletes and label changes.

A page travels to PostgreSQL as one array literal per column expanded by `unnest`, so a
1000-message page is one round trip and one statement, whatever its size.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import msgspec
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from app.providers.base import LabelChange, MessageBatch

# A page travels as one array per column, expanded by unnest(): one round trip and one
# statement per page, whatever its size. Each column is sent as a single PostgreSQL array
# literal (text), which costs a fraction of binding a 1000-element array element by element.
# unnest() cannot expand a ragged 2-D array, so a list column carries one string per row,
# its items joined by the unit separator (U+001F) and split again by string_to_array().
_UPSERT = text(
    """
    WITH written AS (
    INSERT INTO messages AS m (
        mailbox_id, provider_message_id, stream_key, generation, thread_id, internet_message_id,
        subject, from_address, to_addresses, cc_addresses, bcc_addresses, snippet, received_at,
        labels, is_read, has_attachments, from_name, to_names, cc_names, bcc_names, sent_at,
        in_reply_to, reference_ids, size, importance, flagged)
    SELECT :mailbox_id, p.provider_message_id, :stream_key, :generation, p.thread_id,
           p.internet_message_id, p.subject, p.from_address,
           string_to_array(p.to_addresses, E'\\x1f'), string_to_array(p.cc_addresses, E'\\x1f'),
           string_to_array(p.bcc_addresses, E'\\x1f'), p.snippet, p.received_at,
           string_to_array(p.labels, E'\\x1f'), p.is_read, p.has_attachments, p.from_name,
           string_to_array(p.to_names, E'\\x1f'), string_to_array(p.cc_names, E'\\x1f'),
           string_to_array(p.bcc_names, E'\\x1f'), p.sent_at, p.in_reply_to,
           string_to_array(p.reference_ids, E'\\x1f'), p.size, p.importance, p.flagged
      FROM unnest(
            CAST(CAST(:provider_message_id AS text) AS text[]),
            CAST(CAST(:thread_id AS text) AS text[]),
            CAST(CAST(:internet_message_id AS text) AS text[]),
            CAST(CAST(:subject AS text) AS text[]),
            CAST(CAST(:from_address AS text) AS text[]),
            CAST(CAST(:to_addresses AS text) AS text[]),
            CAST(CAST(:cc_addresses AS text) AS text[]),
            CAST(CAST(:bcc_addresses AS text) AS text[]),
            CAST(CAST(:snippet AS text) AS text[]),
            CAST(CAST(:received_at AS text) AS timestamptz[]),
            CAST(CAST(:labels AS text) AS text[]),
            CAST(CAST(:is_read AS text) AS boolean[]),
            CAST(CAST(:has_attachments AS text) AS boolean[]),
            CAST(CAST(:from_name AS text) AS text[]),
            CAST(CAST(:to_names AS text) AS text[]),
            CAST(CAST(:cc_names AS text) AS text[]),
            CAST(CAST(:bcc_names AS text) AS text[]),
            CAST(CAST(:sent_at AS text) AS timestamptz[]),
            CAST(CAST(:in_reply_to AS text) AS text[]),
            CAST(CAST(:reference_ids AS text) AS text[]),
            CAST(CAST(:size AS text) AS bigint[]),
            CAST(CAST(:importance AS text) AS text[]),
            CAST(CAST(:flagged AS text) AS boolean[]))
        AS p(provider_message_id, thread_id, internet_message_id, subject, from_address,
             to_addresses, cc_addresses, bcc_addresses, snippet, received_at, labels, is_read,
             has_attachments, from_name, to_names, cc_names, bcc_names, sent_at, in_reply_to,
             reference_ids, size, importance, flagged)
    ON CONFLICT (mailbox_id, provider_message_id) DO UPDATE SET
        stream_key = EXCLUDED.stream_key,
        generation = EXCLUDED.generation,
        thread_id = EXCLUDED.thread_id,
        internet_message_id = EXCLUDED.internet_message_id,
        subject = EXCLUDED.subject,
        from_address = EXCLUDED.from_address,
        to_addresses = EXCLUDED.to_addresses,
        cc_addresses = EXCLUDED.cc_addresses,
        bcc_addresses = EXCLUDED.bcc_addresses,
        snippet = EXCLUDED.snippet,
        received_at = EXCLUDED.received_at,
        labels = EXCLUDED.labels,
        is_read = EXCLUDED.is_read,
        has_attachments = EXCLUDED.has_attachments,
        from_name = EXCLUDED.from_name,
        to_names = EXCLUDED.to_names,
        cc_names = EXCLUDED.cc_names,
        bcc_names = EXCLUDED.bcc_names,
        sent_at = EXCLUDED.sent_at,
        in_reply_to = EXCLUDED.in_reply_to,
        reference_ids = EXCLUDED.reference_ids,
        size = EXCLUDED.size,
        importance = EXCLUDED.importance,
        flagged = EXCLUDED.flagged,
        -- When the content last changed: a rebuild that only re-marks a message (stream,
        -- generation) keeps it, which is how RETURNING tells an update from a re-mark.
        updated_at = CASE WHEN
            (m.thread_id, m.internet_message_id, m.subject, m.from_address, m.to_addresses,
             m.cc_addresses, m.bcc_addresses, m.snippet, m.received_at, m.labels, m.is_read,
             m.has_attachments, m.from_name, m.to_names, m.cc_names, m.bcc_names, m.sent_at,
             m.in_reply_to, m.reference_ids, m.size, m.importance, m.flagged)
            IS DISTINCT FROM
            (EXCLUDED.thread_id, EXCLUDED.internet_message_id, EXCLUDED.subject,
             EXCLUDED.from_address, EXCLUDED.to_addresses, EXCLUDED.cc_addresses,
             EXCLUDED.bcc_addresses, EXCLUDED.snippet, EXCLUDED.received_at, EXCLUDED.labels,
             EXCLUDED.is_read, EXCLUDED.has_attachments, EXCLUDED.from_name, EXCLUDED.to_names,
             EXCLUDED.cc_names, EXCLUDED.bcc_names, EXCLUDED.sent_at, EXCLUDED.in_reply_to,
             EXCLUDED.reference_ids, EXCLUDED.size, EXCLUDED.importance, EXCLUDED.flagged)
            THEN now() ELSE m.updated_at END
    -- A replayed page rewrites nothing: no dead tuples, no spurious change events.
    WHERE (m.stream_key, m.generation, m.thread_id, m.internet_message_id, m.subject,
           m.from_address, m.to_addresses, m.cc_addresses, m.bcc_addresses, m.snippet,
           m.received_at, m.labels, m.is_read, m.has_attachments, m.from_name, m.to_names,
           m.cc_names, m.bcc_names, m.sent_at, m.in_reply_to, m.reference_ids, m.size,
           m.importance, m.flagged)
          IS DISTINCT FROM
          (EXCLUDED.stream_key, EXCLUDED.generation, EXCLUDED.thread_id,
           EXCLUDED.internet_message_id, EXCLUDED.subject, EXCLUDED.from_address,
           EXCLUDED.to_addresses, EXCLUDED.cc_addresses, EXCLUDED.bcc_addresses, EXCLUDED.snippet,
           EXCLUDED.received_at, EXCLUDED.labels, EXCLUDED.is_read, EXCLUDED.has_attachments,
           EXCLUDED.from_name, EXCLUDED.to_names, EXCLUDED.cc_names, EXCLUDED.bcc_names,
           EXCLUDED.sent_at, EXCLUDED.in_reply_to, EXCLUDED.reference_ids, EXCLUDED.size,
           EXCLUDED.importance, EXCLUDED.flagged)
    RETURNING m.provider_message_id, (xmax = 0) AS inserted, (m.updated_at = now()) AS changed
    )
    -- One row per page, not one per message: how many were written, which were new unless
    -- that is all of them (a first enumeration: no ids travel back), and which changed.
    SELECT count(*) AS written,
           CASE WHEN count(*) FILTER (WHERE inserted) < :page_size
                THEN array_agg(provider_message_id) FILTER (WHERE inserted) END AS inserted_ids,
           count(*) FILTER (WHERE inserted) AS inserted,
           array_agg(provider_message_id) FILTER (WHERE changed AND NOT inserted) AS updated_ids
      FROM written
    """
)

# The stored values a message event carries (app/events).
EVENT_COLUMNS = (
    "provider_message_id, thread_id, internet_message_id, subject, from_address, "
    "to_addresses, cc_addresses, bcc_addresses, snippet, received_at, labels, is_read, "
    "has_attachments"
)

_LABEL_CHANGES = text(
    """
    WITH change AS (
        SELECT * FROM jsonb_to_recordset(CAST(:changes AS jsonb))
            AS c(provider_message_id text, add text[], remove text[])
    ), relabelled AS (
        SELECT m.provider_message_id,
               ARRAY(SELECT DISTINCT l FROM unnest(m.labels || c.add) AS l
                      WHERE l <> ALL (c.remove) ORDER BY l) AS labels
          FROM messages m JOIN change c ON c.provider_message_id = m.provider_message_id
         WHERE m.mailbox_id = :mailbox_id
    )
    UPDATE messages m
       SET labels = r.labels, is_read = NOT ('UNREAD' = ANY (r.labels)), updated_at = now()
      FROM relabelled r
     WHERE m.mailbox_id = :mailbox_id AND m.provider_message_id = r.provider_message_id
       AND m.labels IS DISTINCT FROM r.labels
    RETURNING m.provider_message_id, m.thread_id, m.internet_message_id, m.subject,
              m.from_address, m.to_addresses, m.cc_addresses, m.bcc_addresses, m.snippet,
              m.received_at, m.labels, m.is_read, m.has_attachments
    """
)


@dataclass(frozen=True, slots=True)
class UpsertResult:
    """What a page's upsert did. A message the store already had as it is is in no list
    (a replayed page reports nothing); one whose content is unchanged but which a rebuild
    re-marked (stream, generation) is written but neither new nor updated."""

    # The page as written: one row per message, labels as stored (sorted, unique).
    page: MessageBatch
    labels: list[list[str]]
    inserted_ids: list[str]
    updated_ids: list[str]

    @property
    def inserted(self) -> int:
        return len(self.inserted_ids)

    @property
    def updated(self) -> int:
        return len(self.updated_ids)

    @property
    def written(self) -> list[str]:
        """Ids first stored or changed by this write."""
        return self.inserted_ids + self.updated_ids


def _element(value: str | None) -> str:
    if value is None:
        return "NULL"
    if "\\" in value or '"' in value:
        value = value.replace("\\", "\\\\").replace('"', '\\"')
    return '"' + value + '"'


def array_literal(values: Iterable[str | None]) -> str:
    """A PostgreSQL array literal; every element quoted, so commas and braces are safe."""
    items = list(values)
    if not items:
        return "{}"
    if None not in items:
        # Common case, one join for the whole column: nothing needs escaping when the only
        # quotes in the joined text are the separators' (two each) and it has no backslash.
        joined = '","'.join(items)  # type: ignore[arg-type]
        if joined.count('"') == 2 * (len(items) - 1) and "\\" not in joined:
            return '{"' + joined + '"}'
    return "{" + ",".join(map(_element, items)) + "}"


_UNIT = "\x1f"


def _list_column(rows: Sequence[Sequence[str]]) -> str:
    """A list column: each row's items joined by U+001F, as one array literal."""
    literal = array_literal([_UNIT.join(row) for row in rows])
    # A separator inside an item would split it in two; checked once for the whole column.
    if literal.count(_UNIT) != sum(len(row) - 1 for row in rows if row):
        literal = array_literal([_UNIT.join(v.replace(_UNIT, "") for v in row) for row in rows])
    return literal


def _timestamps(values: list[datetime | None]) -> str:
    """A timestamptz array literal: msgspec writes RFC 3339 (which PostgreSQL reads) in C,
    several times faster than isoformat() per value. A JSON array of such strings and nulls
    has no character PostgreSQL's array syntax would read differently."""
    return "{" + msgspec.json.encode(values)[1:-1].decode() + "}"


def _bools(values: Iterable[bool]) -> str:
    return "{" + ",".join(["t" if v else "f" for v in values]) + "}"


def _integers(values: Iterable[int | None]) -> str:
    return "{" + ",".join(["NULL" if v is None else str(int(v)) for v in values]) + "}"


def stored_labels(batch: MessageBatch) -> list[list[str]]:
    # Sorted and unique, so an unchanged message compares equal and is not rewritten.
    return [sorted(set(labels)) for labels in batch.labels]


def _columns(batch: MessageBatch, labels: list[list[str]]) -> dict[str, str]:
    return {
        "provider_message_id": array_literal(batch.provider_message_id),
        "thread_id": array_literal(batch.thread_id),
        "internet_message_id": array_literal(batch.internet_message_id),
        "subject": array_literal(batch.subject),
        "from_address": array_literal(batch.from_),
        "to_addresses": _list_column(batch.to),
        "cc_addresses": _list_column(batch.cc),
        "bcc_addresses": _list_column(batch.bcc),
        "snippet": array_literal(batch.snippet),
        "received_at": _timestamps(batch.received_at),
        "labels": _list_column(labels),
        "is_read": _bools(batch.is_read),
        "has_attachments": _bools(batch.has_attachments),
        "from_name": array_literal(batch.from_name),
        "to_names": _list_column(batch.to_names),
        "cc_names": _list_column(batch.cc_names),
        "bcc_names": _list_column(batch.bcc_names),
        "sent_at": _timestamps(batch.sent_at),
        "in_reply_to": array_literal(batch.in_reply_to),
        "reference_ids": _list_column(batch.references),
        "size": _integers(batch.size),
        "importance": array_literal(batch.importance),
        "flagged": _bools(batch.flagged),
    }


def _net_label_changes(changes: Iterable[LabelChange]) -> list[dict[str, Any]]:
    """Fold several changes to one message into one, in order, so one statement applies them."""
    net: dict[str, tuple[set[str], set[str]]] = {}
    for change in changes:
        add, remove = net.setdefault(change.provider_message_id, (set(), set()))
        for label in change.add:
            add.add(label)
            remove.discard(label)
        for label in change.remove:
            remove.add(label)
            add.discard(label)
    return [
        {"provider_message_id": mid, "add": sorted(add), "remove": sorted(remove)}
        for mid, (add, remove) in net.items()
    ]


class MessageRepository:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def upsert_page(
        self,
        mailbox_id: uuid.UUID,
        stream_key: str,
        generation: int,
        messages: MessageBatch,
    ) -> UpsertResult:
        if not messages:
            return UpsertResult(messages, [], [], [])
        # ON CONFLICT cannot touch one row twice in a statement: the last version wins.
        page = messages.latest()
        labels = stored_labels(page)
        result = await self.session.execute(
            _UPSERT,
            {
                **_columns(page, labels),
                "mailbox_id": mailbox_id,
                "stream_key": stream_key,
                "generation": generation,
                "page_size": len(page),
            },
        )
        _written, inserted_ids, inserted, updated_ids = result.one()
        if inserted_ids is None and int(inserted) == len(page):
            inserted_ids = page.provider_message_id
        return UpsertResult(page, labels, list(inserted_ids or ()), list(updated_ids or ()))

    async def delete_from_stream(
        self,
        mailbox_id: uuid.UUID,
        stream_key: str | None,
        provider_message_ids: Sequence[str],
        *,
        remember: bool = False,
    ) -> list[str]:
        """Delete ids that left `stream_key` (None: wherever they are). Returns what went.

        `remember`: keep a tombstone of each (`returning` finds it if the message shows up
        in another stream: a move whose removal was seen first)."""
        if not provider_message_ids:
            return []
        result = await self.session.execute(
            text(
                """
                WITH gone AS (
                    DELETE FROM messages
                     WHERE mailbox_id = :mailbox_id
                       AND provider_message_id = ANY(CAST(:ids AS text[]))
                       AND (CAST(:stream_key AS text) IS NULL OR stream_key = :stream_key)
                 RETURNING provider_message_id
                ), remembered AS (
                    INSERT INTO message_tombstones (mailbox_id, provider_message_id)
                    SELECT :mailbox_id, provider_message_id FROM gone WHERE :remember
                    ON CONFLICT (mailbox_id, provider_message_id) DO UPDATE SET deleted_at = now()
                )
                SELECT provider_message_id FROM gone
                """
            ),
            {
                "mailbox_id": mailbox_id,
                "ids": list(provider_message_ids),
                "stream_key": stream_key,
                "remember": remember,
            },
        )
        return [row[0] for row in result.all()]

    async def returning(
        self, mailbox_id: uuid.UUID, provider_message_ids: Sequence[str]
    ) -> set[str]:
        """Of ids just stored anew, those a removal remembered (and forget them now)."""
        if not provider_message_ids:
            return set()
        result = await self.session.execute(
            text(
                "DELETE FROM message_tombstones WHERE mailbox_id = :mailbox_id "
                "AND provider_message_id = ANY(CAST(:ids AS text[])) RETURNING provider_message_id"
            ),
            {"mailbox_id": mailbox_id, "ids": list(provider_message_ids)},
        )
        return set(result.scalars().all())

    async def prune_tombstones(self, older_than_hours: float) -> int:
        result = await self.session.execute(
            text(
                "DELETE FROM message_tombstones "
                "WHERE deleted_at < now() - make_interval(secs => :seconds)"
            ),
            {"seconds": older_than_hours * 3600},
        )
        return int(result.rowcount)  # type: ignore[attr-defined]

    async def apply_label_changes(
        self, mailbox_id: uuid.UUID, changes: Sequence[LabelChange]
    ) -> list[dict[str, Any]]:
        """Apply label changes; returns the rows they changed, as stored now."""
        if not changes:
            return []
        result = await self.session.execute(
            _LABEL_CHANGES,
            {"mailbox_id": mailbox_id, "changes": json.dumps(_net_label_changes(changes))},
        )
        return [dict(row._mapping) for row in result.all()]

    async def sweep_stream(
        self, mailbox_id: uuid.UUID, stream_key: str, generation: int
    ) -> list[str]:
        """After a full enumeration: remove what it did not see (gone at the provider)."""
        result = await self.session.execute(
            text(
                "DELETE FROM messages WHERE mailbox_id = :mailbox_id AND stream_key = :stream_key "
                "AND generation < :generation RETURNING provider_message_id"
            ),
            {"mailbox_id": mailbox_id, "stream_key": stream_key, "generation": generation},
        )
        return list(result.scalars().all())

    async def delete_stream(self, mailbox_id: uuid.UUID, stream_key: str) -> list[str]:
        """Every message of a stream (folder) that no longer exists. Returns what went."""
        result = await self.session.execute(
            text(
                "DELETE FROM messages WHERE mailbox_id = :mailbox_id AND stream_key = :stream_key "
                "RETURNING provider_message_id"
            ),
            {"mailbox_id": mailbox_id, "stream_key": stream_key},
        )
        return list(result.scalars().all())

    async def replace_stream_labels(
        self,
        mailbox_id: uuid.UUID,
        stream_key: str,
        old: Sequence[str],
        new: Sequence[str],
    ) -> list[dict[str, Any]]:
        """A renamed or moved folder: its label changes on every message it holds. The
        stream's labels lead each row's labels (the rest follow in their order). Returns
        the rows as stored now."""
        result = await self.session.execute(
            text(
                """
                UPDATE messages
                   SET labels = CAST(:new AS text[]) || ARRAY(
                           SELECT label FROM unnest(labels) WITH ORDINALITY AS t(label, n)
                            WHERE NOT (label = ANY(CAST(:old AS text[])))
                              AND NOT (label = ANY(CAST(:new AS text[])))
                            ORDER BY n)
                 WHERE mailbox_id = :mailbox_id AND stream_key = :stream_key
             RETURNING provider_message_id, thread_id, internet_message_id, subject,
                       from_address, to_addresses, cc_addresses, bcc_addresses, snippet,
                       received_at, labels, is_read, has_attachments
                """
            ),
            {
                "mailbox_id": mailbox_id,
                "stream_key": stream_key,
                "old": list(old),
                "new": list(new),
            },
        )
        return [dict(row._mapping) for row in result.all()]

    async def delete_streams_except(self, mailbox_id: uuid.UUID, keep: Sequence[str]) -> list[str]:
        """Messages of streams (folders) that no longer exist."""
        result = await self.session.execute(
            text(
                "DELETE FROM messages WHERE mailbox_id = :mailbox_id "
                "AND NOT (stream_key = ANY(CAST(:keep AS text[]))) RETURNING provider_message_id"
            ),
            {"mailbox_id": mailbox_id, "keep": list(keep)},
        )
        return list(result.scalars().all())

    async def count(self, mailbox_id: uuid.UUID) -> int:
        result = await self.session.execute(
            text("SELECT count(*) FROM messages WHERE mailbox_id = :mailbox_id"),
            {"mailbox_id": mailbox_id},
        )
        return int(result.scalar_one())

    async def purge(self, mailbox_id: uuid.UUID) -> list[str]:
        result = await self.session.execute(
            text(
                "DELETE FROM messages WHERE mailbox_id = :mailbox_id RETURNING provider_message_id"
            ),
            {"mailbox_id": mailbox_id},
        )
        return list(result.scalars().all())

    async def snapshot_batch(
        self, mailbox_id: uuid.UUID, after: str | None, limit: int
    ) -> list[dict[str, Any]]:
        """The next `limit` messages after `after` in primary-key order (a resumable walk)."""
        result = await self.session.execute(
            text(
                f"""
                SELECT {EVENT_COLUMNS} FROM messages
                 WHERE mailbox_id = :mailbox_id
                   AND provider_message_id > COALESCE(CAST(:after AS text), '')
                 ORDER BY provider_message_id
                 LIMIT :limit
                """  # noqa: S608 - a constant column list
            ),
            {"mailbox_id": mailbox_id, "after": after, "limit": limit},
        )
        return [dict(row._mapping) for row in result.all()]

    async def ground_truth(self, mailbox_id: uuid.UUID) -> dict[str, dict[str, Any]]:
        """Every row keyed by provider id; for tests and the convergence checks."""
        result = await self.session.execute(
            text(
                "SELECT provider_message_id, thread_id, labels, is_read, subject, stream_key "
                "FROM messages WHERE mailbox_id = :mailbox_id"
            ),
            {"mailbox_id": mailbox_id},
        )
        return {row[0]: dict(row._mapping) for row in result.all()}
