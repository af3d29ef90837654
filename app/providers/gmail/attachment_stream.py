"""attachments.get answers `{"size": n, "data": "<base64url>"}` with the whole file in one
JSON string. Parsing that would hold the file three times over (body, string, bytes); this
decoder reads the response as it arrives and hands out the decoded bytes chunk by chunk,
so memory stays at a chunk or two whatever the file's size.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import AsyncIterator

from app.providers.base import TransientError

_KEY, _COLON, _VALUE, _STRING, _SCALAR, _DATA, _DONE = range(7)
_WHITESPACE = b" \t\r\n"


class DataFieldDecoder:
    """Feed it the JSON body in pieces; it returns the decoded bytes of the `data` field."""

    def __init__(self) -> None:
        self._state = _KEY
        self._key = bytearray()
        self._in_key = False
        self._escaped = False
        self._pending = b""  # base64url characters not yet a multiple of four
        self.found = False

    def feed(self, chunk: bytes) -> bytes:
        out: list[bytes] = []
        i, n = 0, len(chunk)
        while i < n:
            state = self._state
            if state == _DATA:
                end = chunk.find(b'"', i)
                piece = chunk[i:] if end < 0 else chunk[i:end]
                out.append(self._decode(piece))
                if end < 0:
                    break
                i = end + 1
                self._state = _DONE
                continue
            byte = chunk[i]
            i += 1
            if state == _KEY:
                if self._in_key:
                    if self._escaped:
                        self._escaped = False
                        self._key.append(byte)
                    elif byte == 0x5C:  # backslash
                        self._escaped = True
                    elif byte == 0x22:  # closing quote
                        self._in_key = False
                        self._state = _COLON
                    else:
                        self._key.append(byte)
                elif byte == 0x22:
                    self._in_key = True
                    self._key.clear()
            elif state == _COLON:
                if byte == 0x3A:
                    self._state = _VALUE
            elif state == _VALUE:
                if byte in _WHITESPACE:
                    continue
                if byte == 0x22:
                    if bytes(self._key) == b"data":
                        self._state = _DATA
                        self.found = True
                    else:
                        self._state = _STRING
                else:
                    self._state = _SCALAR
            elif state == _STRING:
                if self._escaped:
                    self._escaped = False
                elif byte == 0x5C:
                    self._escaped = True
                elif byte == 0x22:
                    self._state = _KEY
            elif state == _SCALAR and byte in (0x2C, 0x7D):  # , }
                self._state = _KEY
        return b"".join(out)

    def _decode(self, piece: bytes) -> bytes:
        if b"\\" in piece:
            piece = piece.replace(b"\\", b"")  # JSON may escape "/" (never in base64url)
        text = self._pending + piece
        usable = len(text) - len(text) % 4
        self._pending = text[usable:]
        if not usable:
            return b""
        try:
            return base64.urlsafe_b64decode(text[:usable])
        except (binascii.Error, ValueError) as exc:
            raise TransientError("Gmail sent an attachment that is not base64url") from exc

    def finish(self) -> bytes:
        if not self.found:
            raise TransientError("Gmail's attachment answer had no data")
        rest, self._pending = self._pending, b""
        if not rest:
            return b""
        try:
            return base64.urlsafe_b64decode(rest + b"=" * (-len(rest) % 4))
        except (binascii.Error, ValueError) as exc:
            raise TransientError("Gmail sent an attachment that is not base64url") from exc


async def decoded_chunks(raw: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    decoder = DataFieldDecoder()
    async for chunk in raw:
        decoded = decoder.feed(chunk)
        if decoded:
            yield decoded
    tail = decoder.finish()
    if tail:
        yield tail
