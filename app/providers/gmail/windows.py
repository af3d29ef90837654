"""The mailbox's messages by received-time windows (`q=after:… before:…`), for
partitioned backfills.

Gmail's search takes epoch seconds, and does not say whether `after:` includes its
second: each window asks from one second earlier, so windows overlap by a second and no
message falls between two (a message listed twice is written once). messages.list
answers newest first, so a window cannot say how far it has come in time and is never
split; under Gmail's per-user quota the windows exist to spread the work over workers,
not to open more request slots.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime, timedelta

from app.providers.base import (
    Cursor,
    CursorInvalidError,
    MessageBatch,
    PermanentError,
    SearchWindow,
    SyncContext,
    WindowPage,
)
from app.providers.gmail.client import GmailClient

PAGE_SIZE = 500
# Gmail opened in 2004, but imported mail keeps older dates: search from the epoch.
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_RANGE_STEPS = 16

Fetch = Callable[[SyncContext, Sequence[str]], Awaitable[MessageBatch]]


def _query(window: SearchWindow) -> str | None:
    terms = []
    if window.start is not None:
        terms.append(f"after:{int(window.start.timestamp()) - 1}")
    if window.end is not None:
        terms.append(f"before:{int(window.end.timestamp()) + 1}")
    return " ".join(terms) or None


async def _any_before(client: GmailClient, ctx: SyncContext, moment: datetime) -> bool:
    listing = await client.list_messages(
        ctx, page_token=None, max_results=1, q=f"before:{int(moment.timestamp())}"
    )
    return bool(listing.get("messages"))


async def received_range(
    client: GmailClient, ctx: SyncContext, fetch: Fetch
) -> tuple[datetime, datetime] | None:
    """The newest message's date from the first listed, the oldest to within a day or so
    by bisecting `before:` (a listing of one id per step, five quota units)."""
    listing = await client.list_messages(ctx, page_token=None, max_results=1)
    first = [str(m["id"]) for m in listing.get("messages") or ()]
    if not first:
        return None
    newest_batch = await fetch(ctx, first)
    newest = next((r for r in newest_batch.received_at if r is not None), None)
    if newest is None:
        return None
    low, high = _EPOCH, newest + timedelta(seconds=1)
    for _ in range(_RANGE_STEPS):
        if high - low <= timedelta(days=1):
            break
        middle = low + (high - low) / 2
        if await _any_before(client, ctx, middle):
            high = middle
        else:
            low = middle
    return low, newest


async def list_window(
    client: GmailClient,
    ctx: SyncContext,
    fetch: Fetch,
    window: SearchWindow,
    cursor: Cursor | None,
) -> WindowPage:
    token = cursor.get("page_token") if cursor else None
    if token is not None and not isinstance(token, str):
        raise CursorInvalidError("unreadable Gmail window page token")
    try:
        listing = await client.list_messages(
            ctx, page_token=token, max_results=PAGE_SIZE, q=_query(window)
        )
    except PermanentError as exc:
        if token:
            raise CursorInvalidError(f"Gmail refused the window's page token: {exc}") from exc
        raise
    ids = [str(m["id"]) for m in listing.get("messages") or ()]
    upserts = await fetch(ctx, ids)
    next_token = listing.get("nextPageToken")
    return WindowPage(upserts=upserts, cursor={"page_token": next_token} if next_token else None)
