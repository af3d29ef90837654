"""Graph JSON representations of users, mail folders and messages (v1.0 property names)."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from json.encoder import encode_basestring as _quote
from typing import Any

from app.simulator.corpus import GeneratedMessage
from app.simulator.microsoft import ids
from app.simulator.microsoft.mailbox import (
    ALWAYS_READ,
    DRAFTS,
    Folder,
    Mailbox,
    MessageState,
    change_key,
    display_name,
)

MESSAGE_PROPERTIES = frozenset(
    {
        "id", "createdDateTime", "lastModifiedDateTime", "changeKey", "categories",
        "receivedDateTime", "sentDateTime", "hasAttachments", "internetMessageId", "subject",
        "bodyPreview", "importance", "parentFolderId", "conversationId", "conversationIndex",
        "isDeliveryReceiptRequested", "isReadReceiptRequested", "isRead", "isDraft", "webLink",
        "inferenceClassification", "body", "uniqueBody", "sender", "from", "toRecipients",
        "ccRecipients", "bccRecipients", "replyTo", "flag",
    }
)  # fmt: skip
FOLDER_PROPERTIES = frozenset(
    {
        "id", "displayName", "parentFolderId", "childFolderCount", "unreadItemCount",
        "totalItemCount", "isHidden",
    }
)  # fmt: skip


class SelectError(ValueError):
    pass


def parse_select(
    raw: str | None, allowed: frozenset[str], type_name: str
) -> tuple[str, ...] | None:
    """Graph answers 400 for a property the type does not have; names are case-insensitive."""
    if not raw:
        return None
    by_lower = {name.lower(): name for name in allowed}
    selected: list[str] = []
    for part in raw.split(","):
        name = part.strip()
        if not name:
            continue
        canonical = by_lower.get(name.lower())
        if canonical is None:
            raise SelectError(f"Could not find a property named '{name}' on type '{type_name}'.")
        if canonical not in selected:
            selected.append(canonical)
    return tuple(selected)


_UNIX_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# Formatting a date is per message on every page: days and times of day come from small
# tables instead of datetime.isoformat.
_DAY_PREFIXES: dict[int, str] = {}
_HOUR_MINUTES = tuple(f"{h:02d}:{m:02d}:" for h in range(24) for m in range(60))
_SECONDS = tuple(f"{s:02d}Z" for s in range(60))


def iso(value: datetime) -> str:
    """UTC, whole seconds, with a Z: how Graph writes message dates."""
    if value.tzinfo is not UTC:
        value = value.astimezone(UTC)
    since = value - _UNIX_EPOCH
    day = since.days
    prefix = _DAY_PREFIXES.get(day)
    if prefix is None:
        if len(_DAY_PREFIXES) > 100_000:
            _DAY_PREFIXES.clear()
        prefix = _DAY_PREFIXES[day] = (_UNIX_EPOCH + timedelta(days=day)).date().isoformat() + "T"
    seconds = since.seconds
    return prefix + _HOUR_MINUTES[seconds // 60] + _SECONDS[seconds % 60]


def _address(address: str, name: str | None = None) -> dict[str, Any]:
    return {"emailAddress": {"name": name or display_name(address), "address": address}}


def _dumps(value: Any) -> str:
    return _ENCODER.encode(value)


_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)
_DYNAMIC_NAMES = (
    "lastModifiedDateTime",
    "changeKey",
    "categories",
    "parentFolderId",
    "isRead",
    "webLink",
)
_DYNAMIC_SET = frozenset(_DYNAMIC_NAMES)


class _Plan:
    """What a $select asks for, resolved once per distinct $select.

    Properties whose value never varies are pre-rendered into runs (`after_*`), so a
    message pays only for the properties that differ between messages.
    """

    __slots__ = (
        "after_conversation", "after_draft", "after_preview", "body", "body_preview", "cc",
        "conversation_id", "conversation_index", "dates", "dynamic", "from_",
        "has_attachments", "internet_message_id", "is_draft", "origin", "sender", "subject",
        "tail", "to", "unique_body", "uses_received",
    )  # fmt: skip

    def __init__(self, select: tuple[str, ...] | None) -> None:
        names = MESSAGE_PROPERTIES if select is None else frozenset(select)
        order = _DYNAMIC_NAMES if select is None else select
        self.dynamic = tuple(name for name in order if name in _DYNAMIC_SET)
        dates = [
            name
            for name in ("createdDateTime", "receivedDateTime", "sentDateTime")
            if name in names
        ]
        # received.join(dates) renders every selected date property in one call.
        self.dates = (
            (f',"{dates[0]}":"', *(f'","{name}":"' for name in dates[1:]), '"') if dates else ()
        )
        self.uses_received = bool(dates) or "lastModifiedDateTime" in self.dynamic
        self.has_attachments = "hasAttachments" in names
        self.internet_message_id = "internetMessageId" in names
        self.subject = "subject" in names
        self.body_preview = "bodyPreview" in names
        self.after_preview = _run(names, ('"importance":"normal"',))
        self.conversation_id = "conversationId" in names
        self.conversation_index = "conversationIndex" in names
        self.after_conversation = _run(
            names, ('"isDeliveryReceiptRequested":false', '"isReadReceiptRequested":false')
        )
        self.is_draft = "isDraft" in names
        self.after_draft = _run(names, ('"inferenceClassification":"focused"',))
        self.body = "body" in names
        self.unique_body = "uniqueBody" in names
        self.sender = "sender" in names
        self.from_ = "from" in names
        self.origin = self.is_draft or self.sender or self.from_
        self.to = "toRecipients" in names
        self.cc = "ccRecipients" in names
        self.tail = _run(
            names,
            ('"bccRecipients":[]', '"replyTo":[]', '"flag":{"flagStatus":"notFlagged"}'),
        )


def _run(names: frozenset[str], pieces: tuple[str, ...]) -> str:
    return "".join("," + piece for piece in pieces if piece[1 : piece.index('":')] in names)


@lru_cache(maxsize=64)
def _plan(select: tuple[str, ...] | None) -> _Plan:
    return _Plan(select)


class _Rendered(dict[str, str]):
    """Rendered JSON for one of the corpus' finite vocabularies (people, subjects, snippets).

    Cleared when full: messages added through the control API can bring arbitrary values.
    """

    __slots__ = ("render",)

    def __init__(self, render: Callable[[str], str]) -> None:
        super().__init__()
        self.render = render

    def __missing__(self, value: str) -> str:
        if len(self) >= 32_768:
            self.clear()
        rendered = self[value] = self.render(value)
        return rendered


def _address_json(address: str, name: str | None = None) -> str:
    return (
        '{"emailAddress":{"name":'
        + _quote(name or display_name(address))
        + ',"address":'
        + _quote(address)
        + "}}"
    )


_SUBJECTS = _Rendered(lambda subject: ',"subject":' + _quote(subject))
_PREVIEWS = _Rendered(lambda snippet: ',"bodyPreview":' + _quote(snippet))
_BODIES = _Rendered(lambda snippet: '{"contentType":"text","content":' + _quote(snippet) + "}")
_RECIPIENTS = _Rendered(_address_json)
_recipient = _RECIPIENTS.__getitem__
_SENDERS: dict[tuple[str, str], str] = {}
_CATEGORIES: dict[tuple[str, ...], str] = {(): "[]"}


def _sender_json(address: str, name: str) -> str:
    cache_key = (address, name)
    rendered = _SENDERS.get(cache_key)
    if rendered is None:
        if len(_SENDERS) >= 32_768:
            _SENDERS.clear()
        rendered = _SENDERS[cache_key] = _address_json(address, name)
    return rendered


def _categories_json(categories: tuple[str, ...]) -> str:
    rendered = _CATEGORIES.get(categories)
    if rendered is None:
        if len(_CATEGORIES) >= 4096:
            _CATEGORIES.clear()
            _CATEGORIES[()] = "[]"
        rendered = _CATEGORIES[categories] = _dumps(list(categories))
    return rendered


def message_json(
    mailbox: Mailbox,
    key: int,
    state: MessageState,
    *,
    immutable: bool,
    select: tuple[str, ...] | None,
    generated: GeneratedMessage | None = None,
) -> str:
    """One message as Graph encodes it, already serialized (pages are joined as text).

    A cold delta page is 1000 of these and this is most of its cost: each property is
    rendered from pre-rendered pieces into a local ("" when not selected) and the message
    is built by one f-string, reading its content once (`generated`, when the caller has it).
    """
    plan = _plan(select)
    if generated is None:
        generated = mailbox.content(key)
    tag = mailbox.tag
    changed = change_key(key, state.version)
    message_id = ids.message_id(tag, key, state.generation, immutable=immutable)
    received = iso(generated.received_at) if plan.uses_received else ""
    dynamic = ""
    for name in plan.dynamic:
        if name == "isRead":
            dynamic += ',"isRead":true' if state.is_read else ',"isRead":false'
        elif name == "categories":
            dynamic += ',"categories":' + _categories_json(state.categories)
        elif name == "parentFolderId":
            dynamic += ',"parentFolderId":"' + mailbox.folders[state.folder].id + '"'
        elif name == "lastModifiedDateTime":
            modified = iso(state.modified_at) if state.modified_at else received
            dynamic += ',"lastModifiedDateTime":"' + modified + '"'
        elif name == "changeKey":
            dynamic += ',"changeKey":"' + changed + '"'
        elif name == "webLink":
            dynamic += ',"webLink":"https://outlook.office365.com/owa/?ItemID=' + message_id + '"'
    dates = received.join(plan.dates)
    attachments = ""
    if plan.has_attachments:
        attachments = (
            ',"hasAttachments":true' if generated.has_attachments else ',"hasAttachments":false'
        )
    internet_id = ""
    if plan.internet_message_id:
        internet_id = ',"internetMessageId":' + _quote(generated.internet_message_id)
    subject = _SUBJECTS[generated.subject] if plan.subject else ""
    preview = _PREVIEWS[generated.snippet] if plan.body_preview else ""
    conversation = ""
    if plan.conversation_id:
        conversation = f',"conversationId":"{ids.conversation_id(tag, generated.thread_index)}"'
    if plan.conversation_index:
        conversation += f',"conversationIndex":"AQHZ{ids.conversation_id(tag, key)[6:30]}"'
    draft = body = people = ""
    if plan.origin:
        origin = mailbox.origin_of(key, state)
        if plan.is_draft:
            draft = ',"isDraft":true' if origin == DRAFTS else ',"isDraft":false'
        if plan.sender or plan.from_:
            if origin in ALWAYS_READ:
                sender = _sender_json(mailbox.email, mailbox.display_name)
            else:
                sender = _sender_json(generated.from_address, generated.from_name)
            if plan.sender:
                people = ',"sender":' + sender
            if plan.from_:
                people += ',"from":' + sender
    if plan.body:
        body = ',"body":' + _BODIES[generated.snippet]
    if plan.unique_body:
        body += ',"uniqueBody":' + _BODIES[generated.snippet]
    if plan.to:
        people += ',"toRecipients":[' + ",".join(map(_recipient, generated.to)) + "]"
    if plan.cc:
        people += ',"ccRecipients":[' + ",".join(map(_recipient, generated.cc)) + "]"
    return (
        f'{{"@odata.type":"#microsoft.graph.message","@odata.etag":"W/\\"{changed}\\""'
        f',"id":"{message_id}"{dynamic}{dates}{attachments}{internet_id}{subject}{preview}'
        f"{plan.after_preview}{conversation}{plan.after_conversation}{draft}"
        f"{plan.after_draft}{body}{people}{plan.tail}}}"
    )


def removed_json(message_id: str) -> str:
    # Outlook reports both deletions and moves out of the folder with reason "deleted".
    return (
        '{"@odata.type":"#microsoft.graph.message","id":"'
        + message_id
        + '","@removed":{"reason":"deleted"}}'
    )


def collection_json(context: str, items: list[str], links: dict[str, str] | None = None) -> bytes:
    head = '{"@odata.context":' + _dumps(context)
    for name, link in (links or {}).items():
        head += f',"{name}":' + _dumps(link)
    return (head + ',"value":[' + ",".join(items) + "]}").encode()


def folder_resource(
    mailbox: Mailbox, folder: Folder, select: tuple[str, ...] | None = None
) -> dict[str, Any]:
    parent = folder.spec.parent
    full: dict[str, Any] = {
        "id": folder.id,
        "displayName": folder.display_name,
        "parentFolderId": mailbox.folders[parent].id
        if parent is not None
        else _root_parent(mailbox),
        "childFolderCount": len(folder.children),
        "unreadItemCount": folder.unread,
        "totalItemCount": folder.total,
        "isHidden": False,
    }
    if select is None:
        return full
    return {"id": folder.id, **{name: full[name] for name in select}}


def _root_parent(mailbox: Mailbox) -> str:
    return ids.folder_id(mailbox.tag, 0xFFFF)


def user_resource(mailbox: Mailbox) -> dict[str, Any]:
    given, _, surname = mailbox.display_name.partition(" ")
    return {
        "id": mailbox.user_id,
        "displayName": mailbox.display_name,
        "givenName": given,
        "surname": surname or None,
        "mail": mailbox.email,
        "userPrincipalName": mailbox.email,
        "businessPhones": [],
        "jobTitle": None,
        "mobilePhone": None,
        "officeLocation": None,
        "preferredLanguage": "en-US",
    }
