"""Pure pieces of the Gmail provider: classification, history folding, batch codec,
cursor and mapping."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime
from typing import Any

import pytest

from app.providers.base import (
    AccessTokenRejected,
    AuthExpiredError,
    CursorInvalidError,
    PermanentError,
    ThrottledError,
    TransientError,
)
from app.providers.gmail.batch import decode_batch, encode_batch
from app.providers.gmail.cursor import GmailCursor
from app.providers.gmail.errors import (
    MessageNotFound,
    classify,
    classify_token_error,
    retry_after_seconds,
)
from app.providers.gmail.history import fold_history
from app.providers.gmail.mapper import to_normalized


def _error(code: int, reason: str, message: str = "boom") -> bytes:
    return json.dumps(
        {"error": {"code": code, "message": message, "errors": [{"reason": reason}]}}
    ).encode()


NOW = datetime(2026, 5, 1, 12, 0, 0, tzinfo=UTC)


def test_retry_after_prefers_the_instant_in_the_message() -> None:
    message = "User-rate limit exceeded.  Retry after 2026-05-01T12:00:02.500Z"
    assert retry_after_seconds({"retry-after": "3"}, message, now=NOW) == 2.5
    assert retry_after_seconds({"retry-after": "3"}, "Rate Limit Exceeded", now=NOW) == 3.0
    http_date = "Fri, 01 May 2026 12:00:07 GMT"
    assert retry_after_seconds({"retry-after": http_date}, "", now=NOW) == 7.0
    assert retry_after_seconds({}, "", now=NOW) is None
    past = "Retry after 2026-05-01T11:00:00Z"
    assert retry_after_seconds({}, past, now=NOW) == 0.0


@pytest.mark.parametrize(
    ("status", "reason", "operation", "expected"),
    [
        (401, "authError", "users.messages.list", AccessTokenRejected),
        (429, "userRateLimitExceeded", "users.messages.get", ThrottledError),
        (403, "userRateLimitExceeded", "users.messages.get", ThrottledError),
        (403, "rateLimitExceeded", "batch", ThrottledError),
        (403, "insufficientPermissions", "users.messages.get", PermanentError),
        (404, "notFound", "users.history.list", CursorInvalidError),
        (404, "notFound", "users.messages.get", MessageNotFound),
        (503, "backendError", "users.messages.list", ThrottledError),
        (500, "backendError", "users.messages.list", TransientError),
        (400, "invalidArgument", "users.messages.list", PermanentError),
    ],
)
def test_classify(status: int, reason: str, operation: str, expected: type) -> None:
    error = classify(status, {}, _error(status, reason), operation=operation)
    assert type(error) is expected


def test_classify_carries_retry_after_and_survives_non_json() -> None:
    error = classify(429, {"retry-after": "4"}, b"<html>busy</html>", operation="batch")
    assert isinstance(error, ThrottledError) and error.retry_after == 4.0


def _record(
    history_id: int,
    *,
    added: str | None = None,
    deleted: str | None = None,
    labels_added: tuple[str, list[str]] | None = None,
    labels_removed: tuple[str, list[str]] | None = None,
) -> dict[str, object]:
    record: dict[str, object] = {"id": str(history_id)}
    if added:
        record["messagesAdded"] = [{"message": {"id": added, "threadId": added}}]
    if deleted:
        record["messagesDeleted"] = [{"message": {"id": deleted}}]
    if labels_added:
        message_id, labels = labels_added
        record["labelsAdded"] = [{"message": {"id": message_id}, "labelIds": labels}]
    if labels_removed:
        message_id, labels = labels_removed
        record["labelsRemoved"] = [{"message": {"id": message_id}, "labelIds": labels}]
    return record


def test_fold_history_keeps_the_net_effect_per_message() -> None:
    fold = fold_history(
        [
            _record(1, added="a"),
            _record(2, labels_added=("a", ["STARRED"])),  # covered by fetching a
            _record(3, added="b"),
            _record(4, deleted="b"),  # added and deleted: only the delete remains
            _record(5, labels_added=("c", ["UNREAD", "Label_1"])),
            _record(6, labels_removed=("c", ["UNREAD"])),
            _record(7, labels_removed=("d", ["INBOX"]), labels_added=("d", ["TRASH"])),
            _record(8, labels_added=("e", ["STARRED"])),
            _record(9, labels_removed=("e", ["STARRED"])),
            _record(10, labels_added=("f", ["X"])),
            _record(11, deleted="f"),
            _record(12, deleted="g"),
            _record(13, added="g"),  # ids never come back: still deleted
        ]
    )
    assert fold.fetch == ["a"]
    assert sorted(fold.deletes) == ["b", "f", "g"]
    assert fold.label_changes == {
        "c": (("Label_1",), ("UNREAD",)),
        "d": (("TRASH",), ("INBOX",)),
        "e": ((), ("STARRED",)),
    }


def test_batch_codec_matches_parts_by_content_id() -> None:
    content_type, body = encode_batch(["/gmail/v1/users/me/messages/a?format=metadata", "/x"])
    boundary = content_type.split("boundary=")[1]
    text = body.decode()
    assert text.count(f"--{boundary}\r\nContent-Type: application/http\r\n") == 2
    assert (
        "Content-ID: <0>" in text and "GET /x\r\n" in text and text.endswith(f"--{boundary}--\r\n")
    )
    # Google's answer: its own boundary, parts in any order, bodies with Content-Length.
    answer = (
        b"--batch_abc\r\nContent-Type: application/http\r\nContent-ID: <response-1>\r\n\r\n"
        b"HTTP/1.1 404 Not Found\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n"
        b"{}\r\n"
        b"--batch_abc\r\nContent-Type: application/http\r\nContent-ID: <response-0>\r\n\r\n"
        b'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\r\n{"id": "a"}\r\n'
        b"--batch_abc--\r\n"
    )
    parts = decode_batch("multipart/mixed; boundary=batch_abc", answer)
    assert parts[0].status == 200 and json.loads(parts[0].body) == {"id": "a"}
    assert parts[1].status == 404 and parts[1].body == b"{}"
    with pytest.raises(PermanentError):
        decode_batch("multipart/mixed", answer)


def test_cursor_round_trip_and_rejects() -> None:
    cursor = GmailCursor("full", 18_446_744_073_709_551_615, "tok")
    dumped = cursor.dump()
    assert dumped == {"phase": "full", "history_id": "18446744073709551615", "page_token": "tok"}
    assert GmailCursor.load(json.loads(json.dumps(dumped))) == cursor
    assert GmailCursor.load({"phase": "history", "history_id": 42}) == GmailCursor("history", 42)
    for broken in (
        {"phase": "delta", "history_id": "1"},
        {"phase": "history"},
        {"phase": "history", "history_id": True},
        {"phase": "history", "history_id": "-1"},
        {"phase": "full", "history_id": "1", "page_token": 5},
    ):
        with pytest.raises(CursorInvalidError):
            GmailCursor.load(broken)


def test_mapping_a_metadata_message() -> None:
    message = {
        "id": "19b6196ee401d91c",
        "threadId": "19b6196ee401d91a",
        "labelIds": ["INBOX", "Label_7", "CATEGORY_UPDATES"],
        "snippet": "Don&#39;t forget &amp; bring",
        "internalDate": "1766977672000",
        "payload": {
            "mimeType": "multipart/alternative",
            "headers": [
                {"name": "From", "value": '"Lovelace, Ada" <Ada@Example.ORG>'},
                {"name": "To", "value": "me@x.com, Bob <BOB@y.com>"},
                {"name": "Cc", "value": "c@z.com"},
                {"name": "Subject", "value": "Re: numbers"},
                {"name": "Message-Id", "value": " <abc@example.org> "},
            ],
        },
    }
    normalized = to_normalized(message, {"Label_7": "Receipts"})
    assert normalized.provider_message_id == "19b6196ee401d91c"
    assert normalized.thread_id == "19b6196ee401d91a"
    assert normalized.labels == ["INBOX", "Receipts", "CATEGORY_UPDATES"]
    assert normalized.is_read is True
    assert normalized.from_ == "ada@example.org"
    assert normalized.to == ["me@x.com", "bob@y.com"] and normalized.cc == ["c@z.com"]
    assert normalized.bcc == []
    assert normalized.subject == "Re: numbers"
    assert normalized.internet_message_id == "<abc@example.org>"
    assert normalized.snippet == "Don't forget & bring"
    assert normalized.received_at == datetime(2025, 12, 29, 3, 7, 52, tzinfo=UTC)
    assert normalized.has_attachments is False


def _part(part_id: str, mime: str, **extra: Any) -> dict[str, Any]:
    headers = [
        {"name": k.replace("_", "-"), "value": v} for k, v in extra.pop("headers", {}).items()
    ]
    return {"partId": part_id, "mimeType": mime, "filename": "", "headers": headers,
            "body": {"size": 0}, **extra}  # fmt: skip


def _html(part_id: str, html: str) -> dict[str, Any]:
    data = base64.urlsafe_b64encode(html.encode()).decode().rstrip("=")
    return _part(part_id, "text/html", body={"size": len(html), "data": data})


def test_attachments_come_from_the_mime_tree_not_the_top_level_type() -> None:
    alternative = lambda prefix, html: _part(  # noqa: E731
        prefix, "multipart/alternative",
        parts=[_part(f"{prefix}.0", "text/plain", body={"size": 1, "data": "aGk"}),
               _html(f"{prefix}.1", html)],
    )  # fmt: skip
    # multipart/mixed holding nothing but the text: no attachment.
    mixed_only = {
        "id": "a",
        "labelIds": ["UNREAD"],
        "payload": _part("", "multipart/mixed", parts=[alternative("0", "<p>hi</p>")]),
    }
    assert to_normalized(mixed_only, {}).has_attachments is False
    assert to_normalized(mixed_only, {}).is_read is False
    # related: an image the HTML shows through cid: is part of the body.
    image = _part("1", "image/png", filename="logo.png", body={"attachmentId": "x", "size": 9},
                  headers={"Content_ID": "<logo@x>", "Content_Disposition": "inline"})  # fmt: skip
    related = {"id": "b", "payload": _part("", "multipart/related", parts=[alternative("0", '<img src="cid:logo@x">'), image])}  # fmt: skip
    assert to_normalized(related, {}).has_attachments is False
    # The same image, not referenced by the HTML: the user would call it an attachment.
    unreferenced = {"id": "c", "payload": _part("", "multipart/related", parts=[alternative("0", "<p>no image</p>"), image])}  # fmt: skip
    assert to_normalized(unreferenced, {}).has_attachments is True
    # alternative inside mixed, with a PDF.
    pdf = _part("1", "application/pdf", filename="q3.pdf", body={"attachmentId": "y", "size": 99})
    with_pdf = {"id": "d", "payload": _part("", "multipart/mixed", parts=[alternative("0", "<p>see</p>"), pdf])}  # fmt: skip
    assert to_normalized(with_pdf, {}).has_attachments is True
    # A forwarded message is one attachment, whatever it holds.
    forwarded = _part("1", "message/rfc822", body={"attachmentId": "z", "size": 500},
                      parts=[_part("1.0", "text/plain", headers={"Subject": "Old news"})])  # fmt: skip
    with_rfc822 = {"id": "e", "payload": _part("", "multipart/mixed", parts=[alternative("0", "<p>fwd</p>"), forwarded])}  # fmt: skip
    assert to_normalized(with_rfc822, {}).has_attachments is True
    assert to_normalized({"id": "f"}, {}).received_at is None


@pytest.mark.parametrize(
    ("status", "body", "expected"),
    [
        (400, b'{"error": "invalid_grant", "error_description": "Bad Request"}', AuthExpiredError),
        (401, b'{"error": "invalid_client", "error_description": "Unauthorized"}', PermanentError),
        (429, b"{}", ThrottledError),
        (503, b"<html>down</html>", TransientError),
    ],
)
def test_classify_token_error(status: int, body: bytes, expected: type) -> None:
    error = classify_token_error(status, body)
    assert type(error) is expected
