"""Graph mail JSON → normalized messages and folder labels.

A delta page is decoded straight into typed structs (msgspec): no dict per message and
nothing for the garbage collector to track, about twice as fast as parsing to dicts and
reading them back. Graph's schema says what each property holds; should an item ever
disagree (a boolean sent as a string), that item alone is read by the tolerant dict reader
below, which skips what it cannot use: one odd value never stalls a folder, never slows
the rest of its page and never changes how the other items read.
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
        "hasAttachments", "categories", "isDraft", "sentDateTime", "importance", "flag",
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


def _people(recipients: Any) -> tuple[list[str], list[str]]:
    """(addresses, display names) of a recipient list; a recipient without an address is
    skipped, one without a name gets ""."""
    addresses: list[str] = []
    names: list[str] = []
    if recipients.__class__ is not list:
        return addresses, names
    for recipient in recipients:
        try:
            email = recipient["emailAddress"]
            address = email["address"]
        except (KeyError, TypeError):
            continue
        if address.__class__ is str and (address := address.strip()):
            addresses.append(address.lower())
            name = email.get("name")
            names.append(name.strip() if name.__class__ is str else "")
    return addresses, names


def _sender(item: dict[str, Any]) -> tuple[str | None, str | None]:
    # `from` is who the message says it is from; drafts may only have `sender`, and a
    # draft or an API-created item may have neither (absent or null).
    for key in ("from", "sender"):
        try:
            email = item[key]["emailAddress"]
            address = email["address"]
        except (KeyError, TypeError):
            continue
        if address.__class__ is str and (address := address.strip()):
            name = email.get("name")
            return address.lower(), (name.strip() or None) if name.__class__ is str else None
    return None, None


_IMPORTANCE = {"low": "low", "normal": "normal", "high": "high"}


def _importance(value: Any) -> str | None:
    return _IMPORTANCE.get(value.lower()) if value.__class__ is str else None


def _flagged(flag: Any) -> bool:
    # "complete" is a flag the user has cleared by finishing it.
    return flag.__class__ is dict and flag.get("flagStatus") == "flagged"


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
        from_address, from_name = _sender(item)
        to, to_names = _people(get("toRecipients"))
        cc, cc_names = _people(get("ccRecipients"))
        bcc, bcc_names = _people(get("bccRecipients"))
        batch.append(
            NormalizedMessage(
                provider_message_id=str(item["id"]),
                thread_id=_text(get("conversationId")),
                internet_message_id=_text(get("internetMessageId")),
                subject=_text(get("subject")),
                from_=from_address,
                to=to,
                cc=cc,
                bcc=bcc,
                snippet=_text(get("bodyPreview")),
                received_at=parse_datetime(get("receivedDateTime")),
                labels=_labels(
                    base_labels, draft_label, get("isDraft") is True, is_read, get("categories")
                ),
                is_read=is_read,
                has_attachments=get("hasAttachments") is True,
                from_name=from_name,
                to_names=to_names,
                cc_names=cc_names,
                bcc_names=bcc_names,
                sent_at=parse_datetime(get("sentDateTime")),
                importance=_importance(get("importance")),
                flagged=_flagged(get("flag")),
            )
        )
    return batch, deletes


def _text(value: Any) -> str | None:
    return value if value.__class__ is str else None


# -- typed decoding -----------------------------------------------------------------------


class _EmailAddress(msgspec.Struct, gc=False):
    name: str | None = None
    address: str | None = None


class _Flag(msgspec.Struct, gc=False):
    flagStatus: str | None = None


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
    sentDateTime: datetime | None = None
    importance: str | None = None
    flag: _Flag | None = None


class _Collection(msgspec.Struct, gc=False):
    value: list[_Message] = []
    next_link: str | None = msgspec.field(default=None, name="@odata.nextLink")
    delta_link: str | None = msgspec.field(default=None, name="@odata.deltaLink")


class _RawCollection(msgspec.Struct, gc=False):
    value: list[msgspec.Raw] = []
    next_link: str | None = msgspec.field(default=None, name="@odata.nextLink")
    delta_link: str | None = msgspec.field(default=None, name="@odata.deltaLink")


_decode_collection = msgspec.json.Decoder(_Collection).decode
_decode_raw_collection = msgspec.json.Decoder(_RawCollection).decode
_decode_message = msgspec.json.Decoder(_Message).decode


class MalformedPage(ValueError):
    """The body is not a JSON object at all: nothing can be read from it."""


@dataclass(slots=True)
class MessagePage:
    """A decoded message collection: its messages, removals and links.

    `messages` holds typed structs; when `mixed`, some are dicts: the items that Graph's
    schema did not describe, read one by one by the tolerant reader.
    """

    messages: list[Any]
    next_link: Any = None
    delta_link: Any = None
    mixed: bool = False

    @property
    def tolerant_items(self) -> int:
        return sum(1 for m in self.messages if m.__class__ is dict) if self.mixed else 0

    def read(self, stream_labels: tuple[str, ...]) -> tuple[MessageBatch, list[str]]:
        if not self.mixed:
            return _read_typed(self.messages, stream_labels)
        # Runs of each kind, in page order (a page may repeat a message: the last one wins).
        batch, deletes = MessageBatch(), []
        run: list[Any] = []
        for message in [*self.messages, None]:
            if run and (
                message is None or (message.__class__ is dict) != (run[0].__class__ is dict)
            ):
                reader = read_delta_items if run[0].__class__ is dict else _read_typed
                part, gone = reader(run, stream_labels)
                batch.extend(part)
                deletes += gone
                run = []
            if message is not None:
                run.append(message)
        return batch, deletes

    def by_folder(self) -> dict[str | None, MessagePage]:
        """The messages grouped by `parentFolderId` (a mailbox-wide listing)."""
        groups: dict[str | None, list[Any]] = {}
        for message in self.messages:
            if message.__class__ is dict:
                folder = message.get("parentFolderId")
            else:
                folder = message.parentFolderId
            groups.setdefault(folder if isinstance(folder, str) else None, []).append(message)
        return {folder: MessagePage(items, mixed=self.mixed) for folder, items in groups.items()}


def decode_messages(content: bytes) -> MessagePage:
    """A Graph message collection (delta page or listing) → messages and links.

    One typed decode of the whole page is the fast path. Should one item fall outside
    Graph's schema (a boolean sent as a string, say), only that item is read tolerantly:
    the rest of the page is still decoded into structs and reads exactly as it would have.
    """
    try:
        page = _decode_collection(content)
        return MessagePage(page.value, page.next_link, page.delta_link)
    except msgspec.ValidationError:
        pass
    except msgspec.DecodeError as exc:
        raise MalformedPage("not JSON") from exc
    try:
        raw = _decode_raw_collection(content)
    except msgspec.ValidationError:
        return _decode_tolerantly(content)
    messages: list[Any] = []
    for item in raw.value:
        try:
            messages.append(_decode_message(item))
        except msgspec.ValidationError:
            loaded = msgspec.json.decode(item)
            if isinstance(loaded, dict):
                messages.append(loaded)
    return MessagePage(messages, raw.next_link, raw.delta_link, mixed=True)


def _decode_tolerantly(content: bytes) -> MessagePage:
    """The page's envelope itself is odd (links that are not strings...): every item as a dict."""
    try:
        body = orjson.loads(content)
    except orjson.JSONDecodeError as exc:
        raise MalformedPage("not JSON") from exc
    if not isinstance(body, dict):
        raise MalformedPage("not a JSON object")
    value = body.get("value")
    items = [item for item in value if isinstance(item, dict)] if isinstance(value, list) else []
    return MessagePage(items, body.get("@odata.nextLink"), body.get("@odata.deltaLink"), mixed=True)


_NOBODY: tuple[str | None, str | None] = (None, None)


def _first_person(
    first: _Recipient | None, second: _Recipient | None
) -> tuple[str | None, str | None]:
    for recipient in (first, second):
        if recipient is not None and (email := recipient.emailAddress) is not None:
            address = email.address
            if address and (address := address.strip()):
                name = email.name
                return address.lower(), (name.strip() or None) if name else None
    return _NOBODY


def _typed_people(recipients: list[_Recipient] | None) -> tuple[list[str], list[str]]:
    addresses: list[str] = []
    names: list[str] = []
    if recipients:
        for recipient in recipients:
            if (email := recipient.emailAddress) is not None:
                address = email.address
                if address and (address := address.strip()):
                    addresses.append(address.lower())
                    name = email.name
                    names.append(name.strip() if name else "")
    return addresses, names


def _read_typed(
    messages: list[_Message], stream_labels: tuple[str, ...]
) -> tuple[MessageBatch, list[str]]:
    # The hot loop of a backfill, a thousand messages a page: one comprehension a column.
    kept = [message for message in messages if message.removed is None]
    deletes = [message.id for message in messages if message.removed is not None]
    base_labels = list(stream_labels)
    draft_label = "DRAFT" not in base_labels
    senders = [_first_person(m.from_, m.sender) for m in kept]
    to = [_typed_people(m.toRecipients) for m in kept]
    cc = [_typed_people(m.ccRecipients) for m in kept]
    bcc = [_typed_people(m.bccRecipients) for m in kept]
    importance = _IMPORTANCE.get
    batch = MessageBatch(
        provider_message_id=[m.id for m in kept],
        thread_id=[m.conversationId for m in kept],
        internet_message_id=[m.internetMessageId for m in kept],
        subject=[m.subject for m in kept],
        from_=[s[0] for s in senders],
        to=[p[0] for p in to],
        cc=[p[0] for p in cc],
        bcc=[p[0] for p in bcc],
        snippet=[m.bodyPreview for m in kept],
        received_at=[_utc(m.receivedDateTime) for m in kept],
        labels=[
            _labels(base_labels, draft_label, m.isDraft is True, m.isRead is True, m.categories)
            for m in kept
        ],
        is_read=[m.isRead is True for m in kept],
        has_attachments=[m.hasAttachments is True for m in kept],
        from_name=[s[1] for s in senders],
        to_names=[p[1] for p in to],
        cc_names=[p[1] for p in cc],
        bcc_names=[p[1] for p in bcc],
        sent_at=[_utc(m.sentDateTime) for m in kept],
        in_reply_to=[None] * len(kept),
        references=[[] for _ in kept],
        size=[None] * len(kept),
        importance=[importance(m.importance.lower()) if m.importance else None for m in kept],
        flagged=[m.flag is not None and m.flag.flagStatus == "flagged" for m in kept],
    )
    return batch, deletes


def _utc(value: datetime | None) -> datetime | None:
    return value if value is None or value.tzinfo else value.replace(tzinfo=UTC)
