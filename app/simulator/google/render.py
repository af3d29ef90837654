"""The Gmail Message resource in its four formats (minimal, metadata, full, raw)."""

from __future__ import annotations

import base64
from collections.abc import Sequence
from typing import Any

from app.simulator.google.mailbox import MessageView

FORMATS = ("minimal", "metadata", "full", "raw")


def _b64url(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).decode()


def _headers(m: MessageView, owner: str) -> list[tuple[str, str]]:
    headers = [
        ("Delivered-To", owner),
        ("MIME-Version", "1.0"),
        ("Date", m.date_header),
        ("Message-ID", m.message_id),
    ]
    if m.in_reply_to:
        headers += [("In-Reply-To", m.in_reply_to), ("References", m.in_reply_to)]
    headers += [("Subject", m.subject), ("From", m.from_header), ("To", ", ".join(m.to))]
    if m.cc:
        headers.append(("Cc", ", ".join(m.cc)))
    headers.append(("Content-Type", f'{_mime_type(m)}; boundary="{m.id}"'))
    return headers


def _mime_type(m: MessageView) -> str:
    return "multipart/mixed" if m.has_attachments else "multipart/alternative"


def _body_text(m: MessageView) -> str:
    return f"{m.snippet}\r\n\r\n-- \r\n{m.from_header}\r\n"


def _alternative(m: MessageView, prefix: str) -> list[dict[str, Any]]:
    text = _body_text(m)
    html = f'<div dir="ltr">{text}</div>'
    return [
        {
            "partId": f"{prefix}0",
            "mimeType": "text/plain",
            "filename": "",
            "headers": [{"name": "Content-Type", "value": 'text/plain; charset="UTF-8"'}],
            "body": {"size": len(text), "data": _b64url(text)},
        },
        {
            "partId": f"{prefix}1",
            "mimeType": "text/html",
            "filename": "",
            "headers": [{"name": "Content-Type", "value": 'text/html; charset="UTF-8"'}],
            "body": {"size": len(html), "data": _b64url(html)},
        },
    ]


def _parts(m: MessageView) -> list[dict[str, Any]]:
    if not m.has_attachments:
        return _alternative(m, "")
    size = max(1, m.size_estimate - 2000)
    return [
        {
            "partId": "0",
            "mimeType": "multipart/alternative",
            "filename": "",
            "headers": [{"name": "Content-Type", "value": "multipart/alternative"}],
            "body": {"size": 0},
            "parts": _alternative(m, "0."),
        },
        {
            "partId": "1",
            "mimeType": "application/pdf",
            "filename": f"document-{m.id[-4:]}.pdf",
            "headers": [
                {"name": "Content-Type", "value": "application/pdf"},
                {"name": "Content-Disposition", "value": "attachment"},
            ],
            "body": {"attachmentId": f"ANGjdJ{m.id}", "size": size},
        },
    ]


def message_resource(
    m: MessageView, fmt: str, owner: str, metadata_headers: Sequence[str] = ()
) -> dict[str, Any]:
    resource: dict[str, Any] = {
        "id": m.id,
        "threadId": m.thread_id,
        "labelIds": list(m.label_ids),
        "snippet": m.snippet,
        "sizeEstimate": m.size_estimate,
        "historyId": str(m.history_id),
        "internalDate": str(m.internal_ms),
    }
    if fmt == "minimal":
        return resource
    headers = _headers(m, owner)
    if fmt == "raw":
        raw = "".join(f"{k}: {v}\r\n" for k, v in headers) + "\r\n" + _body_text(m)
        resource["raw"] = base64.urlsafe_b64encode(raw.encode()).decode()
        return resource
    if fmt == "metadata" and metadata_headers:
        # metadataHeaders match case-insensitively; the message's own spelling is returned.
        wanted = {h.lower() for h in metadata_headers}
        headers = [(k, v) for k, v in headers if k.lower() in wanted]
    payload: dict[str, Any] = {
        "partId": "",
        "mimeType": _mime_type(m),
        "filename": "",
        "headers": [{"name": k, "value": v} for k, v in headers],
    }
    if fmt == "full":
        payload["body"] = {"size": 0}
        payload["parts"] = _parts(m)
    resource["payload"] = payload
    return resource


def ground_truth_entry(m: MessageView) -> dict[str, Any]:
    return {
        "id": m.id,
        "threadId": m.thread_id,
        "labelIds": list(m.label_ids),
        "isRead": "UNREAD" not in m.label_ids,
        "subject": m.subject,
        "from": m.from_header,
        "to": list(m.to),
        "cc": list(m.cc),
        "internalDate": str(m.internal_ms),
        "internetMessageId": m.message_id,
        "hasAttachments": m.has_attachments,
        "snippet": m.snippet,
        "historyId": str(m.history_id),
    }
