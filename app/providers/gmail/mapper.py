"""A Gmail Message resource (format=metadata or full) as a NormalizedMessage."""

from __future__ import annotations

import html
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from email.utils import getaddresses
from typing import Any

from app.providers.base import NormalizedMessage

# What a full sync asks for with format=metadata; everything the normalized row needs.
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
)


def addresses(values: Iterable[str]) -> list[str]:
    """Bare, lower-cased addresses from address headers ("Ada <Ada@X.org>, b@y" -> ...)."""
    return [addr.lower() for _, addr in getaddresses(list(values)) if addr and "@" in addr]


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


def _has_attachments(payload: Mapping[str, Any]) -> bool:
    # format=metadata carries no parts: a multipart/mixed top level is how Gmail (and
    # every mail client) wraps attachments. format=full shows them as named parts.
    if payload.get("mimeType") == "multipart/mixed":
        return True
    stack = list(payload.get("parts") or ())
    while stack:
        part = stack.pop()
        if part.get("filename") or (part.get("body") or {}).get("attachmentId"):
            return True
        stack.extend(part.get("parts") or ())
    return False


def to_normalized(message: Mapping[str, Any], names: Mapping[str, str]) -> NormalizedMessage:
    payload = message.get("payload") or {}
    headers = _headers(payload)
    label_ids = list(message.get("labelIds") or ())
    from_ = addresses(headers.get("from", []))
    internal = str(message.get("internalDate") or "")
    received_at = datetime.fromtimestamp(int(internal) / 1000, UTC) if internal.isdigit() else None
    message_id = _first(headers, "message-id")
    subject = _first(headers, "subject")
    snippet = message.get("snippet")
    return NormalizedMessage(
        provider_message_id=message["id"],
        thread_id=message.get("threadId"),
        internet_message_id=message_id.strip() if message_id else None,
        subject=subject,
        from_=from_[0] if from_ else None,
        to=addresses(headers.get("to", [])),
        cc=addresses(headers.get("cc", [])),
        bcc=addresses(headers.get("bcc", [])),
        # Gmail HTML-escapes snippets (&#39;, &amp;); the normalized copy is plain text.
        snippet=html.unescape(snippet) if isinstance(snippet, str) else None,
        received_at=received_at,
        labels=label_names(label_ids, names),
        is_read="UNREAD" not in label_ids,
        has_attachments=_has_attachments(payload),
    )
