"""Case outbox rows become events the contract describes: one per linked message."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import orjson

from app.db.repositories.outbox import OutboxRow
from app.events import contract
from app.events.expand import expand


def _row(kind: str, payload: dict[str, object], position: int = 7) -> OutboxRow:
    return OutboxRow(
        id=1,
        mailbox_id=uuid.UUID("3f0c2a1e-0000-4000-8000-000000000001"),
        position=position,
        kind=kind,
        payload=orjson.dumps(payload),
        created_at=datetime(2026, 12, 1, 12, 0, tzinfo=UTC),
        user_id="a.b",
        provider="microsoft",
        blocked=False,
    )


def test_a_linking_row_is_one_event_per_message() -> None:
    row = _row(
        "case.message_linked",
        {
            "user_id": "a.b",
            "case_id": "matter-1",
            "messages": [
                {"provider_message_id": "AAMk1", "contacts": ["x@firm.example"]},
                {"provider_message_id": "AAMk2", "contacts": ["x@firm.example", "y@co.example"]},
            ],
        },
    )
    events = expand(row, "mailsync")
    assert [e.subject for e in events] == ["mailsync.user.a_2Eb.case.message_linked"] * 2
    parsed = [contract.parse(e.data) for e in events]
    assert [p.provider_message_id for p in parsed] == ["AAMk1", "AAMk2"]
    assert parsed[1].contacts == ["x@firm.example", "y@co.example"]
    assert {p.case_id for p in parsed} == {"matter-1"}
    assert {p.user_id for p in parsed} == {"a.b"}
    assert [e.event_id for e in events] == [f"{row.mailbox_id}:7:0", f"{row.mailbox_id}:7:1"]


def test_a_completion_row_is_one_event() -> None:
    other = uuid.uuid4()
    row = _row(
        "case.sync_complete",
        {
            "user_id": "a.b",
            "case_id": "matter-1",
            "mailbox_ids": [str(other)],
            "contacts": ["x@firm.example"],
        },
    )
    [event] = expand(row, "mailsync")
    parsed = contract.parse(event.data)
    assert parsed.type == "case.sync_complete"
    assert parsed.mailbox_ids == [other]
    assert str(parsed.mailbox_id) == str(row.mailbox_id)
