"""Messages a given address took part in, found by `messages.list?q=`.

- `q=(from:a OR to:a OR cc:a OR bcc:a) after:S before:E`, with includeSpamTrash as the full
  sync lists (the copy holds Spam and Trash with their labels), 500 ids a page, then one
  batch of metadata gets per page, as the full sync fetches them: 5 quota units a listing
  and 5 a message, which the mailbox's quota gate spends for every worker alike.
- Gmail has no result cap on a listing: a window is one chain of pages, checkpointed by its
  page token. `after:`/`before:` take epoch seconds (dates would be read as midnight Pacific
  time); Gmail documents neither whether they include their instant nor which timestamp
  they compare, so each bound is one second wider (a message read twice is written once).
- A page token Gmail no longer takes is a CursorInvalidError: the window starts again.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Sequence

from app.providers.base import (
    Cursor,
    CursorInvalidError,
    MessageBatch,
    PermanentError,
    SearchPage,
    SearchWindow,
    SyncContext,
)
from app.providers.gmail.client import GmailClient

SEARCH_PAGE_SIZE = 500


def participant_query(address: str, window: SearchWindow) -> str:
    terms = [f"(from:{address} OR to:{address} OR cc:{address} OR bcc:{address})"]
    if window.start is not None:
        terms.append(f"after:{math.floor(window.start.timestamp()) - 1}")
    if window.end is not None:
        terms.append(f"before:{math.ceil(window.end.timestamp()) + 1}")
    return " ".join(terms)


async def search_page(
    client: GmailClient,
    fetch: Callable[[SyncContext, Sequence[str]], Awaitable[MessageBatch]],
    ctx: SyncContext,
    stream_key: str,
    address: str,
    window: SearchWindow,
    cursor: Cursor | None,
) -> SearchPage:
    token = cursor.get("page_token") if cursor else None
    if cursor and not isinstance(token, str):
        raise CursorInvalidError("unrecognized Gmail search cursor")
    try:
        listing = await client.list_messages(
            ctx,
            page_token=token,
            max_results=SEARCH_PAGE_SIZE,
            q=participant_query(address, window),
        )
    except PermanentError as exc:
        if token:
            raise CursorInvalidError(f"Gmail refused the search page token: {exc}") from exc
        raise
    ids = [m["id"] for m in listing.get("messages") or ()]
    batch = await fetch(ctx, ids)
    page = SearchPage(
        results=len(ids),
        received=[moment for moment in batch.received_at if moment is not None],
        estimate=listing.get("resultSizeEstimate"),
    )
    if batch:
        page.upserts[stream_key] = batch
    next_token = listing.get("nextPageToken")
    if next_token:
        page.cursor = {"page_token": next_token}
    return page
