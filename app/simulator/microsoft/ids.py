"""Graph-shaped identifiers that decode back to the simulator's integer keys.

Exchange ids are long opaque base64 strings. Ours carry the mailbox tag, the message key
and (for REST ids) the move generation, so a million-message mailbox needs no id index:
a REST id minted before a move no longer matches the message's generation and is
answered 404, as Exchange does, while the ImmutableId form never changes.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import struct
import uuid
from functools import lru_cache

# Prefixes seen on real Exchange ids; they make ids look familiar in logs and nothing else.
REST_PREFIX = "AAMkAG"
IMMUTABLE_PREFIX = "AAkALg"
FOLDER_PREFIX = "AQMkAD"
CONVERSATION_PREFIX = "AAQkAG"

_KIND_MESSAGE = 1
_KIND_FOLDER = 2
_KIND_CONVERSATION = 3
# Filler so ids have the length and look of Exchange ids (which run to 150+ characters).
_FILLER = b"\x00\x46\x00\x00\x00\x00\x00\x1d\x84\x03\x11\xaa\x66\x11\xcd"


def mailbox_tag(user_id: str) -> bytes:
    return hashlib.blake2b(user_id.encode(), digest_size=6).digest()


def user_guid(email: str) -> str:
    """A stable directory object id for a user, derived from the address."""
    return str(uuid.UUID(bytes=hashlib.blake2b(email.lower().encode(), digest_size=16).digest()))


_URLSAFE = bytes.maketrans(b"+/", b"-_")
_KIND_INDEX = struct.Struct(">BI")
_KIND_INDEX_GENERATION = struct.Struct(">BIH")


def _b64(raw: bytes) -> str:
    return binascii.b2a_base64(raw, newline=False).translate(_URLSAFE).decode()


def _encode(prefix: str, payload: bytes) -> str:
    return prefix + _b64(payload)


@lru_cache(maxsize=256)
def _head(prefix: str, tag: bytes) -> str:
    # The 6-byte tag is a whole number of base64 groups, so its encoding is a fixed prefix
    # of every id in the mailbox: ids (two a message on a delta page) encode only the rest.
    return prefix + _b64(tag)


def _decode(prefix: str, value: str) -> bytes | None:
    if not value.startswith(prefix):
        return None
    try:
        return base64.urlsafe_b64decode(value[len(prefix) :])
    except (binascii.Error, ValueError):
        return None


def message_id(tag: bytes, key: int, generation: int, *, immutable: bool) -> str:
    if immutable:
        return _head(IMMUTABLE_PREFIX, tag) + _b64(_KIND_INDEX.pack(_KIND_MESSAGE, key) + _FILLER)
    body = _KIND_INDEX_GENERATION.pack(_KIND_MESSAGE, key, generation) + _FILLER
    return _head(REST_PREFIX, tag) + _b64(body)


def parse_message_id(tag: bytes, value: str) -> tuple[int, int | None] | None:
    """(key, generation) for a REST id, (key, None) for an immutable id; None if not ours."""
    raw = _decode(IMMUTABLE_PREFIX, value)
    if raw is not None and len(raw) == 6 + 5 + len(_FILLER) and raw[:6] == tag:
        kind, key = struct.unpack(">BI", raw[6:11])
        return (key, None) if kind == _KIND_MESSAGE else None
    raw = _decode(REST_PREFIX, value)
    if raw is not None and len(raw) == 6 + 7 + len(_FILLER) and raw[:6] == tag:
        kind, key, generation = struct.unpack(">BIH", raw[6:13])
        return (key, generation) if kind == _KIND_MESSAGE else None
    return None


def folder_id(tag: bytes, index: int) -> str:
    return _encode(FOLDER_PREFIX, tag + struct.pack(">BH", _KIND_FOLDER, index) + _FILLER[:9])


def parse_folder_id(tag: bytes, value: str) -> int | None:
    raw = _decode(FOLDER_PREFIX, value)
    if raw is None or len(raw) != 6 + 3 + 9 or raw[:6] != tag:
        return None
    kind, index = struct.unpack(">BH", raw[6:9])
    return index if kind == _KIND_FOLDER else None


def conversation_id(tag: bytes, thread_index: int) -> str:
    return _head(CONVERSATION_PREFIX, tag) + _b64(
        _KIND_INDEX.pack(_KIND_CONVERSATION, thread_index)
    )


def message_id_pieces(tag: bytes, *, immutable: bool) -> tuple[str, str]:
    """(head, tail) of every message id in the mailbox; only the middle varies by message.

    The key (and generation) sit in whole base64 groups after the tag, so an id is
    head + _b64(id_middle) + tail; renderers of whole pages encode only the middle.
    """
    if immutable:
        return _head(IMMUTABLE_PREFIX, tag), _b64(_KIND_INDEX.pack(_KIND_MESSAGE, 0) + _FILLER)[8:]
    middle = _KIND_INDEX_GENERATION.pack(_KIND_MESSAGE, 0, 0) + _FILLER
    return _head(REST_PREFIX, tag), _b64(middle)[12:]


def immutable_middle(key: int) -> bytes:
    return _KIND_INDEX.pack(_KIND_MESSAGE, key) + _FILLER[:1]


def rest_middle(key: int, generation: int) -> bytes:
    return _KIND_INDEX_GENERATION.pack(_KIND_MESSAGE, key, generation) + _FILLER[:2]


conversation_pack = _KIND_INDEX.pack


def conversation_head(tag: bytes) -> str:
    return _head(CONVERSATION_PREFIX, tag)
