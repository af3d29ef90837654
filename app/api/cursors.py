"""Opaque keyset cursors: a position in the newest-first order, base64url JSON."""

from __future__ import annotations

import base64
import binascii
import json
from datetime import datetime

from app.api.errors import ApiError
from app.db.repositories.reading import Key


def encode_cursor(key: Key) -> str:
    raw = json.dumps({"r": key.received_at.isoformat() if key.received_at else None, "i": key.id})
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> Key:
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        data = json.loads(base64.urlsafe_b64decode(padded.encode()).decode())
        received = data["r"]
        key = Key(
            received_at=datetime.fromisoformat(received) if received is not None else None,
            id=int(data["i"]),
        )
    except (ValueError, KeyError, TypeError, binascii.Error, UnicodeDecodeError) as exc:
        raise ApiError(400, "invalid_cursor", "cursor is not one this API returned") from exc
    if key.received_at is not None and key.received_at.tzinfo is None:
        raise ApiError(400, "invalid_cursor", "cursor is not one this API returned")
    if not -(2**63) <= key.id < 2**63:
        raise ApiError(400, "invalid_cursor", "cursor is not one this API returned")
    return key
