"""Graph mail JSON → normalized messages and folder labels."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from app.providers.base import MessageBatch

# Only what the store keeps; Graph always adds id and @odata.etag.
MESSAGE_SELECT = ",".join(
    (
        "conversationId", "internetMessageId", "subject", "from", "sender", "toRecipients",
        "ccRecipients", "bccRecipients", "bodyPreview", "receivedDateTime", "isRead",
        "hasAttachments", "categories", "isDraft",
    )
)  # fmt: skip
FOLDER_SELECT = "id,displayName,parentFolderId,childFolderCount,totalItemCount"

# Graph v1.0 has no wellKnownName property: these names are resolved to ids with
# GET /mailFolders/{name}, then matched by id.
WELL_KNOWN_LABELS = {
    "inbox": "INBOX",
    "sentitems": "SENT",
    "drafts": "DRAFT",
    "deleteditems": "TRASH",
    "junkemail": "SPAM",
    "archive": "ARCHIVE",
}


def folder_labels(display_name: str, well_known_label: str | None) -> tuple[str, ...]:
    return (well_known_label,) if well_known_label else (display_name,)


def _addresses(recipients: Any) -> list[str]:
    if recipients.__class__ is not list:
        return []
    addresses: list[str] = []
    for recipient in recipients:
        try:
            address = recipient["emailAddress"]["address"]
        except (KeyError, TypeError):
            continue
        if address.__class__ is str and (address := address.strip()):
            addresses.append(address.lower())
    return addresses


def _sender(item: dict[str, Any]) -> str | None:
    # `from` is who the message says it is from; drafts may only have `sender`.
    for key in ("from", "sender"):
        try:
            address = item[key]["emailAddress"]["address"]
        except (KeyError, TypeError):
            continue
        if address.__class__ is str and (address := address.strip()):
            return str(address.lower())
    return None


def parse_datetime(value: Any) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    # Graph writes UTC with "Z" and up to seven fractional digits; fromisoformat (3.11+)
    # takes both and keeps microseconds.
    parsed = datetime.fromisoformat(value)
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def read_delta_items(
    items: list[Any], stream_labels: tuple[str, ...]
) -> tuple[MessageBatch, list[str]]:
    """A delta page's `value` → the messages to write and the ids that left the folder.

    The hot loop of a backfill, a thousand messages a page: it fills the batch's columns
    directly, with the column appends bound once.
    """
    batch = MessageBatch()
    deletes: list[str] = []
    add_id, add_thread = batch.provider_message_id.append, batch.thread_id.append
    add_imid, add_subject = batch.internet_message_id.append, batch.subject.append
    add_from, add_to, add_cc = batch.from_.append, batch.to.append, batch.cc.append
    add_bcc, add_snippet = batch.bcc.append, batch.snippet.append
    add_received, add_labels = batch.received_at.append, batch.labels.append
    add_read, add_attachments = batch.is_read.append, batch.has_attachments.append
    base_labels = list(stream_labels)
    draft_label = "DRAFT" not in base_labels
    for item in items:
        if "@removed" in item:
            deletes.append(str(item["id"]))
            continue
        get = item.get
        add_id(str(item["id"]))
        add_thread(get("conversationId"))
        add_imid(get("internetMessageId"))
        add_subject(get("subject"))
        add_from(_sender(item))
        add_to(_addresses(get("toRecipients")))
        add_cc(_addresses(get("ccRecipients")))
        add_bcc(_addresses(get("bccRecipients")))
        add_snippet(get("bodyPreview"))
        add_received(parse_datetime(get("receivedDateTime")))
        is_read = get("isRead") is True
        add_read(is_read)
        add_attachments(get("hasAttachments") is True)
        labels = base_labels.copy()
        if draft_label and get("isDraft") is True:
            labels.append("DRAFT")
        if not is_read:
            labels.append("UNREAD")
        categories = get("categories")
        if categories:
            for category in categories:
                if category.__class__ is str and category not in labels:
                    labels.append(category)
        add_labels(labels)
    return batch, deletes
