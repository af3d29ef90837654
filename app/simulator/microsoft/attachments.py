"""Graph message bodies and attachments: `body` as the Prefer header asks, the attachments
collection with Graph's $select rules, one attachment, and its raw `$value`.

Graph's harsh spots kept here: `contentId` is a property of fileAttachment only, so a bare
`$select=contentId` is a 400 (the type-cast form `microsoft.graph.fileAttachment/contentId`
works); without $select every file's `contentBytes` comes along; attachment ids are
URL-safe base64 ending in '=' padding, like Exchange's.
"""

from __future__ import annotations

import base64
import binascii
import html
import re

from fastapi.responses import StreamingResponse

from app.simulator.content import AttachmentSpec, ContentSpec
from app.simulator.microsoft.mailbox import Mailbox

BASE_PROPERTIES = ("id", "lastModifiedDateTime", "name", "contentType", "size", "isInline")
FILE_CAST = "microsoft.graph.fileattachment/"
FILE_PROPERTIES = ("contentId", "contentLocation", "contentBytes")


class AttachmentSelectError(ValueError):
    pass


def attachment_id(mailbox: Mailbox, key: int, index: int) -> str:
    raw = b"\x00\x01att" + bytes(mailbox.tag) + b"|%d|%d" % (key, index) + b"\xfb\xff"
    return "AAMkA" + base64.urlsafe_b64encode(raw).decode()


def parse_attachment_id(mailbox: Mailbox, value: str) -> tuple[int, int] | None:
    if not value.startswith("AAMkA"):
        return None
    try:
        raw = base64.urlsafe_b64decode(value[5:])
    except (binascii.Error, ValueError):
        return None
    match = re.fullmatch(rb"\x00\x01att(.*)\|(\d+)\|(\d+)\xfb\xff", raw, re.DOTALL)
    if match is None or match.group(1) != bytes(mailbox.tag):
        return None
    return int(match.group(2)), int(match.group(3))


def parse_select(raw: str | None) -> tuple[set[str], set[str]] | None:
    """(base properties, fileAttachment properties) or None for everything."""
    if not raw:
        return None
    base: set[str] = set()
    file: set[str] = set()
    by_lower = {p.lower(): p for p in BASE_PROPERTIES}
    file_lower = {p.lower(): p for p in FILE_PROPERTIES}
    for part in raw.split(","):
        name = part.strip()
        lowered = name.lower()
        if not name:
            continue
        if lowered.startswith(FILE_CAST) and lowered[len(FILE_CAST) :] in file_lower:
            file.add(file_lower[lowered[len(FILE_CAST) :]])
        elif lowered in by_lower:
            base.add(by_lower[lowered])
        else:
            raise AttachmentSelectError(
                f"Could not find a property named '{name}' on type 'microsoft.graph.attachment'."
            )
    return base, file


def attachment_resource(
    mailbox: Mailbox, key: int, spec: AttachmentSpec, select: tuple[set[str], set[str]] | None
) -> dict[str, object]:
    is_item = spec.kind == "message"
    full: dict[str, object] = {
        "@odata.type": "#microsoft.graph.itemAttachment"
        if is_item
        else "#microsoft.graph.fileAttachment",
        "id": attachment_id(mailbox, key, spec.index),
        "lastModifiedDateTime": "2024-01-01T00:00:00Z",
        "name": spec.name,
        "contentType": spec.content_type,
        "size": spec.size,
        "isInline": spec.inline,
    }
    file_props: dict[str, object] = {}
    if not is_item:
        file_props = {"contentId": spec.content_id, "contentLocation": None}
        if select is None:
            file_props["contentBytes"] = base64.b64encode(spec.content()).decode()
    if select is None:
        return {**full, **file_props}
    base, wanted_file = select
    chosen = {k: v for k, v in full.items() if k in base or k in ("@odata.type", "id")}
    chosen.update({k: v for k, v in file_props.items() if k in wanted_file})
    if "contentBytes" in wanted_file and not is_item:
        chosen["contentBytes"] = base64.b64encode(spec.content()).decode()
    return chosen


def body_resource(content: ContentSpec, wanted: str) -> dict[str, str]:
    """Graph converts between text and HTML when the Prefer header asks for the other."""
    if wanted == "text":
        if content.text is not None:
            return {"contentType": "text", "content": content.text}
        stripped = re.sub(r"<[^>]+>", " ", content.html or "")
        return {"contentType": "text", "content": html.unescape(stripped).strip()}
    if content.html is not None:
        return {"contentType": "html", "content": content.html}
    return {
        "contentType": "html",
        "content": "<html><body><div>" + html.escape(content.text or "") + "</div></body></html>",
    }


def value_response(spec: AttachmentSpec) -> StreamingResponse:
    media = spec.content_type if spec.kind == "file" else "message/rfc822"
    return StreamingResponse(
        spec.chunks(), media_type=media, headers={"Content-Length": str(spec.size)}
    )
