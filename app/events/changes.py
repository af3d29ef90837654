"""What an outbox row holds, kind by kind: written in the transaction that made the change,
expanded into events by the publisher (app/events/expand.py).

A page is one row, not one row per message: its events travel as columns (one list per
field, like the page itself), so the page's transaction writes one small-keyed JSON document
instead of a thousand, and the publisher turns it into one NATS message per event. The
values are those the page's statements wrote (the upsert's input as stored, the label
change's RETURNING), never read again later.

    messages.changed   {"stream", "received": COLUMNS, "updated": COLUMNS, "deleted": [ids]}
    messages.snapshot  {"snapshot_id", "snapshot": COLUMNS}
    mailbox.*          {"user_id", "status", ...detail}   (app/db/repositories/mailboxes.py)

COLUMNS is {field: [value per message]} over `FIELDS`. Within one row a message appears at
most once: its net effect on the committed store (a message stored and deleted by the same
page was never visible, so it is no event at all).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from app.db.repositories.messages import UpsertResult

MESSAGES_CHANGED = "messages.changed"
MESSAGES_SNAPSHOT = "messages.snapshot"
SNAPSHOT_COMPLETE = "mailbox.snapshot_complete"

FIELDS = (
    "provider_message_id",
    "thread_id",
    "internet_message_id",
    "subject",
    "from",
    "to",
    "cc",
    "bcc",
    "snippet",
    "received_at",
    "labels",
    "is_read",
    "has_attachments",
)
# The same fields as the messages table names them.
_ROW_FIELDS = dict(zip(FIELDS, FIELDS, strict=True)) | {
    "from": "from_address",
    "to": "to_addresses",
    "cc": "cc_addresses",
    "bcc": "bcc_addresses",
}

Columns = dict[str, list[Any]]


def columns_of_rows(rows: Sequence[dict[str, Any]]) -> Columns:
    """Columns from rows as the messages table returns them."""
    return {field: [row[_ROW_FIELDS[field]] for row in rows] for field in FIELDS}


def _columns_of_upsert(result: UpsertResult, ids: Sequence[str]) -> Columns:
    page = result.page
    every: Columns = {
        "provider_message_id": page.provider_message_id,
        "thread_id": page.thread_id,
        "internet_message_id": page.internet_message_id,
        "subject": page.subject,
        "from": page.from_,
        "to": page.to,
        "cc": page.cc,
        "bcc": page.bcc,
        "snippet": page.snippet,
        "received_at": page.received_at,
        "labels": result.labels,
        "is_read": page.is_read,
        "has_attachments": page.has_attachments,
    }
    if len(ids) == len(page) and ids == page.provider_message_id:
        # A first enumeration: every message is new, in page order; no copying.
        return every
    index = {mid: i for i, mid in enumerate(page.provider_message_id)}
    picks = [index[mid] for mid in ids]
    return {field: [values[i] for i in picks] for field, values in every.items()}


def _concat(parts: Iterable[Columns]) -> Columns:
    parts = [p for p in parts if p["provider_message_id"]]
    if len(parts) == 1:
        return parts[0]
    return {field: [v for part in parts for v in part[field]] for field in FIELDS}


def _without(columns: Columns, drop: set[str]) -> Columns:
    keep = [i for i, mid in enumerate(columns["provider_message_id"]) if mid not in drop]
    if len(keep) == len(columns["provider_message_id"]):
        return columns
    return {field: [values[i] for i in keep] for field, values in columns.items()}


class PageChanges:
    """A transaction's net effect on a mailbox's messages, in the shape its outbox row holds.

    Feed it in the order the statements ran (upserts, label changes, deletes)."""

    def __init__(self, stream: str | None) -> None:
        self.stream = stream
        self._received: list[Columns] = []
        self._updated: list[Columns] = []
        self._new: set[str] = set()
        self._relabelled: dict[str, dict[str, Any]] = {}
        self._deleted: list[str] = []

    def upserted(
        self, result: UpsertResult, came_back: set[str] | frozenset[str] = frozenset()
    ) -> None:
        """`came_back`: of the new rows, messages consumers already know (a move whose
        removal from the old folder committed first): updates, not first arrivals."""
        new = result.inserted_ids
        if came_back:
            new = [mid for mid in new if mid not in came_back]
            self._updated.append(
                _columns_of_upsert(result, [m for m in result.inserted_ids if m in came_back])
            )
        if new:
            self._received.append(_columns_of_upsert(result, new))
        self._new.update(result.inserted_ids)
        if result.updated_ids:
            self._updated.append(_columns_of_upsert(result, result.updated_ids))

    def relabelled(self, rows: Sequence[dict[str, Any]]) -> None:
        for row in rows:
            self._relabelled[row["provider_message_id"]] = row

    def deleted(self, ids: Iterable[str]) -> None:
        self._deleted.extend(ids)

    def payload(self) -> dict[str, Any] | None:
        """The row's payload, or None when nothing visible changed."""
        deleted = set(self._deleted)
        # Stored and removed by the same transaction: nobody ever saw it.
        vanished = deleted & self._new
        gone = [mid for mid in dict.fromkeys(self._deleted) if mid not in vanished]
        # A label change after the upsert: the message's last state is the label change's.
        later = set(self._relabelled) | deleted
        every_received = _concat(self._received)
        first = set(every_received["provider_message_id"])
        received = _without(every_received, later)
        updated = _without(_concat(self._updated), later)
        relabelled = [row for mid, row in self._relabelled.items() if mid not in deleted]
        if relabelled:
            new = [row for row in relabelled if row["provider_message_id"] in first]
            old = [row for row in relabelled if row["provider_message_id"] not in first]
            received = _concat([received, columns_of_rows(new)])
            updated = _concat([updated, columns_of_rows(old)])
        payload: dict[str, Any] = {"stream": self.stream}
        if received["provider_message_id"]:
            payload["received"] = received
        if updated["provider_message_id"]:
            payload["updated"] = updated
        if gone:
            payload["deleted"] = gone
        return payload if len(payload) > 1 else None


def count(columns: Columns | None) -> int:
    return len(columns["provider_message_id"]) if columns else 0
