"""Google's batch format: many Gmail GETs in one multipart/mixed POST to /batch/gmail/v1.

Each part is `Content-Type: application/http` holding one HTTP request; the answer holds
one `application/http` part per request, carrying a full HTTP response whose Content-ID
is `response-` + the request's. Parts are matched back by Content-ID, never by position.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass

from app.providers.base import PermanentError


@dataclass(frozen=True, slots=True)
class PartResponse:
    status: int
    headers: dict[str, str]
    body: bytes


def encode_batch(paths: Sequence[str]) -> tuple[str, bytes]:
    """(Content-Type, body) for GETs of `paths` (path + query); part n has Content-ID <n>."""
    boundary = "batch_" + secrets.token_hex(12)
    chunks = [
        f"--{boundary}\r\nContent-Type: application/http\r\nContent-ID: <{n}>\r\n\r\n"
        f"GET {path}\r\n\r\n"
        for n, path in enumerate(paths)
    ]
    chunks.append(f"--{boundary}--\r\n")
    return f"multipart/mixed; boundary={boundary}", "".join(chunks).encode()


def _boundary(content_type: str) -> str:
    for param in content_type.split(";")[1:]:
        key, _, value = param.strip().partition("=")
        if key.lower() == "boundary" and value:
            return value.strip('"')
    raise PermanentError(f"Gmail batch answer without a boundary: {content_type!r}")


def _split(block: bytes) -> tuple[list[str], bytes]:
    for separator in (b"\r\n\r\n", b"\n\n"):
        head, found, rest = block.partition(separator)
        if found:
            return head.decode("latin-1").splitlines(), rest
    return block.decode("latin-1").splitlines(), b""


def _headers(lines: Sequence[str]) -> dict[str, str]:
    headers: dict[str, str] = {}
    for line in lines:
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    return headers


def decode_batch(content_type: str, body: bytes) -> dict[int, PartResponse]:
    """Part responses keyed by the index their request had in `encode_batch`."""
    delimiter = b"--" + _boundary(content_type).encode()
    responses: dict[int, PartResponse] = {}
    for chunk in body.split(delimiter)[1:]:
        if chunk.startswith(b"--"):
            break
        part_lines, http = _split(chunk.lstrip(b"\r\n"))
        content_id = _headers(part_lines).get("content-id", "")
        # "<response-7>" -> 7
        key = content_id.strip("<>").removeprefix("response-")
        status_lines, payload = _split(http.lstrip(b"\r\n"))
        if not key.isdigit() or not status_lines:
            raise PermanentError(f"unreadable part in a Gmail batch answer: {content_id!r}")
        status_line = status_lines[0].split()
        if len(status_line) < 2 or not status_line[1].isdigit():
            raise PermanentError(
                f"unreadable status line in a Gmail batch answer: {status_lines[0]!r}"
            )
        headers = _headers(status_lines[1:])
        length = headers.get("content-length")
        content = payload[: int(length)] if length and length.isdigit() else payload.rstrip(b"\r\n")
        responses[int(key)] = PartResponse(int(status_line[1]), headers, content)
    return responses
