"""Graph JSON representations of users, mail folders and messages (v1.0 property names)."""

from __future__ import annotations

import json
from collections import OrderedDict
from datetime import UTC, datetime
from functools import lru_cache
from json.encoder import encode_basestring as _quote
from typing import Any

from app.simulator.microsoft import ids
from app.simulator.microsoft.mailbox import (
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


def iso(value: datetime) -> str:
    """UTC, whole seconds, with a Z: how Graph writes message dates."""
    if value.tzinfo is not UTC:
        value = value.astimezone(UTC)
    return value.isoformat()[:19] + "Z"


def _address(address: str, name: str | None = None) -> dict[str, Any]:
    return {"emailAddress": {"name": name or display_name(address), "address": address}}


def _dumps(value: Any) -> str:
    return _ENCODER.encode(value)


# A message's content never changes, so its encoded content properties are cached (per
# $select) across requests; only id, read state, categories and folder are encoded per request.
_STATIC_CACHE: OrderedDict[tuple[bytes, int, tuple[str, ...] | None], tuple[str, str]] = (
    OrderedDict()
)
_STATIC_CACHE_SIZE = 20_000
_STATIC_NAMES = (
    "createdDateTime", "receivedDateTime", "sentDateTime", "hasAttachments", "internetMessageId",
    "subject", "bodyPreview", "importance", "conversationId", "conversationIndex",
    "isDeliveryReceiptRequested", "isReadReceiptRequested", "isDraft", "inferenceClassification",
    "body", "uniqueBody", "sender", "from", "toRecipients", "ccRecipients", "bccRecipients",
    "replyTo", "flag",
)  # fmt: skip
_DYNAMIC_NAMES = (
    "lastModifiedDateTime",
    "changeKey",
    "categories",
    "parentFolderId",
    "isRead",
    "webLink",
)
_STATIC_SET = frozenset(_STATIC_NAMES)
_TYPE_PIECE = '"@odata.type":"#microsoft.graph.message"'
_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)


@lru_cache(maxsize=32_768)
def _address_json(address: str, name: str | None = None) -> str:
    return (
        '{"emailAddress":{"name":'
        + _quote(name or display_name(address))
        + ',"address":'
        + _quote(address)
        + "}}"
    )


@lru_cache(maxsize=64)
def _wanted(select: tuple[str, ...] | None) -> frozenset[str]:
    return _STATIC_SET if select is None else _STATIC_SET.intersection(select)


def _static_pieces(mailbox: Mailbox, key: int, select: tuple[str, ...] | None) -> tuple[str, str]:
    """Encode the selected content properties by hand: a page is 1000 of these."""
    generated = mailbox.content(key)
    received = iso(generated.received_at)
    wanted = _wanted(select)
    origin = mailbox.origin_folder(key)
    pieces: list[str] = []
    add = pieces.append
    quoted_received = '"' + received + '"'
    for name in ("createdDateTime", "receivedDateTime", "sentDateTime"):
        if name in wanted:
            add(f'"{name}":{quoted_received}')
    if "hasAttachments" in wanted:
        add('"hasAttachments":true' if generated.has_attachments else '"hasAttachments":false')
    if "internetMessageId" in wanted:
        add('"internetMessageId":' + _quote(generated.internet_message_id))
    if "subject" in wanted:
        add('"subject":' + _quote(generated.subject))
    if "bodyPreview" in wanted:
        add('"bodyPreview":' + _quote(generated.snippet))
    if "importance" in wanted:
        add('"importance":"normal"')
    if "conversationId" in wanted:
        add(f'"conversationId":"{ids.conversation_id(mailbox.tag, generated.thread_index)}"')
    if "conversationIndex" in wanted:
        add(f'"conversationIndex":"AQHZ{ids.conversation_id(mailbox.tag, key)[6:30]}"')
    if "isDeliveryReceiptRequested" in wanted:
        add('"isDeliveryReceiptRequested":false')
    if "isReadReceiptRequested" in wanted:
        add('"isReadReceiptRequested":false')
    if "isDraft" in wanted:
        add('"isDraft":true' if origin == DRAFTS else '"isDraft":false')
    if "inferenceClassification" in wanted:
        add('"inferenceClassification":"focused"')
    if "body" in wanted or "uniqueBody" in wanted:
        body = '{"contentType":"text","content":' + _quote(generated.snippet) + "}"
        if "body" in wanted:
            add('"body":' + body)
        if "uniqueBody" in wanted:
            add('"uniqueBody":' + body)
    if "sender" in wanted or "from" in wanted:
        sender_name, sender_address = mailbox.sender(key, origin)
        sender = _address_json(sender_address, sender_name)
        if "sender" in wanted:
            add('"sender":' + sender)
        if "from" in wanted:
            add('"from":' + sender)
    if "toRecipients" in wanted:
        add('"toRecipients":[' + ",".join(_address_json(a) for a in generated.to) + "]")
    if "ccRecipients" in wanted:
        add('"ccRecipients":[' + ",".join(_address_json(a) for a in generated.cc) + "]")
    if "bccRecipients" in wanted:
        add('"bccRecipients":[]')
    if "replyTo" in wanted:
        add('"replyTo":[]')
    if "flag" in wanted:
        add('"flag":{"flagStatus":"notFlagged"}')
    return ",".join(pieces), received


def _static_chunk(mailbox: Mailbox, key: int, select: tuple[str, ...] | None) -> tuple[str, str]:
    """(the selected content properties as `"name":value,...`, receivedDateTime)."""
    cache_key = (mailbox.tag, key, select)
    cached = _STATIC_CACHE.get(cache_key)
    if cached is not None:
        _STATIC_CACHE.move_to_end(cache_key)
        return cached
    cached = _static_pieces(mailbox, key, select)
    _STATIC_CACHE[cache_key] = cached
    if len(_STATIC_CACHE) > _STATIC_CACHE_SIZE:
        _STATIC_CACHE.popitem(last=False)
    return cached


def message_json(
    mailbox: Mailbox,
    key: int,
    state: MessageState,
    *,
    immutable: bool,
    select: tuple[str, ...] | None,
) -> str:
    """One message as Graph encodes it, already serialized (pages are joined as text)."""
    chunk, received = _static_chunk(mailbox, key, select)
    message_id = mailbox.message_id(key, immutable=immutable, generation=state.generation)
    parts = [
        _TYPE_PIECE,
        f'"@odata.etag":"W/\\"{change_key(key, state.version)}\\""',
        f'"id":"{message_id}"',
    ]
    for name in select if select is not None else _DYNAMIC_NAMES:
        if name == "isRead":
            parts.append('"isRead":true' if state.is_read else '"isRead":false')
        elif name == "categories":
            parts.append(
                '"categories":' + (_dumps(list(state.categories)) if state.categories else "[]")
            )
        elif name == "parentFolderId":
            parts.append(f'"parentFolderId":"{mailbox.folders[state.folder].id}"')
        elif name == "lastModifiedDateTime":
            modified = iso(state.modified_at) if state.modified_at else received
            parts.append(f'"lastModifiedDateTime":"{modified}"')
        elif name == "changeKey":
            parts.append(f'"changeKey":"{change_key(key, state.version)}"')
        elif name == "webLink":
            parts.append(f'"webLink":"https://outlook.office365.com/owa/?ItemID={message_id}"')
    if chunk:
        parts.append(chunk)
    return "{" + ",".join(parts) + "}"


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
