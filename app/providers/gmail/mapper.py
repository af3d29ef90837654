"""A Gmail Message resource (format=full) as a NormalizedMessage.

The sync reads `format=full`: `metadata` carries no MIME tree, and whether a message has
attachments is only known from its parts (a `multipart/mixed` top level says nothing: it
wraps inline-only and attachment-less messages just as often).
"""

from __future__ import annotations

import html
import re
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from email.header import decode_header, make_header
from email.utils import getaddresses, parsedate_to_datetime
from typing import Any

from app.providers.base import NormalizedMessage
from app.providers.gmail import mime

# The headers the normalized row reads (format=metadata would be asked for these).
METADATA_HEADERS = (
    "From",
    "To",
    "Cc",
    "Bcc",
    "Subject",
    "Date",
    "Message-ID",
    "In-Reply-To",
    "References",
    "Importance",
    "X-Priority",
)
_MESSAGE_ID = re.compile(r"<[^<>\s]+>")


def addresses(values: Iterable[str]) -> list[str]:
    """Bare, lower-cased addresses from address headers ("Ada <Ada@X.org>, b@y" -> ...)."""
    return [addr.lower() for _, addr in getaddresses(list(values)) if addr and "@" in addr]


def people(values: Iterable[str]) -> tuple[list[str], list[str]]:
    """(addresses, display names) from address headers; "" for an address without a name."""
    found = [(name, addr) for name, addr in getaddresses(list(values)) if addr and "@" in addr]
    return [addr.lower() for _, addr in found], [_decoded(name).strip() for name, _ in found]


def _decoded(value: str) -> str:
    """RFC 2047 encoded-words ("=?UTF-8?B?...?=") as text; anything else as it is."""
    if "=?" not in value:
        return value
    try:
        return str(make_header(decode_header(value)))
    except (ValueError, LookupError, UnicodeDecodeError):
        return value


def _date(value: str | None) -> datetime | None:
    if not value:
        return None
    try:
        parsed = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def importance(headers: Mapping[str, list[str]]) -> str | None:
    """The sender's priority: `Importance: high|normal|low`, else `X-Priority: 1..5`."""
    value = (_first(headers, "importance") or "").strip().lower()
    if value in ("high", "normal", "low"):
        return value
    priority = (_first(headers, "x-priority") or "").strip()[:1]
    if priority in ("1", "2"):
        return "high"
    if priority == "3":
        return "normal"
    if priority in ("4", "5"):
        return "low"
    return None


def label_names(label_ids: Iterable[str], names: Mapping[str, str]) -> list[str]:
    """System label ids stay as they are (INBOX, UNREAD...); user label ids become names."""
    return [names.get(label_id, label_id) for label_id in label_ids]


def _headers(payload: Mapping[str, Any]) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for header in payload.get("headers") or ():
        name, value = header.get("name"), header.get("value")
        if isinstance(name, str) and isinstance(value, str):
            found.setdefault(name.lower(), []).append(value)
    return found


def _first(headers: Mapping[str, list[str]], name: str) -> str | None:
    values = headers.get(name)
    return values[0] if values else None


def to_normalized(message: Mapping[str, Any], names: Mapping[str, str]) -> NormalizedMessage:
    payload = message.get("payload") or {}
    headers = _headers(payload)
    label_ids = list(message.get("labelIds") or ())
    from_, from_names = people(headers.get("from", []))
    to, to_names = people(headers.get("to", []))
    cc, cc_names = people(headers.get("cc", []))
    bcc, bcc_names = people(headers.get("bcc", []))
    internal = str(message.get("internalDate") or "")
    received_at = datetime.fromtimestamp(int(internal) / 1000, UTC) if internal.isdigit() else None
    message_id = _first(headers, "message-id")
    in_reply_to = _MESSAGE_ID.findall(_first(headers, "in-reply-to") or "")
    subject = _first(headers, "subject")
    snippet = message.get("snippet")
    size = message.get("sizeEstimate")
    return NormalizedMessage(
        provider_message_id=message["id"],
        thread_id=message.get("threadId"),
        internet_message_id=message_id.strip() if message_id else None,
        subject=_decoded(subject) if subject is not None else None,
        from_=from_[0] if from_ else None,
        to=to,
        cc=cc,
        bcc=bcc,
        # Gmail HTML-escapes snippets (&#39;, &amp;); the normalized copy is plain text.
        snippet=html.unescape(snippet) if isinstance(snippet, str) else None,
        received_at=received_at,
        labels=label_names(label_ids, names),
        is_read="UNREAD" not in label_ids,
        has_attachments=mime.has_attachments(payload),
        from_name=(from_names[0] or None) if from_names else None,
        to_names=to_names,
        cc_names=cc_names,
        bcc_names=bcc_names,
        sent_at=_date(_first(headers, "date")),
        in_reply_to=in_reply_to[0] if in_reply_to else None,
        references=_MESSAGE_ID.findall(" ".join(headers.get("references", []))),
        size=size if isinstance(size, int) else None,
        importance=importance(headers),
        flagged="STARRED" in label_ids,
    )
