"""Graph delta items → the batch the store writes and the ids that left the folder."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import orjson
import pytest

from app.providers.outlook.mapper import MalformedPage, decode_messages, read_delta_items


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
    # Numbers among the categories and a string among the recipients are not Graph's schema:
    # that item is read by the tolerant reader, which skips what it cannot use.
    page = decode_messages(orjson.dumps({"value": items, "@odata.nextLink": "https://next"}))
    assert page.mixed and page.tolerant_items == 1
    assert page.next_link == "https://next" and page.delta_link is None
    batch, deletes = page.read(("INBOX",))
    assert deletes == ["gone"]
    first, second = list(batch)
    assert first.provider_message_id == "m1" and first.thread_id == "c1"
    assert first.internet_message_id == "<m1@x>" and first.subject == "Hello"
    assert first.from_ == "ada@example.com"
    assert first.to == ["b@x"] and first.cc == [] and first.bcc == []
    assert first.snippet == "preview"
    assert first.received_at == datetime(2024, 5, 1, 10, 11, 12, 123457, tzinfo=UTC)
    assert first.labels == ["INBOX", "UNREAD", "Red category", "Blue category"]
    assert first.is_read is False and first.has_attachments is True
    assert second.from_ == "me@x" and second.received_at is None
    assert second.labels == ["INBOX", "DRAFT"] and second.is_read is True


def test_draft_label_is_not_repeated_in_the_drafts_folder() -> None:
    batch, _ = read_delta_items([_item("d", isDraft=True, isRead=True)], ("DRAFT",))
    assert batch.labels == [["DRAFT"]]


def _well_formed_page() -> list[dict[str, Any]]:
    return [
        _item(
            "m1",
            conversationId="c1",
            internetMessageId="<m1@x>",
            subject="Hello",
            bodyPreview="preview",
            receivedDateTime="2024-05-01T10:11:12.1234567Z",
            isRead=False,
            isDraft=False,
            hasAttachments=True,
            categories=["Red category", "Red category", "Blue category"],
            **{
                "from": _address(" Ada@Example.COM "),
                "sender": _address("assistant@example.com"),
                "toRecipients": [_address("B@x"), {"emailAddress": {}}, _address(None)],
                "ccRecipients": [],
                "bccRecipients": [_address("  ")],
            },
        ),
        {"id": "gone", "@removed": {"reason": "deleted"}},
        _item("m2", isDraft=True, isRead=True, sender=_address("me@x"), receivedDateTime=None),
        _item("m3", subject=None, receivedDateTime="2024-05-01T10:11:12"),
    ]


def test_typed_and_tolerant_readers_agree_on_a_well_formed_page() -> None:
    items = _well_formed_page()
    page = decode_messages(orjson.dumps({"value": items, "@odata.deltaLink": "https://delta"}))
    assert not page.mixed and page.delta_link == "https://delta" and page.next_link is None
    typed, typed_deletes = page.read(("INBOX",))
    tolerant, tolerant_deletes = read_delta_items(items, ("INBOX",))
    assert typed_deletes == tolerant_deletes == ["gone"]
    assert list(typed) == list(tolerant)
    first, second, third = list(typed)
    assert first.from_ == "ada@example.com" and first.to == ["b@x"] and first.bcc == []
    assert first.labels == ["INBOX", "UNREAD", "Red category", "Blue category"]
    assert second.from_ == "me@x" and second.labels == ["INBOX", "DRAFT"]
    # Graph writes UTC; a timestamp without an offset is read as UTC, not local time.
    assert third.received_at == datetime(2024, 5, 1, 10, 11, 12, tzinfo=UTC)


def test_a_listing_is_grouped_by_parent_folder() -> None:
    items = [
        _item("a", parentFolderId="inbox-id", isRead=True),
        _item("b", parentFolderId="sent-id", isRead=True),
        _item("c", parentFolderId="inbox-id", isRead=True),
    ]
    groups = decode_messages(orjson.dumps({"value": items})).by_folder()
    assert sorted(groups) == ["inbox-id", "sent-id"]
    inbox, _ = groups["inbox-id"].read(("INBOX",))
    assert inbox.provider_message_id == ["a", "c"] and inbox.labels == [["INBOX"], ["INBOX"]]


@pytest.mark.parametrize("body", [b"<html>busy</html>", b"[1, 2]", b""])
def test_a_body_that_is_not_a_json_object_is_malformed(body: bytes) -> None:
    with pytest.raises(MalformedPage):
        decode_messages(body)


def test_incomplete_items_stay_on_the_typed_path() -> None:
    """Drafts and API-created items: from/sender absent or null, recipients without names,
    an empty subject, no receivedDateTime. All of it is Graph's schema."""
    items = [
        _item("d1", isDraft=True, isRead=True, subject="", **{"from": None, "sender": None}),
        _item("d2", toRecipients=[{"emailAddress": {"address": "Bob@X"}}], flag=None),
        _item("d3", sentDateTime=None, importance="high", flag={"flagStatus": "flagged"}),
    ]
    page = decode_messages(orjson.dumps({"value": items, "@odata.deltaLink": "https://d"}))
    assert not page.mixed
    batch, _ = page.read(("DRAFT",))
    first, second, third = list(batch)
    assert first.from_ is None and first.from_name is None and first.subject == ""
    assert first.received_at is None and first.labels == ["DRAFT"]
    assert second.to == ["bob@x"] and second.to_names == [""]
    assert third.importance == "high" and third.flagged is True and first.flagged is False


def test_one_malformed_value_is_read_alone_and_changes_nothing_else() -> None:
    good = [
        _item(f"m{i}", subject=f"s{i}", isRead=i % 2 == 0, receivedDateTime="2024-05-01T10:00:00Z",
              **{"from": _address(f"p{i}@x")})
        for i in range(6)
    ]  # fmt: skip
    odd = _item("odd", subject="odd one", isRead="true", **{"from": _address("o@x")})
    clean = decode_messages(orjson.dumps({"value": good, "@odata.deltaLink": "https://d"}))
    mixed = decode_messages(
        orjson.dumps({"value": [*good[:3], odd, *good[3:]], "@odata.deltaLink": "https://d"})
    )
    assert not clean.mixed and mixed.mixed and mixed.tolerant_items == 1
    clean_batch, _ = clean.read(("INBOX",))
    mixed_batch, _ = mixed.read(("INBOX",))
    by_id = {m.provider_message_id: m for m in mixed_batch}
    assert [m.provider_message_id for m in mixed_batch] == [
        "m0",
        "m1",
        "m2",
        "odd",
        "m3",
        "m4",
        "m5",
    ]
    for message in clean_batch:
        assert by_id[message.provider_message_id] == message
    # The odd item keeps what it can: its subject and sender, read as unread (not True).
    assert by_id["odd"].subject == "odd one" and by_id["odd"].from_ == "o@x"
    assert by_id["odd"].is_read is False
