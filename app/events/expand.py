"""Outbox rows into events: one JSON document and subject per event, as the contract
(app/events/contract.py) describes them.

`event_id` is `{mailbox_id}:{position}:{index}`: the row's place in its mailbox's commit
order and the event's place in the row. It never changes for a given row, so a row
published twice (a publisher killed between JetStream's ack and its mark) carries the same
`Nats-Msg-Id` and JetStream keeps one copy.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from datetime import UTC
from typing import Any, NamedTuple

import orjson

from app.db.repositories.outbox import OutboxRow
from app.events.changes import MESSAGES_CHANGED, MESSAGES_SNAPSHOT, Columns
from app.events.subjects import user_token

# app/sync/cases/events.py writes it: {"user_id", "case_id", "messages": [{...}]}.
CASE_MESSAGE_LINKED = "case.message_linked"

log = logging.getLogger(__name__)


class Outgoing(NamedTuple):
    type: str
    subject: str
    event_id: str
    data: bytes


def _head(fields: dict[str, Any]) -> bytes:
    """The fields every event of a section shares, as the start of a JSON object: each
    event's own fields are spliced after it (one small dict per event, not a merged copy)."""
    return orjson.dumps(fields)[:-1] + b","


def _message_events(
    columns: Columns, event_type: str, head: bytes, subject: str, id_prefix: str, at: int
) -> Iterator[Outgoing]:
    dumps = orjson.dumps
    for i, (
        mid,
        thread,
        imid,
        subj,
        sender,
        to,
        cc,
        bcc,
        snip,
        date,
        labels,
        read,
        att,
    ) in enumerate(
        zip(
            columns["provider_message_id"],
            columns["thread_id"],
            columns["internet_message_id"],
            columns["subject"],
            columns["from"],
            columns["to"],
            columns["cc"],
            columns["bcc"],
            columns["snippet"],
            columns["received_at"],
            columns["labels"],
            columns["is_read"],
            columns["has_attachments"],
            strict=True,
        ),
        start=at,
    ):
        event_id = f"{id_prefix}{i}"
        body = dumps(
            {
                "event_id": event_id,
                "provider_message_id": mid,
                "provider_thread_id": thread,
                "internet_message_id": imid,
                "subject": subj,
                "sender": sender,
                "to_addrs": to,
                "cc_addrs": cc,
                "bcc_addrs": bcc,
                "snippet": snip,
                "labels": labels,
                "msg_date": date,
                "is_read": read,
                "has_attachments": att,
            }
        )
        yield Outgoing(event_type, subject, event_id, head + body[1:])


def expand(row: OutboxRow, prefix: str) -> list[Outgoing]:
    """Every event of one outbox row, in the order they happened."""
    payload: dict[str, Any] = orjson.loads(row.payload)
    user_id = row.user_id if row.user_id is not None else payload.get("user_id")
    if user_id is None or row.provider is None or row.position is None:
        log.error("outbox row %s has no mailbox to publish for; skipped", row.id)
        return []
    mailbox_id = str(row.mailbox_id)
    ts = row.created_at.astimezone(UTC).isoformat()
    base = {
        "ts": ts,
        "user_id": user_id,
        "mailbox_id": mailbox_id,
        "inbox_id": mailbox_id,
        "provider": row.provider,
    }
    stem = f"{prefix}.user.{user_token(user_id)}."
    id_prefix = f"{mailbox_id}:{row.position}:"
    out: list[Outgoing] = []
    if row.kind == MESSAGES_CHANGED:
        with_version = {**base, "version": row.position}
        for section, event_type in (("received", "email.received"), ("updated", "email.updated")):
            columns = payload.get(section)
            if columns:
                head = _head({"type": event_type, **with_version})
                out.extend(
                    _message_events(
                        columns, event_type, head, stem + event_type, id_prefix, len(out)
                    )
                )
        deleted = payload.get("deleted")
        if deleted:
            head = _head({"type": "email.deleted", **with_version})
            subject = stem + "email.deleted"
            dumps = orjson.dumps
            for i, mid in enumerate(deleted, start=len(out)):
                event_id = f"{id_prefix}{i}"
                body = dumps({"event_id": event_id, "provider_message_id": mid})
                out.append(Outgoing("email.deleted", subject, event_id, head + body[1:]))
        return out
    if row.kind == CASE_MESSAGE_LINKED:
        # One event per linked message (the row holds a transaction's links to one case).
        case = {**base, "case_id": payload["case_id"]}
        subject = stem + CASE_MESSAGE_LINKED
        for i, message in enumerate(payload["messages"]):
            event_id = f"{id_prefix}{i}"
            out.append(
                Outgoing(
                    CASE_MESSAGE_LINKED,
                    subject,
                    event_id,
                    orjson.dumps(
                        {
                            "type": CASE_MESSAGE_LINKED,
                            "event_id": event_id,
                            **case,
                            "provider_message_id": message["provider_message_id"],
                            "contacts": message["contacts"],
                        }
                    ),
                )
            )
        return out
    if row.kind == MESSAGES_SNAPSHOT:
        head = _head(
            {
                "type": "email.snapshot",
                **base,
                "version": row.position,
                "snapshot_id": payload["snapshot_id"],
            }
        )
        return list(
            _message_events(
                payload["snapshot"], "email.snapshot", head, stem + "email.snapshot", id_prefix, 0
            )
        )
    # One event per row: lifecycle (mailbox.*) and the like, payload fields at the top.
    detail = {k: v for k, v in payload.items() if k != "user_id"}
    event_id = f"{id_prefix}0"
    return [
        Outgoing(
            row.kind,
            stem + row.kind,
            event_id,
            orjson.dumps({"type": row.kind, "event_id": event_id, **base, **detail}),
        )
    ]
