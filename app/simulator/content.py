"""Bodies and attachments of simulated messages, derived from (seed, key) like the rest.

Both providers render the same content their own way: Graph as `body` JSON and
attachment resources, Gmail as a MIME tree. The shapes are the ones real mail has:
alternative text+HTML, a `multipart/mixed` that holds nothing but the text, `related`
with an inline image the HTML shows through `cid:`, files beside the text, a forwarded
message (message/rfc822), and text parts in several charsets. Attachment bytes are
produced chunk by chunk, so a 50 MB file costs the simulator no more than a chunk.
"""

from __future__ import annotations

import hashlib
import html
from collections.abc import Iterator
from dataclasses import dataclass, field

from app.simulator.corpus import GeneratedMessage

CHUNK = 64 * 1024
MAX_ATTACHMENT_BYTES = 60 * 1024 * 1024
_CHARSETS = ("utf-8", "iso-8859-1", "windows-1252", "utf-8")
_ENCODINGS = ("base64", "quoted-printable", "quoted-printable", "8bit")
_FILES = (
    ("Q3 report.pdf", "application/pdf"),
    ("notes.docx", "application/vnd.openxmlformats-officedocument.wordprocessingml.document"),
    ("budget.xlsx", "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"),
    ("photo.jpg", "image/jpeg"),
)
SIGN_OFF = "Grüße aus Köln, café à 10 h."


@dataclass(frozen=True, slots=True)
class AttachmentSpec:
    index: int
    name: str
    content_type: str
    size: int
    inline: bool = False
    content_id: str | None = None
    seed: int = 0
    # "file", or "message": a forwarded message (message/rfc822)
    kind: str = "file"

    def chunks(self) -> Iterator[bytes]:
        """The file's bytes, deterministic from its seed, CHUNK at a time."""
        block = hashlib.blake2b(b"%d:%d" % (self.seed, self.index), digest_size=64).digest()
        unit = (block * (CHUNK // len(block)))[:CHUNK]
        left = self.size
        n = 0
        while left > 0:
            piece = unit if n % 2 == 0 else unit[::-1]
            take = min(left, CHUNK)
            yield piece[:take]
            left -= take
            n += 1

    def content(self) -> bytes:
        return b"".join(self.chunks())


@dataclass(frozen=True, slots=True)
class ContentSpec:
    text: str | None
    html: str | None
    attachments: tuple[AttachmentSpec, ...] = ()
    charset: str = "utf-8"
    transfer_encoding: str = "quoted-printable"
    # alternative | mixed-plain | related | mixed | forward | text-only | custom
    shape: str = "alternative"
    headers: dict[str, str] = field(default_factory=dict)

    @property
    def has_files(self) -> bool:
        return any(not a.inline for a in self.attachments)


def seeded_content(seed: int, key: int, message: GeneratedMessage) -> ContentSpec:
    d = hashlib.blake2b(b"%d:%d:content" % (seed, key), digest_size=16).digest()
    text = f"{message.snippet}\r\n\r\n{SIGN_OFF}\r\n-- \r\n{message.from_name}\r\n"
    body_html = (
        f'<div dir="ltr"><p>{html.escape(message.snippet)}</p><p>{html.escape(SIGN_OFF)}</p>'
    )
    charset, encoding = _CHARSETS[d[1] % 4], _ENCODINGS[d[1] % 4]
    attachments: list[AttachmentSpec] = []
    if message.has_attachments:
        if d[0] % 3 == 0:
            shape = "forward"
            attachments.append(
                AttachmentSpec(
                    0,
                    f"Fwd: {message.subject}.eml",
                    "message/rfc822",
                    1800 + d[2] * 7,
                    seed=seed ^ key,
                    kind="message",
                )
            )
        else:
            shape = "mixed"
            for i in range(1 + d[3] % 2):
                name, content_type = _FILES[(d[4] + i) % len(_FILES)]
                size = 2_000 + ((d[5] << 8 | d[6]) * (i + 1)) % 300_000
                attachments.append(AttachmentSpec(i, name, content_type, size, seed=seed ^ key))
    else:
        shape = ("alternative", "mixed-plain", "related", "text-only")[d[0] % 4]
        if shape == "related":
            cid = f"logo-{key}@sim.example"
            body_html += f'<img src="cid:{cid}" alt="logo" width="64" height="64">'
            attachments.append(
                AttachmentSpec(
                    0,
                    "logo.png",
                    "image/png",
                    1_500 + d[7] * 11,
                    inline=True,
                    content_id=cid,
                    seed=seed ^ key,
                )
            )
    body_html += "</div>"
    return ContentSpec(
        text=text,
        html=None if shape == "text-only" else body_html,
        attachments=tuple(attachments),
        charset=charset,
        transfer_encoding=encoding,
        shape=shape,
    )


def custom_content(
    seed: int,
    *,
    text: str | None,
    body_html: str | None,
    attachments: list[dict[str, object]],
) -> ContentSpec:
    """Content given through the control API (tests: hostile HTML, odd file names, 50 MB)."""
    specs = []
    for i, spec in enumerate(attachments):
        size = int(spec.get("size", 1000))  # type: ignore[call-overload]
        if not 0 <= size <= MAX_ATTACHMENT_BYTES:
            raise ValueError(f"attachment size must be 0..{MAX_ATTACHMENT_BYTES}")
        specs.append(
            AttachmentSpec(
                index=i,
                name=str(spec.get("name", f"file{i}.bin")),
                content_type=str(spec.get("content_type", "application/octet-stream")),
                size=size,
                inline=bool(spec.get("inline", False)),
                content_id=str(spec["content_id"]) if spec.get("content_id") else None,
                seed=seed + i,
                kind="message" if spec.get("content_type") == "message/rfc822" else "file",
            )
        )
    if text is None and body_html is None:
        text = ""
    return ContentSpec(
        text=text,
        html=body_html,
        attachments=tuple(specs),
        charset="utf-8",
        transfer_encoding="quoted-printable",
        shape="custom",
    )
