"""Rows and domain errors as the API shows them."""

from __future__ import annotations

import base64
import binascii
import math
import re
import unicodedata
from typing import Any
from urllib.parse import quote

from fastapi import Response
from pydantic import BaseModel

from app.api.errors import ApiError
from app.api.schemas import Contact, MailboxStatusView, MessageDetail, MessageItem, Progress
from app.db.repositories.reading import pair_names
from app.providers.base import (
    AuthExpiredError,
    MessageGone,
    PermanentError,
    ProviderError,
    ThrottledError,
    TransientError,
)
from app.sync import mailboxes as service
from app.sync.cases.states import MailboxScope
from app.sync.reading import MailboxUnavailable
from app.sync.states import MailboxStatus, Phase


def contacts(addresses: list[str], names: list[str] | None) -> list[Contact]:
    # Rows come from our own store, already in shape: constructed, not validated again (a
    # page of 500 items would otherwise spend most of its time in validation).
    return [
        Contact.model_construct(name=name, address=address)
        for address, name in pair_names(addresses, names)
    ]


def message_item(r: dict[str, Any]) -> MessageItem:
    return MessageItem.model_construct(**_message_fields(r))


def json_response(model: BaseModel) -> Response:
    """The body serialized once (FastAPI would dump and validate a returned model again)."""
    return Response(model.model_dump_json(by_alias=True), media_type="application/json")


def message_detail(r: dict[str, Any]) -> MessageDetail:
    return MessageDetail(**_message_fields(r), stream=r["stream_key"], synced_at=r["updated_at"])


def _message_fields(r: dict[str, Any]) -> dict[str, Any]:
    sender = r["from_address"]
    return {
        "id": str(r["id"]),
        "mailbox_id": r["mailbox_id"],
        "provider_message_id": r["provider_message_id"],
        "thread_id": r["thread_id"],
        "internet_message_id": r["internet_message_id"],
        "subject": r["subject"],
        "from_": sender,
        "to": r["to_addresses"],
        "cc": r["cc_addresses"],
        "bcc": r["bcc_addresses"],
        "snippet": r["snippet"],
        "received_at": r["received_at"],
        "labels": r["labels"],
        "is_read": r["is_read"],
        "has_attachments": r["has_attachments"],
        "from_contact": Contact.model_construct(name=r["from_name"], address=sender)
        if sender
        else None,
        "to_contacts": contacts(r["to_addresses"], r["to_names"]),
        "cc_contacts": contacts(r["cc_addresses"], r["cc_names"]),
        "bcc_contacts": contacts(r["bcc_addresses"], r["bcc_names"]),
        "sent_at": r["sent_at"],
        "in_reply_to": r["in_reply_to"],
        "references": r["reference_ids"],
        "size": r["size"],
        "importance": r["importance"] if r["importance"] in ("low", "normal", "high") else None,
        "flagged": r["flagged"],
    }


def mailbox_view(view: service.MailboxView) -> MailboxStatusView:
    m = view.mailbox
    return MailboxStatusView(
        mailbox_id=m.id,
        provider=m.provider,
        email=m.email,
        status=MailboxStatus(m.status),
        phase=Phase(m.phase) if m.phase else None,
        progress=Progress(
            messages_synced=m.messages_synced,
            messages_total_estimate=m.messages_total_estimate,
            percent=view.percent,
        ),
        last_synced_at=m.last_synced_at,
        last_error=m.last_error,
        last_error_at=m.last_error_at,
        in_sync=view.in_sync,
        pending_since=m.pending_since,
        last_verified_at=m.last_verified_at,
        streams_behind=view.streams_behind,
        push=view.push,
        paused=m.paused,
        scope=MailboxScope(m.scope),
    )


# -- attachment ids and file names ---------------------------------------------------------


def public_attachment_id(provider_id: str) -> str:
    """Provider ids may hold '/', '+' or '=': ours are base64url, safe in a path segment."""
    return base64.urlsafe_b64encode(provider_id.encode()).decode().rstrip("=")


def provider_attachment_id(public_id: str) -> str:
    try:
        if not re.fullmatch(r"[A-Za-z0-9_-]{1,2048}", public_id):
            raise ValueError(public_id)
        return base64.urlsafe_b64decode(public_id + "=" * (-len(public_id) % 4)).decode()
    except (ValueError, binascii.Error, UnicodeDecodeError) as exc:
        raise ApiError(404, "not_found", "attachment not found") from exc


_UNSAFE = re.compile(r'[\x00-\x1f\x7f"\\/:*?<>|;]')


def safe_filename(name: str | None, fallback: str = "attachment") -> str:
    """A file name that cannot break a header or escape a directory."""
    cleaned = unicodedata.normalize("NFC", name or "")
    cleaned = _UNSAFE.sub("_", cleaned).strip(" .")
    return cleaned[:200] or fallback


def content_disposition(name: str | None) -> str:
    """RFC 6266: an ASCII fallback and the exact name in RFC 5987 `filename*`."""
    safe = safe_filename(name)
    ascii_name = safe.encode("ascii", "replace").decode().replace("?", "_")
    return f"attachment; filename=\"{ascii_name}\"; filename*=UTF-8''{quote(safe, safe='')}"


# -- provider trouble as HTTP --------------------------------------------------------------


def provider_error(exc: ProviderError | MailboxUnavailable) -> ApiError:
    if isinstance(exc, MailboxUnavailable):
        return ApiError(409, "auth_expired", str(exc))
    if isinstance(exc, MessageGone):
        return ApiError(404, "gone", "the message or attachment no longer exists at the provider")
    if isinstance(exc, AuthExpiredError):
        return ApiError(
            409,
            "auth_expired",
            f"the mailbox must be reconnected before its content can be read ({exc})",
        )
    if isinstance(exc, ThrottledError):
        wait = max(1, math.ceil(exc.retry_after or 5))
        return ApiError(
            503,
            "throttled",
            f"the provider is throttling this mailbox; retry in {wait} s",
            headers={"Retry-After": str(wait)},
        )
    if isinstance(exc, TransientError):
        wait = max(1, math.ceil(exc.retry_after or 5))
        return ApiError(
            503,
            "provider_unavailable",
            "the provider did not answer; retry shortly",
            headers={"Retry-After": str(wait)},
        )
    if isinstance(exc, PermanentError):
        return ApiError(502, "provider_error", f"the provider refused the request: {exc}"[:300])
    return ApiError(502, "provider_error", "the provider refused the request")
