"""Gmail's parsed MIME tree (`format=full` payload): bodies, attachments, inline images.

Gmail hands every part as `{partId, mimeType, filename, headers, body: {size, data |
attachmentId}, parts}`, with `data` base64url-encoded and already transfer-decoded (the
quoted-printable or base64 of the wire is gone) but still in the part's own charset.
Attachment ids change from one `messages.get` to the next, so a part is named by its
`partId`, which does not.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from email.message import Message
from typing import Any

from app.providers.base import AttachmentInfo

JSON = Mapping[str, Any]
_BODY_TYPES = frozenset({"text/plain", "text/html"})
# cid: references in HTML (src="cid:x", url(cid:x)); Content-IDs are compared without <>.
_CID_REFERENCE = re.compile(r"""cid:([^"'\s)>]+)""", re.IGNORECASE)


def headers(part: JSON) -> dict[str, str]:
    found: dict[str, str] = {}
    for header in part.get("headers") or ():
        name, value = header.get("name"), header.get("value")
        if isinstance(name, str) and isinstance(value, str):
            found.setdefault(name.lower(), value)
    return found


def _parsed(part_headers: Mapping[str, str]) -> Message:
    """The part's Content-Type and Content-Disposition, parsed by the standard library."""
    message = Message()
    for name in ("content-type", "content-disposition"):
        if name in part_headers:
            message[name] = part_headers[name]
    return message


def decode_data(data: str) -> bytes:
    """base64url with or without padding (Gmail omits it in places)."""
    try:
        return base64.urlsafe_b64decode(data + "=" * (-len(data) % 4))
    except (binascii.Error, ValueError):
        return b""


def decode_text(raw: bytes, charset: str | None) -> str:
    try:
        return raw.decode(charset or "utf-8", "replace")
    except LookupError:
        # A charset Python does not know: UTF-8 is the best guess for mail written today.
        return raw.decode("utf-8", "replace")


@dataclass(frozen=True, slots=True)
class Part:
    part: JSON
    headers: dict[str, str]
    mime_type: str
    filename: str
    disposition: str | None
    charset: str | None
    content_id: str | None

    @classmethod
    def of(cls, part: JSON) -> Part:
        part_headers = headers(part)
        parsed = _parsed(part_headers)
        mime_type = str(part.get("mimeType") or parsed.get_content_type()).lower()
        content_id = part_headers.get("content-id") or part_headers.get("x-attachment-id")
        return cls(
            part=part,
            headers=part_headers,
            mime_type=mime_type,
            filename=str(part.get("filename") or parsed.get_filename() or ""),
            disposition=parsed.get_content_disposition(),
            charset=parsed.get_content_charset(),
            content_id=content_id.strip().strip("<>").strip() if content_id else None,
        )

    @property
    def part_id(self) -> str:
        return str(self.part.get("partId") or "")

    @property
    def body(self) -> JSON:
        body = self.part.get("body")
        return body if isinstance(body, Mapping) else {}

    @property
    def attachment_id(self) -> str | None:
        value = self.body.get("attachmentId")
        return value if isinstance(value, str) and value else None

    @property
    def is_body_text(self) -> bool:
        """A text/plain or text/html part that is the message's own text, not a file."""
        return (
            self.mime_type in _BODY_TYPES and not self.filename and self.disposition != "attachment"
        )

    @property
    def is_file(self) -> bool:
        if self.mime_type == "message/rfc822":
            return True  # a forwarded message: one attachment, whatever it contains
        return bool(self.filename) or (self.attachment_id is not None and not self.is_body_text)

    def text(self) -> str | None:
        """The part's decoded text when Gmail sent it inline (large bodies come by id)."""
        data = self.body.get("data")
        if not isinstance(data, str):
            return None
        return decode_text(decode_data(data), self.charset)


def walk(payload: JSON) -> Iterator[Part]:
    """Every part, depth first, without entering forwarded messages (message/rfc822)."""
    stack: list[JSON] = [payload]
    while stack:
        part = Part.of(stack.pop())
        yield part
        if part.mime_type == "message/rfc822":
            continue
        children = part.part.get("parts")
        if isinstance(children, list):
            stack.extend(reversed([c for c in children if isinstance(c, Mapping)]))


def body_parts(payload: JSON) -> tuple[Part | None, Part | None]:
    """The first text/plain and text/html parts that are the message's own text."""
    text = html = None
    for part in walk(payload):
        if part.is_body_text:
            if part.mime_type == "text/plain" and text is None:
                text = part
            elif part.mime_type == "text/html" and html is None:
                html = part
    return text, html


def cid_references(html: str) -> set[str]:
    return {match.group(1).strip("<>").lower() for match in _CID_REFERENCE.finditer(html)}


def attachments(payload: JSON, html: str | None = None) -> list[AttachmentInfo]:
    """Every file of the message. An image the HTML body shows through `cid:` is `inline`:
    it is part of the body, not something the user attached."""
    files = [part for part in walk(payload) if part.is_file and part.part_id]
    if not files:
        return []
    if html is None and any(part.content_id for part in files):
        _, html_part = body_parts(payload)
        html = html_part.text() if html_part is not None else None
    referenced = cid_references(html) if html else None
    found = []
    for part in files:
        inline = False
        if part.content_id and part.mime_type != "message/rfc822":
            if referenced is not None:
                inline = part.content_id.lower() in referenced
            else:
                # The HTML came by attachment id (too large to inline): trust the sender.
                inline = part.disposition == "inline"
        size = part.body.get("size")
        found.append(
            AttachmentInfo(
                attachment_id=part.part_id,
                name=part.filename or _rfc822_name(part),
                content_type=part.mime_type,
                size=size if isinstance(size, int) else None,
                inline=inline,
                content_id=part.content_id,
            )
        )
    return found


def _rfc822_name(part: Part) -> str | None:
    if part.mime_type != "message/rfc822":
        return None
    inner = part.part.get("parts")
    if isinstance(inner, list) and inner and isinstance(inner[0], Mapping):
        subject = headers(inner[0]).get("subject")
        if subject:
            return f"{subject}.eml"
    return "forwarded message.eml"


def has_attachments(payload: JSON) -> bool:
    """True when the message has a file the user would call an attachment."""
    return any(not info.inline for info in attachments(payload))


def find_part(payload: JSON, part_id: str) -> Part | None:
    for part in walk(payload):
        if part.part_id == part_id:
            return part
    return None
