"""Graph mail JSON → normalized messages and folder labels."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from app.providers.base import NormalizedMessage

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


def _address(recipient: Any) -> str | None:
    # The hot path of a backfill (several per message): EAFP over isinstance checks.
    try:
        address = recipient["emailAddress"]["address"]
    except (KeyError, TypeError):
        return None
    if not isinstance(address, str):
        return None
    address = address.strip()
    return address.lower() if address else None


def _addresses(recipients: Any) -> list[str]:
    if not isinstance(recipients, list):
        return []
    addresses: list[str] = []
    for recipient in recipients:  # inlined _address: three lists per message, every page
        try:
            address = recipient["emailAddress"]["address"]
        except (KeyError, TypeError):
            continue
        if isinstance(address, str) and (address := address.strip()):
            addresses.append(address.lower())
    return addresses


def parse_datetime(value: Any) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def to_normalized(item: dict[str, Any], stream_labels: tuple[str, ...]) -> NormalizedMessage:
    is_read = bool(item.get("isRead", False))
    categories = [c for c in item.get("categories") or [] if isinstance(c, str)]
    labels = list(stream_labels)
    if item.get("isDraft") and "DRAFT" not in labels:
        labels.append("DRAFT")
    if not is_read:
        labels.append("UNREAD")
    labels.extend(categories)
    return NormalizedMessage(
        provider_message_id=str(item["id"]),
        thread_id=item.get("conversationId"),
        internet_message_id=item.get("internetMessageId"),
        subject=item.get("subject"),
        from_=_address(item.get("from")) or _address(item.get("sender")),
        to=_addresses(item.get("toRecipients")),
        cc=_addresses(item.get("ccRecipients")),
        bcc=_addresses(item.get("bccRecipients")),
        snippet=item.get("bodyPreview"),
        received_at=parse_datetime(item.get("receivedDateTime")),
        labels=list(dict.fromkeys(labels)),
        is_read=is_read,
        has_attachments=bool(item.get("hasAttachments", False)),
    )
