"""Graph JSON representations of users, mail folders and messages (v1.0 property names)."""

from __future__ import annotations

import binascii
import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from json.encoder import encode_basestring as _quote
from typing import Any

from app.simulator.corpus import CATEGORIES, GeneratedMessage
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
    rendered = (
        f'{{"@odata.type":"#microsoft.graph.message","@odata.etag":"W/\\"{changed}\\""'
        f',"id":"{message_id}"{dynamic}{dates}{attachments}{internet_id}{subject}{preview}'
        f"{plan.after_preview}{conversation}{plan.after_conversation}{draft}"
        f"{plan.after_draft}{body}{people}{plan.tail}}}"
    )
    if mailbox.quirks:
        quirks = mailbox.quirks.get(key)
        if quirks:
            rendered = apply_quirks(rendered, quirks)
    return rendered


def apply_quirks(rendered: str, quirks: dict[str, object]) -> str:
    """`{"drop": [names]}` removes properties, `{"set": {name: value}}` replaces them with
    any JSON value (null, a string where Graph's schema says boolean...)."""
    message = json.loads(rendered)
    for name in quirks.get("drop", ()) or ():  # type: ignore[attr-defined]
        message.pop(name, None)
    for name, value in (quirks.get("set") or {}).items():  # type: ignore[attr-defined]
        if name in message or value is not None:
            message[name] = value
    return _dumps(message)


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
    parent = folder.parent
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


def removed_folder(folder: Folder) -> dict[str, Any]:
    """How folder delta reports a folder that is gone."""
    return {"id": folder.id, "@removed": {"reason": "deleted"}}


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


# -- cold enumeration pages -------------------------------------------------------------
#
# A cold delta page is ~1000 never-mutated seeded messages, and `message_json` spends most
# of their time deciding, per message, what the $select wants. Instead, a renderer is
# compiled once per (plan, id style): Python source is generated that renders exactly the
# selected properties of a seeded message, straight from `corpus.generate_fields`, with no
# per-message branching on the plan and without building a MessageState.
#
# Safety: the source is assembled only from fragments written below, chosen by property
# names of the fixed MESSAGE_PROPERTIES whitelist (parse_select has already mapped the
# request onto it); every string value, including the JSON pieces, is passed in as a
# variable, so no request text ever reaches compile(). The output must equal
# `message_json(..., seeded_state(...))` byte for byte (tests/ and a snapshot check it).

_SEEDED_CATEGORIES: dict[str | None, str] = {None: "[]", **{c: _dumps([c]) for c in CATEGORIES}}
_DAY_SECONDS = 86_400


def _day_prefix(day: int) -> str:
    prefix = _DAY_PREFIXES.get(day)
    if prefix is None:
        if len(_DAY_PREFIXES) > 100_000:
            _DAY_PREFIXES.clear()
        prefix = _DAY_PREFIXES[day] = (_UNIX_EPOCH + timedelta(days=day)).date().isoformat() + "T"
    return prefix


# Names the generated code may read besides its per-page context.
_RENDER_GLOBALS: dict[str, Any] = {
    "b2a": binascii.b2a_base64,
    "urlsafe": bytes.maketrans(b"+/", b"-_"),
    "immutable_middle": ids.immutable_middle,
    "rest_middle": ids.rest_middle,
    "days_get": _DAY_PREFIXES.get,
    "day_prefix": _day_prefix,
    "hour_minutes": _HOUR_MINUTES,
    "seconds_z": _SECONDS,
    "subjects": _SUBJECTS,
    "previews": _PREVIEWS,
    "bodies": _BODIES,
    "recipient": _recipient,
    "sender_json": _sender_json,
    "quote": _quote,
    "seeded_categories": _SEEDED_CATEGORIES,
    "DAY": _DAY_SECONDS,
    "is_read_json": (',"isRead":false', ',"isRead":true'),
    "attachments_json": (',"hasAttachments":false', ',"hasAttachments":true'),
    "comma_join": ",".join,
}
# Per-page values, bound as closure variables of the compiled renderer.
_CONTEXT_NAMES = (
    "id_head", "id_tail", "folder_id", "read_floor", "draft", "owner_sender", "conv_head",
    "conv_cache", "k",
)  # fmt: skip


def _seeded_source(plan: _Plan, immutable: bool) -> tuple[str, list[str]]:
    """The factory's source and its constant JSON runs (passed in as `k[i]`)."""
    consts: list[str] = []
    parts: list[str] = []  # f-string fields: expressions only

    def const(text: str) -> None:
        if text:
            consts.append(text)
            parts.append(f"k[{len(consts) - 1}]")

    body = [
        "_p, thread, subject, from_name, from_address, to, cc, ts, is_read, attachments,"
        " category, snippet, internet_id, _b = f",
        "changed = '%08x0000' % key",
    ]
    middle = "immutable_middle(key)" if immutable else "rest_middle(key, 0)"
    body.append(
        f"message_id = id_head + b2a({middle}, newline=False).translate(urlsafe).decode() + id_tail"
    )
    if plan.uses_received:
        body += [
            "received = days_get(ts // DAY) or day_prefix(ts // DAY)",
            "received += hour_minutes[ts % DAY // 60] + seconds_z[ts % 60]",
        ]
    const('{"@odata.type":"#microsoft.graph.message","@odata.etag":"W/\\"CQAAABYAAAA')
    parts.append("changed")
    const('\\"","id":"')
    parts.append("message_id")
    const('"')
    for name in plan.dynamic:
        if name == "isRead":
            parts.append("is_read_json[read_floor or is_read]")
        elif name == "categories":
            const(',"categories":')
            parts.append("seeded_categories[category]")
        elif name == "parentFolderId":
            const(',"parentFolderId":"')
            parts.append("folder_id")
            const('"')
        elif name == "lastModifiedDateTime":
            const(',"lastModifiedDateTime":"')
            parts.append("received")
            const('"')
        elif name == "changeKey":
            const(',"changeKey":"CQAAABYAAAA')
            parts.append("changed")
            const('"')
        elif name == "webLink":
            const(',"webLink":"https://outlook.office365.com/owa/?ItemID=')
            parts.append("message_id")
            const('"')
    for i, piece in enumerate(plan.dates):
        const(piece)
        if i < len(plan.dates) - 1:
            parts.append("received")
    if plan.has_attachments:
        parts.append("attachments_json[attachments]")
    if plan.internet_message_id:
        const(',"internetMessageId":')
        parts.append("quote(internet_id)")
    if plan.subject:
        parts.append("subjects[subject]")
    if plan.body_preview:
        parts.append("previews[snippet]")
    const(plan.after_preview)
    if plan.conversation_id:
        body += [
            "conversation = conv_cache.get(thread)",
            "if conversation is None:",
            "    if len(conv_cache) >= 256:",
            "        conv_cache.clear()",
            "    conversation = conv_cache[thread] = conv_head + b2a("
            "conv_pack(3, thread), newline=False).translate(urlsafe).decode()",
        ]
        const(',"conversationId":"')
        parts.append("conversation")
        const('"')
    if plan.conversation_index:
        const(',"conversationIndex":"AQHZ')
        parts.append("conv_head[6:]")
        parts.append("b2a(conv_pack(3, key), newline=False).translate(urlsafe).decode()")
        const('"')
    const(plan.after_conversation)
    if plan.is_draft:
        parts.append("draft")
    const(plan.after_draft)
    if plan.body:
        const(',"body":')
        parts.append("bodies[snippet]")
    if plan.unique_body:
        const(',"uniqueBody":')
        parts.append("bodies[snippet]")
    if plan.sender or plan.from_:
        body.append("sender = owner_sender or sender_json(from_address, from_name)")
        if plan.sender:
            const(',"sender":')
            parts.append("sender")
        if plan.from_:
            const(',"from":')
            parts.append("sender")
    if plan.to:
        const(',"toRecipients":[')
        parts.append("comma_join(map(recipient, to))")
        const("]")
    if plan.cc:
        const(',"ccRecipients":[')
        parts.append("comma_join(map(recipient, cc))")
        const("]")
    const(plan.tail)
    const("}")
    # Adjacent constants would each cost a FORMAT_VALUE: merge them.
    merged_consts: list[str] = []
    merged_parts: list[str] = []
    for part in parts:
        if part.startswith("k[") and merged_parts and merged_parts[-1].startswith("k["):
            merged_consts[-1] += consts[int(part[2:-1])]
        elif part.startswith("k["):
            merged_consts.append(consts[int(part[2:-1])])
            merged_parts.append(f"k[{len(merged_consts) - 1}]")
        else:
            merged_parts.append(part)
    # Constants are closure locals k0..kn rather than subscripts of `k`.
    fields = "".join(
        "{" + (f"k{part[2:-1]}" if part.startswith("k[") else part) + "}" for part in merged_parts
    )
    unpack = "".join(f"    k{i} = k[{i}]\n" for i in range(len(merged_consts)))
    source = (
        f"def make({', '.join(_CONTEXT_NAMES)}):\n"
        f"{unpack}"
        "    def render(key, f):\n"
        + "".join(f"        {line}\n" for line in body)
        + f'        return f"{fields}"\n'
        "    return render\n"
    )
    return source, merged_consts


@lru_cache(maxsize=64)
def _seeded_factory(
    select: tuple[str, ...] | None, immutable: bool
) -> tuple[Callable[..., Callable[[int, tuple[Any, ...]], str]], tuple[str, ...]]:
    source, consts = _seeded_source(_plan(select), immutable)
    namespace = dict(_RENDER_GLOBALS, conv_pack=ids.conversation_pack)
    exec(compile(source, "<seeded message renderer>", "exec"), namespace)  # noqa: S102
    return namespace["make"], tuple(consts)


def seeded_renderer(
    mailbox: Mailbox, folder: Folder, *, immutable: bool, select: tuple[str, ...] | None
) -> Callable[[int, tuple[Any, ...]], str]:
    """render(key, corpus.generate_fields(...)) for never-mutated seeded messages of `folder`.

    Such a message is in the folder it was seeded into, at version and generation 0, so
    everything its state would contribute is fixed for the page and bound here once.
    """
    make, consts = _seeded_factory(select, immutable)
    head, tail = ids.message_id_pieces(mailbox.tag, immutable=immutable)
    owner = folder.index in ALWAYS_READ
    return make(
        id_head=head,
        id_tail=tail,
        folder_id=folder.id,
        read_floor=owner,
        draft=',"isDraft":true' if folder.index == DRAFTS else ',"isDraft":false',
        owner_sender=_sender_json(mailbox.email, mailbox.display_name) if owner else "",
        conv_head=ids.conversation_head(mailbox.tag),
        conv_cache={},
        k=consts,
    )
