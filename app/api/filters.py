"""The search and filter parameters shared by /mail/messages and /mail/threads."""

from __future__ import annotations

from datetime import UTC, date, datetime, time
from typing import Annotated

from fastapi import Depends, Query

from app.api.errors import ApiError
from app.db.repositories.reading import MessageFilter

MAX_LABELS = 20
MAX_WORDS = 8


def _moment(name: str, value: str | None) -> datetime | None:
    """An RFC 3339 time, or a date (its midnight UTC)."""
    if value is None:
        return None
    raw = value.strip()
    try:
        if len(raw) == 10:
            return datetime.combine(date.fromisoformat(raw), time(), UTC)
        parsed = datetime.fromisoformat(raw.replace("z", "Z").replace("Z", "+00:00"))
    except ValueError as exc:
        raise ApiError(
            422, "invalid_request", f"{name}: expected an RFC 3339 time or a date (YYYY-MM-DD)"
        ) from exc
    if parsed.tzinfo is None:
        raise ApiError(422, "invalid_request", f"{name}: the time needs an offset (Z or +hh:mm)")
    return parsed


def _address(name: str, value: str | None) -> str | None:
    if value is None:
        return None
    address = value.strip().lower()
    if not address or any(c.isspace() for c in address):
        raise ApiError(422, "invalid_request", f"{name}: expected an email address")
    return address


def message_filter(
    label: Annotated[
        list[str] | None, Query(description="Repeatable; every label must match.")
    ] = None,
    from_: Annotated[
        str | None, Query(alias="from", max_length=320, description="Sender address.")
    ] = None,
    to: Annotated[
        str | None, Query(max_length=320, description="Any recipient (to, cc or bcc).")
    ] = None,
    participant: Annotated[
        str | None, Query(max_length=320, description="Sender or any recipient.")
    ] = None,
    after: Annotated[
        str | None, Query(max_length=64, description="Received at or after (RFC 3339 or date).")
    ] = None,
    before: Annotated[
        str | None, Query(max_length=64, description="Received before (RFC 3339 or date).")
    ] = None,
    unread: bool | None = None,
    has_attachments: bool | None = None,
    q: Annotated[
        str | None,
        Query(max_length=200, description="Words to find in the subject, snippet and names."),
    ] = None,
) -> MessageFilter:
    labels = tuple(label or ())
    if len(labels) > MAX_LABELS or any(not 0 < len(item) <= 200 for item in labels):
        raise ApiError(422, "invalid_request", f"label: 1 to {MAX_LABELS} labels of 1-200 chars")
    words = tuple(q.split()) if q else ()
    if len(words) > MAX_WORDS:
        raise ApiError(422, "invalid_request", f"q: at most {MAX_WORDS} words")
    start, end = _moment("after", after), _moment("before", before)
    if start is not None and end is not None and start >= end:
        raise ApiError(422, "invalid_request", "after must be earlier than before")
    return MessageFilter(
        labels=labels,
        from_=_address("from", from_),
        to=_address("to", to),
        participant=_address("participant", participant),
        after=start,
        before=end,
        unread=unread,
        has_attachments=has_attachments,
        words=words,
    )


FilterDep = Annotated[MessageFilter, Depends(message_filter)]
