"""The Gmail Message resource in its four formats (minimal, metadata, full, raw)."""

from __future__ import annotations

import base64
import secrets
from collections.abc import Sequence
from typing import Any

from app.simulator.content import AttachmentSpec, ContentSpec
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


_ROOT_TYPES = {
    "text-only": "text/plain",
    "alternative": "multipart/alternative",
    "mixed-plain": "multipart/mixed",
    "related": "multipart/related",
    "mixed": "multipart/mixed",
    "forward": "multipart/mixed",
}


def _mime_type(m: MessageView) -> str:
    content = m.content
    if content is None:
        return "multipart/mixed" if m.has_attachments else "multipart/alternative"
    if content.shape == "custom":
        if content.has_files:
            return "multipart/mixed"
        return "multipart/related" if content.attachments else "multipart/alternative"
    return _ROOT_TYPES[content.shape]


def _body_text(m: MessageView) -> str:
    return f"{m.snippet}\r\n\r\n-- \r\n{m.from_header}\r\n"


def _header_list(pairs: list[tuple[str, str]]) -> list[dict[str, str]]:
    return [{"name": k, "value": v} for k, v in pairs]


def _text_part(part_id: str, kind: str, text: str, content: ContentSpec) -> dict[str, Any]:
    # Gmail's `data` is the part's bytes after transfer decoding, in the part's charset.
    raw = text.encode(content.charset, "replace")
    return {
        "partId": part_id,
        "mimeType": f"text/{kind}",
        "filename": "",
        "headers": _header_list(
            [
                ("Content-Type", f'text/{kind}; charset="{content.charset}"'),
                ("Content-Transfer-Encoding", content.transfer_encoding),
            ]
        ),
        "body": {"size": len(raw), "data": base64.urlsafe_b64encode(raw).decode()},
    }


def _attachment_id(m: MessageView, part_id: str) -> str:
    # Like Gmail's, a different id every time the message is read.
    token = f"{m.id}:{part_id}:{secrets.token_hex(8)}".encode()
    return "ANGjdJ" + base64.urlsafe_b64encode(token).decode().rstrip("=")


def parse_attachment_id(value: str) -> tuple[str, str] | None:
    if not value.startswith("ANGjdJ"):
        return None
    raw = value[6:]
    try:
        decoded = base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)).decode()
    except (ValueError, UnicodeDecodeError):
        return None
    parts = decoded.split(":")
    return (parts[0], parts[1]) if len(parts) == 3 else None


def _file_part(m: MessageView, part_id: str, spec: AttachmentSpec) -> dict[str, Any]:
    if spec.kind == "message":
        inner = {
            "partId": f"{part_id}.0",
            "mimeType": "text/plain",
            "filename": "",
            "headers": _header_list(
                [
                    ("Subject", spec.name.removesuffix(".eml")),
                    ("From", "someone@example.com"),
                    ("Content-Type", 'text/plain; charset="utf-8"'),
                ]
            ),
            "body": {"size": 5, "data": base64.urlsafe_b64encode(b"hello").decode()},
        }
        return {
            "partId": part_id,
            "mimeType": "message/rfc822",
            "filename": "",
            "headers": _header_list([("Content-Type", "message/rfc822")]),
            "body": {"attachmentId": _attachment_id(m, part_id), "size": spec.size},
            "parts": [inner],
        }
    disposition = "inline" if spec.inline else "attachment"
    headers = [
        ("Content-Type", f'{spec.content_type}; name="{spec.name}"'),
        ("Content-Disposition", f'{disposition}; filename="{spec.name}"'),
        ("Content-Transfer-Encoding", "base64"),
    ]
    if spec.content_id:
        headers += [("Content-ID", f"<{spec.content_id}>"), ("X-Attachment-Id", spec.content_id)]
    return {
        "partId": part_id,
        "mimeType": spec.content_type,
        "filename": spec.name,
        "headers": _header_list(headers),
        "body": {"attachmentId": _attachment_id(m, part_id), "size": spec.size},
    }


def _multipart(part_id: str, mime: str, children: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "partId": part_id,
        "mimeType": mime,
        "filename": "",
        "headers": _header_list([("Content-Type", f'{mime}; boundary="b{part_id or "root"}"')]),
        "body": {"size": 0},
        "parts": children,
    }


def _alternative(part_id: str, content: ContentSpec) -> dict[str, Any]:
    prefix = f"{part_id}." if part_id else ""
    children: list[dict[str, Any]] = []
    if content.text is not None:
        children.append(_text_part(f"{prefix}{len(children)}", "plain", content.text, content))
    if content.html is not None:
        children.append(_text_part(f"{prefix}{len(children)}", "html", content.html, content))
    return _multipart(part_id, "multipart/alternative", children)


def full_payload(m: MessageView) -> dict[str, Any]:
    """The MIME tree as Gmail's format=full shows it (root headers added by the caller)."""
    content = m.content
    assert content is not None
    inline = [a for a in content.attachments if a.inline]
    files = [a for a in content.attachments if not a.inline]
    if content.shape == "text-only" and not content.attachments:
        return _text_part("", "plain", content.text or "", content)
    if content.shape == "mixed-plain":
        return _multipart("", "multipart/mixed", [_alternative("0", content)])
    if not content.attachments:
        return _alternative("", content)
    if not files:
        body = _alternative("0", content)
        images = [_file_part(m, str(n + 1), a) for n, a in enumerate(inline)]
        return _multipart("", "multipart/related", [body, *images])
    first: dict[str, Any]
    if inline:
        first = _multipart(
            "0",
            "multipart/related",
            [_alternative("0.0", content)]
            + [_file_part(m, f"0.{n + 1}", a) for n, a in enumerate(inline)],
        )
    else:
        first = _alternative("0", content)
    rest = [_file_part(m, str(n + 1), a) for n, a in enumerate(files)]
    return _multipart("", "multipart/mixed", [first, *rest])


def find_attachment(m: MessageView, part_id: str) -> AttachmentSpec | None:
    content = m.content
    if content is None:
        return None
    inline = [a for a in content.attachments if a.inline]
    files = [a for a in content.attachments if not a.inline]
    candidates: dict[str, AttachmentSpec] = {}
    if files:
        for n, a in enumerate(files):
            candidates[str(n + 1)] = a
        for n, a in enumerate(inline):
            candidates[f"0.{n + 1}"] = a
    else:
        for n, a in enumerate(inline):
            candidates[str(n + 1)] = a
    return candidates.get(part_id)


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
    if fmt == "full" and m.content is not None:
        tree = full_payload(m)
        # The root part carries the message's headers (its own Content-Type among them).
        tree["headers"] = [{"name": k, "value": v} for k, v in headers] + [
            h for h in tree["headers"] if h["name"].lower() != "content-type"
        ]
        payload = tree
    elif fmt == "full":
        payload["body"] = {"size": 0}
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
