"""A folder's messages by receivedDateTime windows, for partitioned backfills.

Pages are read oldest first (`$orderby=receivedDateTime`), and the checkpoint is a
position in time rather than Graph's nextLink: a nextLink pages with `$skip`, so a message
deleted before the current offset shifts every later one down and one live message is
never listed. Starting each page at the last received time seen (`ge`, with the ids seen
at that instant left out) survives deletions. Only a page whose every message shares one
received time falls back to the nextLink (a time cursor could not move past them).

Graph refuses `$orderby` with a `$filter` that does not start with the same property
(400 InefficientFilter), so every request filters on receivedDateTime first, an open
window included.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

import orjson

from app.providers.base import (
    Cursor,
    CursorInvalidError,
    SearchWindow,
    StreamInfo,
    SyncContext,
    TransientError,
    WindowPage,
)
from app.providers.outlook.client import GraphClient
from app.providers.outlook.mapper import MESSAGE_SELECT, MalformedPage, decode_messages

PAGE_SIZE = 1000
_IMMUTABLE = 'IdType="ImmutableId"'
# Before any mail: an open window's filter still names receivedDateTime first.
_BEGINNING = datetime(1900, 1, 1, tzinfo=UTC)


def graph_time(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _filter(start: datetime, end: datetime | None) -> str:
    clauses = [f"receivedDateTime ge {graph_time(start)}"]
    if end is not None:
        clauses.append(f"receivedDateTime lt {graph_time(end)}")
    return " and ".join(clauses)


async def backfill_cursor(
    graph: GraphClient, ctx: SyncContext, base: str, stream: StreamInfo
) -> Cursor:
    """`messages/delta?$deltatoken=latest`: no items, a deltaLink from now on."""
    response = await graph.request(
        ctx,
        "GET",
        f"{base}/mailFolders/{stream.key}/messages/delta",
        params={"$deltatoken": "latest", "$select": MESSAGE_SELECT},
        headers={"Prefer": _IMMUTABLE},
    )
    body = orjson.loads(response.content)
    link = body.get("@odata.deltaLink") if isinstance(body, dict) else None
    if not isinstance(link, str):
        raise TransientError("Graph gave no deltaLink for $deltatoken=latest")
    return {"delta_link": link}


async def received_range(
    graph: GraphClient, ctx: SyncContext, base: str, stream: StreamInfo
) -> tuple[datetime, datetime] | None:
    async def edge(order: str) -> datetime | None:
        response = await graph.request(
            ctx,
            "GET",
            f"{base}/mailFolders/{stream.key}/messages",
            params={"$top": "1", "$orderby": f"receivedDateTime {order}",
                    "$select": "receivedDateTime"},
            headers={"Prefer": _IMMUTABLE},
        )  # fmt: skip
        items = orjson.loads(response.content).get("value") or []
        raw = items[0].get("receivedDateTime") if items else None
        return datetime.fromisoformat(raw.replace("Z", "+00:00")) if raw else None

    edges = await asyncio.gather(edge("asc"), edge("desc"), return_exceptions=True)
    for outcome in edges:
        if isinstance(outcome, BaseException):
            raise outcome
    oldest, newest = edges
    if not isinstance(oldest, datetime) or not isinstance(newest, datetime):
        return None
    return oldest, newest


async def list_window(
    graph: GraphClient,
    ctx: SyncContext,
    base: str,
    stream: StreamInfo,
    window: SearchWindow,
    cursor: Cursor | None,
) -> WindowPage:
    start = window.start or _BEGINNING
    seen: set[str] = set()
    link: str | None = None
    params: dict[str, str] | None = None
    if cursor and isinstance(cursor.get("next_link"), str):
        link = cursor["next_link"]
        if not graph.is_graph_url(link):
            raise CursorInvalidError("stored Graph link does not point at GRAPH_BASE_URL")
    else:
        if cursor and isinstance(cursor.get("from"), str):
            start = max(start, datetime.fromisoformat(cursor["from"]))
            seen = {str(i) for i in cursor.get("seen") or ()}
        link = f"{base}/mailFolders/{stream.key}/messages"
        params = {
            "$filter": _filter(start, window.end),
            "$orderby": "receivedDateTime",
            "$top": str(PAGE_SIZE),
            "$select": MESSAGE_SELECT,
        }
    response = await graph.request(ctx, "GET", link, params=params, headers={"Prefer": _IMMUTABLE})
    try:
        decoded = decode_messages(response.content)
    except MalformedPage as exc:
        raise TransientError(f"Graph returned a message listing that is {exc}") from exc
    upserts, _ = decoded.read(stream.labels)
    if seen:
        # The page starts at the checkpoint's instant: those of it already written (a few
        # rows of a thousand, usually one) go; the page itself is not copied.
        upserts.remove(i for i, mid in enumerate(upserts.provider_message_id) if mid in seen)
    next_link = decoded.next_link if isinstance(decoded.next_link, str) else None
    if next_link is None:
        return WindowPage(upserts=upserts, cursor=None)
    received = [r for r in upserts.received_at if r is not None]
    last = max(received) if received else None
    if last is None or last <= start:
        # Every message of the page at one instant: only Graph's own link moves past them.
        return WindowPage(upserts=upserts, cursor={"next_link": next_link})
    at_last = [
        mid
        for mid, r in zip(upserts.provider_message_id, upserts.received_at, strict=True)
        if r == last
    ]
    next_cursor: dict[str, Any] = {"from": last.isoformat(), "seen": at_last}
    return WindowPage(upserts=upserts, cursor=next_cursor, listed_before=last)
