"""Graph mail JSON → normalized messages and folder labels.

A delta page is decoded straight into typed structs (msgspec): no dict per message and
nothing for the garbage collector to track, about twice as fast as parsing to dicts and
reading them back. Graph's schema says what each property holds; should a page ever
disagree, it is read again by the tolerant dict reader below, which skips what it cannot
use, so one odd value never stalls a folder.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import msgspec
import orjson

from app.providers.base import MessageBatch, NormalizedMessage

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
    """Graph's UTC timestamps ("Z", up to seven fractional digits) → aware datetimes.

    Rounded to the microsecond, as the typed decoder and PostgreSQL do, so a message reads
    the same whichever way it came in.
    """
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = msgspec.convert(value, datetime)
    except msgspec.ValidationError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _labels(
    base: list[str], draft_label: bool, is_draft: bool, is_read: bool, categories: Any
) -> list[str]:
    labels = base.copy()
    if draft_label and is_draft:
        labels.append("DRAFT")
    if not is_read:
        labels.append("UNREAD")
    if categories:
        for category in categories:
            if category.__class__ is str and category not in labels:
                labels.append(category)
    return labels


def read_delta_items(
    items: list[Any], stream_labels: tuple[str, ...]
) -> tuple[MessageBatch, list[str]]:
    """Tolerant reader: a page's `value` as dicts → messages to write, ids that left.

    The fallback for a page outside Graph's schema, so it builds a message at a time.
    """
    batch = MessageBatch()
    deletes: list[str] = []
    base_labels = list(stream_labels)
    draft_label = "DRAFT" not in base_labels
    for item in items:
        if item.__class__ is not dict or "id" not in item:
            continue
        if "@removed" in item:
            deletes.append(str(item["id"]))
            continue
        get = item.get
        is_read = get("isRead") is True
        batch.append(
            NormalizedMessage(
                provider_message_id=str(item["id"]),
                thread_id=_text(get("conversationId")),
                internet_message_id=_text(get("internetMessageId")),
                subject=_text(get("subject")),
                from_=_sender(item),
                to=_addresses(get("toRecipients")),
                cc=_addresses(get("ccRecipients")),
                bcc=_addresses(get("bccRecipients")),
                snippet=_text(get("bodyPreview")),
                received_at=parse_datetime(get("receivedDateTime")),
                labels=_labels(
                    base_labels, draft_label, get("isDraft") is True, is_read, get("categories")
                ),
                is_read=is_read,
                has_attachments=get("hasAttachments") is True,
            )
        )
    return batch, deletes


def _text(value: Any) -> str | None:
    return value if value.__class__ is str else None


# -- typed decoding -----------------------------------------------------------------------


class _EmailAddress(msgspec.Struct, gc=False):
    address: str | None = None


class _Recipient(msgspec.Struct, gc=False):
    emailAddress: _EmailAddress | None = None


class _Message(msgspec.Struct, gc=False):
    # Field names are Graph's own, so msgspec matches them with no renaming table.
    id: str
    removed: dict[str, Any] | None = msgspec.field(default=None, name="@removed")
    conversationId: str | None = None
    internetMessageId: str | None = None
    subject: str | None = None
    from_: _Recipient | None = msgspec.field(default=None, name="from")
    sender: _Recipient | None = None
    toRecipients: list[_Recipient] | None = None
    ccRecipients: list[_Recipient] | None = None
    bccRecipients: list[_Recipient] | None = None
    bodyPreview: str | None = None
    receivedDateTime: datetime | None = None
    isRead: bool | None = None
    hasAttachments: bool | None = None
    categories: list[str] | None = None
    isDraft: bool | None = None
    parentFolderId: str | None = None


class _Collection(msgspec.Struct, gc=False):
    value: list[_Message] = []
    next_link: str | None = msgspec.field(default=None, name="@odata.nextLink")
    delta_link: str | None = msgspec.field(default=None, name="@odata.deltaLink")


_decode_collection = msgspec.json.Decoder(_Collection).decode


class MalformedPage(ValueError):
    """The body is not a JSON object at all: nothing can be read from it."""


@dataclass(slots=True)
class MessagePage:
    """A decoded message collection: its messages, removals and links.

    `messages` holds typed structs, or dicts when the page was read tolerantly.
    """

    messages: list[Any]
    next_link: Any = None
    delta_link: Any = None
    tolerant: bool = False

    def read(self, stream_labels: tuple[str, ...]) -> tuple[MessageBatch, list[str]]:
        if self.tolerant:
            return read_delta_items(self.messages, stream_labels)
        return _read_typed(self.messages, stream_labels)

    def by_folder(self) -> dict[str | None, MessagePage]:
        """The messages grouped by `parentFolderId` (a mailbox-wide listing)."""
        groups: dict[str | None, list[Any]] = {}
        for message in self.messages:
            if self.tolerant:
                folder = message.get("parentFolderId") if isinstance(message, dict) else None
            else:
                folder = message.parentFolderId
            groups.setdefault(folder if isinstance(folder, str) else None, []).append(message)
        return {
            folder: MessagePage(items, tolerant=self.tolerant) for folder, items in groups.items()
        }


def decode_messages(content: bytes) -> MessagePage:
    """A Graph message collection (delta page or listing) → messages and links."""
    try:
        page = _decode_collection(content)
        return MessagePage(page.value, page.next_link, page.delta_link)
    except msgspec.ValidationError:
        pass  # valid JSON that Graph's schema does not describe: read it tolerantly
    except msgspec.DecodeError as exc:
        raise MalformedPage("not JSON") from exc
    try:
        body = orjson.loads(content)
    except orjson.JSONDecodeError as exc:
        raise MalformedPage("not JSON") from exc
    if not isinstance(body, dict):
        raise MalformedPage("not a JSON object")
    value = body.get("value")
    return MessagePage(
        value if isinstance(value, list) else [],
        body.get("@odata.nextLink"),
        body.get("@odata.deltaLink"),
        tolerant=True,
    )


def _first_address(*recipients: _Recipient | None) -> str | None:
    for recipient in recipients:
        if recipient is not None and (email := recipient.emailAddress) is not None:
            address = email.address
            if address and (address := address.strip()):
                return address.lower()
    return None


def _typed_addresses(recipients: list[_Recipient] | None) -> list[str]:
    addresses: list[str] = []
    if recipients:
        for recipient in recipients:
            if (email := recipient.emailAddress) is not None:
                address = email.address
                if address and (address := address.strip()):
                    addresses.append(address.lower())
    return addresses


def _read_typed(
    messages: list[_Message], stream_labels: tuple[str, ...]
) -> tuple[MessageBatch, list[str]]:
    # The hot loop of a backfill, a thousand messages a page: one comprehension a column.
    kept = [message for message in messages if message.removed is None]
    deletes = [message.id for message in messages if message.removed is not None]
    base_labels = list(stream_labels)
    draft_label = "DRAFT" not in base_labels
    batch = MessageBatch(
        provider_message_id=[m.id for m in kept],
        thread_id=[m.conversationId for m in kept],
        internet_message_id=[m.internetMessageId for m in kept],
        subject=[m.subject for m in kept],
        from_=[_first_address(m.from_, m.sender) for m in kept],
        to=[_typed_addresses(m.toRecipients) for m in kept],
        cc=[_typed_addresses(m.ccRecipients) for m in kept],
        bcc=[_typed_addresses(m.bccRecipients) for m in kept],
        snippet=[m.bodyPreview for m in kept],
        received_at=[_utc(m.receivedDateTime) for m in kept],
        labels=[
            _labels(base_labels, draft_label, m.isDraft is True, m.isRead is True, m.categories)
            for m in kept
        ],
        is_read=[m.isRead is True for m in kept],
        has_attachments=[m.hasAttachments is True for m in kept],
    )
    return batch, deletes


def _utc(value: datetime | None) -> datetime | None:
    return value if value is None or value.tzinfo else value.replace(tzinfo=UTC)
