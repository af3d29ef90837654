"""The Gmail stream's cursor: a two-phase state machine stored as JSON.

    full     {"phase": "full", "history_id": "<id before the listing>", "page_token": ...}
    history  {"phase": "history", "history_id": "<last id applied>", "page_token"?: ...}

History ids are unsigned 64-bit integers; they are stored as decimal strings (JSON
numbers lose precision past 2**53 in many readers) and always compared as integers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from app.providers.base import Cursor, CursorInvalidError

Phase = Literal["full", "history"]


@dataclass(frozen=True, slots=True)
class GmailCursor:
    phase: Phase
    history_id: int
    page_token: str | None = None

    def dump(self) -> Cursor:
        cursor: Cursor = {"phase": self.phase, "history_id": str(self.history_id)}
        if self.page_token:
            cursor["page_token"] = self.page_token
        return cursor

    @classmethod
    def load(cls, cursor: Cursor) -> GmailCursor:
        """Parse a stored cursor; one we cannot read is as good as dead (full resync)."""
        phase = cursor.get("phase")
        raw = cursor.get("history_id")
        token = cursor.get("page_token")
        if phase not in ("full", "history"):
            raise CursorInvalidError(f"unreadable Gmail cursor phase {phase!r}")
        if isinstance(raw, bool) or not isinstance(raw, int | str) or not str(raw).isdigit():
            raise CursorInvalidError(f"unreadable Gmail cursor history_id {raw!r}")
        if token is not None and not isinstance(token, str):
            raise CursorInvalidError("unreadable Gmail cursor page_token")
        return cls(phase, int(raw), token or None)
