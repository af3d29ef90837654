"""Graph delta items → the batch the store writes and the ids that left the folder."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from app.providers.outlook.mapper import read_delta_items


def _item(message_id: str, **fields: Any) -> dict[str, Any]:
    return {"@odata.etag": 'W/"x"', "id": message_id, **fields}


def _address(address: Any) -> dict[str, Any]:
    return {"emailAddress": {"name": "Someone", "address": address}}


def test_maps_fields_labels_and_removals() -> None:
    items = [
        _item(
            "m1",
            conversationId="c1",
            internetMessageId="<m1@x>",
            subject="Hello",
            bodyPreview="preview",
            receivedDateTime="2024-05-01T10:11:12.1234567Z",
            isRead=False,
            hasAttachments=True,
            categories=["Red category", "Red category", 7, "Blue category"],
            **{
                "from": _address(" Ada@Example.COM "),
                "toRecipients": [_address("b@x"), {"emailAddress": {}}, _address(None), "junk"],
                "ccRecipients": None,
            },
        ),
        {"id": "gone", "@removed": {"reason": "deleted"}},
        # A draft with no `from`: the sender stands in; the Drafts folder is not labelled twice.
        _item("m2", isDraft=True, isRead=True, sender=_address("me@x"), receivedDateTime=None),
    ]
    batch, deletes = read_delta_items(items, ("INBOX",))
    assert deletes == ["gone"]
    first, second = list(batch)
    assert first.provider_message_id == "m1" and first.thread_id == "c1"
    assert first.internet_message_id == "<m1@x>" and first.subject == "Hello"
    assert first.from_ == "ada@example.com"
    assert first.to == ["b@x"] and first.cc == [] and first.bcc == []
    assert first.snippet == "preview"
    assert first.received_at == datetime(2024, 5, 1, 10, 11, 12, 123456, tzinfo=UTC)
    assert first.labels == ["INBOX", "UNREAD", "Red category", "Blue category"]
    assert first.is_read is False and first.has_attachments is True
    assert second.from_ == "me@x" and second.received_at is None
    assert second.labels == ["INBOX", "DRAFT"] and second.is_read is True


def test_draft_label_is_not_repeated_in_the_drafts_folder() -> None:
    batch, _ = read_delta_items([_item("d", isDraft=True, isRead=True)], ("DRAFT",))
    assert batch.labels == [["DRAFT"]]
