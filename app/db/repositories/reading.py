"""What the read API asks of the store: one message, filtered listings, threads, bodies.

Every listing is newest first and keyset-paginated on (COALESCE(received_at, -infinity),
id), the order of the listing index. A filter is evaluated while that index is walked,
and a page reads at most `scan_budget` index entries per mailbox: when a rare filter
finds fewer than `limit` matches within the budget, the page comes back short with a
cursor at the last entry it read, so no request costs more than the budget and every
matching message is still returned exactly once. (The write path pays for every index
on `messages`; the measurements behind this choice are in migration 0004 and the README.)
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

SORT_KEY = "COALESCE(received_at, '-infinity'::timestamptz)"

MESSAGE_COLUMNS = (
    "id, mailbox_id, provider_message_id, thread_id, internet_message_id, subject, "
    "from_address, to_addresses, cc_addresses, bcc_addresses, snippet, received_at, labels, "
    "is_read, has_attachments, from_name, to_names, cc_names, bcc_names, sent_at, "
    "in_reply_to, reference_ids, size, importance, flagged"
)
DETAIL_COLUMNS = MESSAGE_COLUMNS + ", stream_key, updated_at"


@dataclass(frozen=True, slots=True)
class Key:
    """A position in the newest-first order."""

    received_at: datetime | None
    id: int


@dataclass(frozen=True, slots=True)
class MessageFilter:
    labels: tuple[str, ...] = ()
    from_: str | None = None
    to: str | None = None
    participant: str | None = None
    after: datetime | None = None
    before: datetime | None = None
    unread: bool | None = None
    has_attachments: bool | None = None
    words: tuple[str, ...] = ()

    @property
    def empty(self) -> bool:
        return self == MessageFilter()

    def sql(self, alias: str = "") -> tuple[str, dict[str, Any]]:
        """`AND …` conditions on a messages row (prefixed by `alias.`) and their parameters."""
        a = f"{alias}." if alias else ""
        parts: list[str] = []
        params: dict[str, Any] = {}
        if self.labels:
            parts.append(f"{a}labels @> CAST(:f_labels AS text[])")
            params["f_labels"] = list(self.labels)
        if self.from_ is not None:
            parts.append(f"{a}from_address = :f_from")
            params["f_from"] = self.from_
        recipients = (
            f"(:{{p}} = ANY({a}to_addresses) OR :{{p}} = ANY({a}cc_addresses) "
            f"OR :{{p}} = ANY({a}bcc_addresses))"
        )
        if self.to is not None:
            parts.append(recipients.format(p="f_to"))
            params["f_to"] = self.to
        if self.participant is not None:
            parts.append(
                f"({a}from_address = :f_participant OR "
                + recipients.format(p="f_participant")
                + ")"
            )
            params["f_participant"] = self.participant
        if self.after is not None or self.before is not None:
            parts.append(f"{a}received_at IS NOT NULL")
        if self.after is not None:
            parts.append(f"COALESCE({a}received_at, '-infinity'::timestamptz) >= :f_after")
            params["f_after"] = self.after
        if self.before is not None:
            parts.append(f"COALESCE({a}received_at, '-infinity'::timestamptz) < :f_before")
            params["f_before"] = self.before
        if self.unread is not None:
            parts.append(f"{a}is_read = :f_is_read")
            params["f_is_read"] = not self.unread
        if self.has_attachments is not None:
            parts.append(f"{a}has_attachments = :f_has_attachments")
            params["f_has_attachments"] = self.has_attachments
        for n, word in enumerate(self.words):
            # Each word somewhere in the subject, snippet or a name (case-insensitive).
            parts.append(
                f"concat_ws(' ', {a}subject, {a}snippet, {a}from_name, "
                f"array_to_string({a}to_names || {a}cc_names || {a}bcc_names, ' ')) "
                f"ILIKE :f_word{n} ESCAPE '\\'"
            )
            escaped = word.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
            params[f"f_word{n}"] = f"%{escaped}%"
        return "".join(f" AND {part}" for part in parts), params


@dataclass(slots=True)
class ScanPage:
    rows: list[dict[str, Any]] = field(default_factory=list)
    # Where the next page starts; None on the last page.
    next_key: Key | None = None


def _keyset(after: Key | None, alias: str = "") -> tuple[str, dict[str, Any]]:
    if after is None:
        return "", {}
    a = f"{alias}." if alias else ""
    return (
        f" AND (COALESCE({a}received_at, '-infinity'::timestamptz), {a}id) < "
        "(COALESCE(CAST(:k_received AS timestamptz), '-infinity'::timestamptz), :k_id)",
        {"k_received": after.received_at, "k_id": after.id},
    )


def _key(row: dict[str, Any]) -> Key:
    return Key(row["received_at"], int(row["id"]))


def _order(key: Key) -> tuple[float, int]:
    return (key.received_at.timestamp() if key.received_at else float("-inf"), key.id)


class ReadRepository:
    def __init__(self, session: AsyncSession, *, scan_budget: int = 20_000) -> None:
        self.session = session
        self.scan_budget = scan_budget

    # -- one message ----------------------------------------------------------------------

    async def message(
        self, mailbox_ids: Sequence[uuid.UUID], message_id: int
    ) -> dict[str, Any] | None:
        """The row with this public id, if it belongs to one of `mailbox_ids`."""
        if not mailbox_ids:
            return None
        result = await self.session.execute(
            text(
                f"SELECT {DETAIL_COLUMNS} FROM messages "  # noqa: S608 - constant columns
                "WHERE id = :id AND mailbox_id = ANY(CAST(:mailboxes AS uuid[]))"
            ),
            {"id": message_id, "mailboxes": list(mailbox_ids)},
        )
        row = result.mappings().first()
        return dict(row) if row is not None else None

    # -- filtered listing -----------------------------------------------------------------

    async def _scan_mailbox(
        self, mailbox_id: uuid.UUID, flt: MessageFilter, limit: int, after: Key | None
    ) -> tuple[list[dict[str, Any]], Key | None]:
        """Up to `limit` matches, newest first, from at most `scan_budget` index entries;
        and the last entry read when the budget ran out first."""
        conditions, params = flt.sql()
        keyset, keyset_params = _keyset(after)
        # The date range bounds the index walk itself; the rest filters what it reads.
        bounds = ""
        if flt.after is not None:
            bounds += f" AND {SORT_KEY} >= :f_after"
        if flt.before is not None:
            bounds += f" AND {SORT_KEY} < :f_before"
        result = await self.session.execute(
            text(
                f"""
                SELECT * FROM (
                    SELECT {MESSAGE_COLUMNS},
                           (true {conditions}) AS hit,
                           row_number() OVER (ORDER BY {SORT_KEY} DESC, id DESC) AS n
                      FROM messages
                     WHERE mailbox_id = :mailbox_id {keyset} {bounds}
                     ORDER BY {SORT_KEY} DESC, id DESC
                     LIMIT :budget
                ) AS scanned
                WHERE hit OR n = :budget
                LIMIT :limit
                """  # noqa: S608 - fragments are constants; values are bound
            ),
            {
                **params,
                **keyset_params,
                "mailbox_id": mailbox_id,
                "budget": self.scan_budget,
                "limit": limit + 1,
            },
        )
        rows = [dict(row) for row in result.mappings().all()]
        edge = None
        if rows and rows[-1]["n"] == self.scan_budget:
            edge = _key(rows[-1])
        return [r for r in rows if r["hit"]], edge

    async def list_messages(
        self,
        mailbox_ids: Sequence[uuid.UUID],
        flt: MessageFilter,
        limit: int,
        after: Key | None,
    ) -> ScanPage:
        hits: list[dict[str, Any]] = []
        edges: list[Key] = []
        for mailbox_id in mailbox_ids:
            found, edge = await self._scan_mailbox(mailbox_id, flt, limit, after)
            hits += found
            if edge is not None:
                edges.append(edge)
        # Below the highest edge some mailbox has not been read yet: stop there.
        floor = max(edges, key=_order) if edges else None
        if floor is not None:
            hits = [h for h in hits if _order(_key(h)) >= _order(floor)]
        hits.sort(key=lambda h: _order(_key(h)), reverse=True)
        page = ScanPage(rows=hits[:limit])
        if len(hits) > limit:
            page.next_key = _key(page.rows[-1])
        elif floor is not None:
            page.next_key = floor
        return page

    # -- threads --------------------------------------------------------------------------

    async def list_threads(
        self,
        mailbox_ids: Sequence[uuid.UUID],
        flt: MessageFilter,
        limit: int,
        after: Key | None,
    ) -> tuple[list[dict[str, Any]], Key | None]:
        """Threads newest first: each is represented by its newest (matching) message, so
        threads page with the same keyset as messages, without aggregating the mailbox."""
        inner, params = flt.sql("t")
        # `inner` is built from constant fragments; every value in it is bound.
        newest = (
            " AND NOT EXISTS (SELECT 1 FROM messages t WHERE t.mailbox_id = messages.mailbox_id"  # noqa: S608
            " AND t.thread_id = messages.thread_id"
            " AND (COALESCE(t.received_at, '-infinity'::timestamptz), t.id) >"
            " (COALESCE(messages.received_at, '-infinity'::timestamptz), messages.id)"
            f"{inner})"
        )
        heads: list[dict[str, Any]] = []
        edges: list[Key] = []
        for mailbox_id in mailbox_ids:
            found, edge = await self._scan_threads(mailbox_id, flt, newest, params, limit, after)
            heads += found
            if edge is not None:
                edges.append(edge)
        floor = max(edges, key=_order) if edges else None
        if floor is not None:
            heads = [h for h in heads if _order(_key(h)) >= _order(floor)]
        heads.sort(key=lambda h: _order(_key(h)), reverse=True)
        page = heads[:limit]
        next_key = None
        if len(heads) > limit:
            next_key = _key(page[-1])
        elif floor is not None:
            next_key = floor
        return await self._summaries(page), next_key

    async def _scan_threads(
        self,
        mailbox_id: uuid.UUID,
        flt: MessageFilter,
        newest: str,
        newest_params: dict[str, Any],
        limit: int,
        after: Key | None,
    ) -> tuple[list[dict[str, Any]], Key | None]:
        conditions, params = flt.sql()
        keyset, keyset_params = _keyset(after)
        result = await self.session.execute(
            text(
                f"""
                SELECT * FROM (
                    SELECT id, mailbox_id, thread_id, received_at,
                           (thread_id IS NOT NULL {conditions} {newest}) AS hit,
                           row_number() OVER (ORDER BY {SORT_KEY} DESC, id DESC) AS n
                      FROM messages
                     WHERE mailbox_id = :mailbox_id {keyset}
                     ORDER BY {SORT_KEY} DESC, id DESC
                     LIMIT :budget
                ) AS scanned
                WHERE hit OR n = :budget
                LIMIT :limit
                """  # noqa: S608 - fragments are constants; values are bound
            ),
            {
                **params,
                **newest_params,
                **keyset_params,
                "mailbox_id": mailbox_id,
                "budget": self.scan_budget,
                "limit": limit + 1,
            },
        )
        rows = [dict(row) for row in result.mappings().all()]
        edge = _key(rows[-1]) if rows and rows[-1]["n"] == self.scan_budget else None
        return [r for r in rows if r["hit"]], edge

    async def _summaries(self, heads: list[dict[str, Any]]) -> list[dict[str, Any]]:
        if not heads:
            return []
        pairs = [{"m": str(h["mailbox_id"]), "t": h["thread_id"]} for h in heads]
        result = await self.session.execute(
            text(
                """
                SELECT p.m::uuid AS mailbox_id, p.t AS thread_id,
                       count(*) AS message_count,
                       count(*) FILTER (WHERE NOT msg.is_read) AS unread_count,
                       max(msg.received_at) AS last_message_at,
                       (array_agg(msg.subject ORDER BY COALESCE(msg.received_at,
                           '-infinity'::timestamptz), msg.id))[1] AS subject,
                       ARRAY(SELECT DISTINCT l FROM messages x, unnest(x.labels) AS l
                              WHERE x.mailbox_id = p.m::uuid AND x.thread_id = p.t
                              ORDER BY l) AS labels
                  FROM jsonb_to_recordset(CAST(:pairs AS jsonb)) AS p(m text, t text)
                  JOIN messages msg ON msg.mailbox_id = p.m::uuid AND msg.thread_id = p.t
                 GROUP BY p.m, p.t
                """
            ),
            {"pairs": json.dumps(pairs)},
        )
        summaries = {(str(r["mailbox_id"]), r["thread_id"]): dict(r) for r in result.mappings()}
        people = await self._participants(pairs)
        out = []
        for head in heads:
            key = (str(head["mailbox_id"]), head["thread_id"])
            summary = summaries.get(key)
            if summary is None:
                continue
            summary["participants"] = people.get(key, [])
            summary["head_received_at"] = head["received_at"]
            summary["head_id"] = head["id"]
            out.append(summary)
        return out

    async def _participants(
        self, pairs: list[dict[str, Any]]
    ) -> dict[tuple[str, str], list[dict[str, str | None]]]:
        result = await self.session.execute(
            text(
                """
                SELECT p.m AS mailbox_id, p.t AS thread_id, msg.from_address, msg.from_name,
                       msg.to_addresses, msg.to_names, msg.cc_addresses, msg.cc_names
                  FROM jsonb_to_recordset(CAST(:pairs AS jsonb)) AS p(m text, t text)
                  JOIN messages msg ON msg.mailbox_id = p.m::uuid AND msg.thread_id = p.t
                 ORDER BY COALESCE(msg.received_at, '-infinity'::timestamptz), msg.id
                """
            ),
            {"pairs": json.dumps(pairs)},
        )
        found: dict[tuple[str, str, str], dict[str, str | None]] = {}
        out: dict[tuple[str, str], list[dict[str, str | None]]] = {}
        for row in result.mappings():
            key = (row["mailbox_id"], row["thread_id"])
            seen = out.setdefault(key, [])
            people = [(row["from_address"], row["from_name"])]
            people += pair_names(row["to_addresses"], row["to_names"])
            people += pair_names(row["cc_addresses"], row["cc_names"])
            for address, name in people:
                if not address:
                    continue
                entry_key = (*key, address)
                entry = found.get(entry_key)
                if entry is None:
                    entry = {"address": address, "name": name or None}
                    found[entry_key] = entry
                    seen.append(entry)
                elif not entry["name"] and name:
                    entry["name"] = name
        return out

    async def thread_messages(
        self, mailbox_ids: Sequence[uuid.UUID], thread_id: str
    ) -> list[dict[str, Any]]:
        """A thread's messages, oldest first."""
        if not mailbox_ids:
            return []
        result = await self.session.execute(
            text(
                f"SELECT {MESSAGE_COLUMNS} FROM messages "  # noqa: S608 - constant columns
                "WHERE mailbox_id = ANY(CAST(:mailboxes AS uuid[])) AND thread_id = :thread "
                f"ORDER BY {SORT_KEY}, id LIMIT 5000"
            ),
            {"mailboxes": list(mailbox_ids), "thread": thread_id},
        )
        return [dict(row) for row in result.mappings().all()]

    # -- body cache -----------------------------------------------------------------------

    async def cached_body(
        self, mailbox_id: uuid.UUID, provider_message_id: str, fmt: str, max_age_seconds: int
    ) -> dict[str, Any] | None:
        result = await self.session.execute(
            text(
                "SELECT content, attachments FROM message_bodies "
                "WHERE mailbox_id = :m AND provider_message_id = :p AND format = :f "
                "AND fetched_at > now() - make_interval(secs => :age)"
            ),
            {"m": mailbox_id, "p": provider_message_id, "f": fmt, "age": max_age_seconds},
        )
        row = result.mappings().first()
        return dict(row) if row is not None else None

    async def store_body(
        self,
        mailbox_id: uuid.UUID,
        provider_message_id: str,
        fmt: str,
        content: str,
        attachments: list[dict[str, Any]],
        max_age_seconds: int,
    ) -> None:
        await self.session.execute(
            text(
                """
                INSERT INTO message_bodies (mailbox_id, provider_message_id, format, content,
                                            attachments)
                VALUES (:m, :p, :f, :c, CAST(:a AS jsonb))
                ON CONFLICT (mailbox_id, provider_message_id, format) DO UPDATE
                   SET content = EXCLUDED.content, attachments = EXCLUDED.attachments,
                       fetched_at = now()
                """
            ),
            {
                "m": mailbox_id,
                "p": provider_message_id,
                "f": fmt,
                "c": content,
                "a": json.dumps(attachments),
            },
        )
        # Expired entries go as new ones come: the cache never outgrows its expiry.
        await self.session.execute(
            text(
                "DELETE FROM message_bodies WHERE fetched_at < now() - make_interval(secs => :age)"
            ),
            {"age": max_age_seconds},
        )

    async def forget_bodies(self, mailbox_id: uuid.UUID) -> None:
        await self.session.execute(
            text("DELETE FROM message_bodies WHERE mailbox_id = :m"), {"m": mailbox_id}
        )


def pair_names(
    addresses: Sequence[str], names: Sequence[str] | None
) -> list[tuple[str, str | None]]:
    """Addresses with their names; a missing or empty name is None."""
    names = names or ()
    return [
        (address, (names[i] or None) if i < len(names) else None)
        for i, address in enumerate(addresses)
    ]
