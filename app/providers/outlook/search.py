"""Messages a given address took part in, found by Graph's `$search` (KQL).

- `GET …/messages?$search="participants:a@x.com AND received>=… AND received<…"`: the
  participants property covers from, to, cc and bcc. Graph returns at most 1,000 results for
  one `$search`, sorted by the date the message was *sent*, newest first, and refuses
  `$search` together with `$orderby`, `$filter`, `$skip` or `$count`; paging follows the
  nextLink. A window whose results reach the cap is split by the caller
  (app/sync/cases/plan.py), which is why every result's receivedDateTime is reported.
- Window bounds are sent one second wider on both sides: whether `received` compares
  inclusively, and at which precision, is not documented; a message read twice is written
  once (the store is keyed by message id), a message never read would be lost.
- Ids are immutable ids, as the delta streams ask for, so a message found here and later
  seen by its folder's delta is one row. Results carry parentFolderId; those in folders the
  caller did not name (not synced) are counted but left out.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

from app.providers.base import (
    Cursor,
    CursorInvalidError,
    SearchPage,
    SearchWindow,
    StreamInfo,
    SyncContext,
    TransientError,
)
from app.providers.outlook.client import GraphClient
from app.providers.outlook.errors import GraphRequestError
from app.providers.outlook.mapper import MESSAGE_SELECT, MalformedPage, decode_messages

# "A $search request returns up to 1,000 results" (Graph, "Use the $search query parameter").
SEARCH_CAP = 1000
SEARCH_PAGE_SIZE = 1000
_MARGIN = timedelta(seconds=1)
_PREFER = 'IdType="ImmutableId"'


def kql_instant(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def participant_query(address: str, window: SearchWindow) -> str:
    """The `$search` value: KQL in double quotes."""
    terms = [f"participants:{address}"]
    if window.start is not None:
        terms.append(f"received>={kql_instant(window.start - _MARGIN)}")
    if window.end is not None:
        terms.append(f"received<{kql_instant(window.end + _MARGIN)}")
    return '"' + " AND ".join(terms) + '"'


async def search_page(
    graph: GraphClient,
    ctx: SyncContext,
    base: str,
    streams: Sequence[StreamInfo],
    address: str,
    window: SearchWindow,
    cursor: Cursor | None,
) -> SearchPage:
    if cursor:
        link = cursor.get("next_link")
        if not isinstance(link, str) or not graph.is_graph_url(link):
            raise CursorInvalidError("stored Graph search link does not point at GRAPH_BASE_URL")
        params = None
    else:
        link = f"{base}/messages"
        params = {
            "$search": participant_query(address, window),
            "$top": str(SEARCH_PAGE_SIZE),
            "$select": f"{MESSAGE_SELECT},parentFolderId",
        }
    try:
        response = await graph.request(ctx, "GET", link, params=params, headers={"Prefer": _PREFER})
    except GraphRequestError as exc:
        if cursor and exc.status == 400:
            # A skip token Graph no longer takes: the window is searched again.
            raise CursorInvalidError(f"Graph refused the search page link: {exc}") from exc
        raise
    try:
        decoded = decode_messages(response.content)
    except MalformedPage as exc:
        raise TransientError(f"Graph returned a search page that is {exc}") from exc
    page = SearchPage(results=len(decoded.messages))
    labels = {stream.key: stream.labels for stream in streams}
    for folder, folder_page in decoded.by_folder().items():
        batch, _ = folder_page.read(labels.get(folder or "", ()))
        page.received.extend(moment for moment in batch.received_at if moment is not None)
        if folder in labels and batch:
            page.upserts[folder] = batch
    if isinstance(decoded.next_link, str):
        page.cursor = {"next_link": decoded.next_link}
    return page
