"""Microsoft 365 / Outlook through Graph: one delta-cursored stream per mail folder.

A cursor is `{"next_link": url, "initial": bool}` inside a round and `{"delta_link": url}`
between rounds. `initial` marks a round that began from an empty cursor, so the page with
its deltaLink can tell the engine the folder was enumerated completely.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any
from urllib.parse import quote

import httpx
import orjson

from app.config import Settings
from app.providers.base import (
    Account,
    AttachmentContent,
    AttachmentInfo,
    BodyFormat,
    Cursor,
    CursorInvalidError,
    MessageBatch,
    MessageBody,
    MessageGone,
    Page,
    PermanentError,
    ProviderCounts,
    ProviderLimits,
    ProviderName,
    ScopeCount,
    SearchPage,
    SearchWindow,
    StreamGoneError,
    StreamInfo,
    StreamListing,
    Subscription,
    SyncContext,
    TokenSet,
    TransientError,
    WindowPage,
)
from app.providers.bodies import html_to_text, text_to_html
from app.providers.outlook import search, subscriptions, windows
from app.providers.outlook.auth import MsalTokens
from app.providers.outlook.client import GraphClient
from app.providers.outlook.errors import GraphRequestError
from app.providers.outlook.folders import FolderTracker
from app.providers.outlook.mapper import (
    MESSAGE_SELECT,
    WELL_KNOWN_LABELS,
    MalformedPage,
    decode_messages,
)

# A message delta on a deleted folder: with a state token, ErrorSyncFolderNotFound; a
# fresh round on an id that no longer resolves, ErrorItemNotFound.
_FOLDER_GONE_CODES = frozenset({"ErrorSyncFolderNotFound", "ErrorItemNotFound"})
# `contentId` belongs to fileAttachment, not to the attachment base type: selecting it bare
# is a 400 from Graph; without $select, every file's contentBytes would come along.
ATTACHMENT_SELECT = "id,name,contentType,size,isInline,microsoft.graph.fileAttachment/contentId"
# Graph caps message delta pages at 1000, the largest page it accepts.
MAX_PAGE_SIZE = 1000
_DELTA_PREFER = f'odata.maxpagesize={MAX_PAGE_SIZE}, IdType="ImmutableId"'
_IMMUTABLE = 'IdType="ImmutableId"'
_COUNT_SELECT = "id,totalItemCount,unreadItemCount"
# Single gets of a repair, side by side (the mailbox's gate keeps Graph's four).
_GETS_AT_ONCE = 4


def user_path(account: Account) -> str:
    """`/me` with a user's own token; app-only tokens must name the mailbox."""
    if account.auth_mode == "application":
        user = account.provider_user_id or account.email
        if not user:
            raise PermanentError("an app-only mailbox needs a Graph user id or address")
        return f"users/{user}"
    return "me"


class OutlookProvider:
    name: ProviderName = "microsoft"
    search_cap: int | None = search.SEARCH_CAP

    def __init__(self, settings: Settings, http: httpx.AsyncClient) -> None:
        self._settings = settings
        self._graph = GraphClient(http, settings.graph_base_url)
        self._tokens = MsalTokens(settings)
        self._folders = FolderTracker(self._graph)

    def limits(self) -> ProviderLimits:
        return ProviderLimits(
            max_concurrency=self._settings.graph_max_concurrency, page_size=windows.PAGE_SIZE
        )

    async def aclose(self) -> None:
        """Close MSAL's HTTP sessions (the shared httpx client belongs to the caller), and
        let go of requests still finishing in the background: their gate slots stay taken
        until the requests' timeout, since Graph goes on with them."""
        await self._graph.abandon()
        await asyncio.to_thread(self._tokens.close)

    async def refresh_token(self, account: Account, refresh_token: str | None) -> TokenSet:
        return await self._tokens.refresh(account, refresh_token)

    # -- streams ------------------------------------------------------------------------

    async def account_address(self, ctx: SyncContext) -> str | None:
        response = await self._graph.request(
            ctx, "GET", user_path(ctx.account), params={"$select": "mail,userPrincipalName"}
        )
        profile = orjson.loads(response.content)
        address = profile.get("mail") or profile.get("userPrincipalName")
        return str(address).lower() if address else None

    async def list_streams(self, ctx: SyncContext) -> Sequence[StreamInfo]:
        base = user_path(ctx.account)
        return await self._folders.streams(
            ctx, base, lambda: self._well_known_folder_ids(ctx, base)
        )

    async def list_streams_after(
        self, ctx: SyncContext, state: Mapping[str, Any] | None
    ) -> StreamListing:
        base = user_path(ctx.account)
        return await self._folders.listing(
            ctx, base, state, lambda: self._well_known_folder_ids(ctx, base)
        )

    async def locate(self, ctx: SyncContext, message_ids: Sequence[str]) -> dict[str, str | None]:
        """Each message's folder now: a notification names the message, not its folder."""

        async def one(message_id: str) -> tuple[str, str | None]:
            try:
                response = await self._graph.request(
                    ctx,
                    "GET",
                    self._message_path(ctx, message_id),
                    params={"$select": "parentFolderId"},
                    headers={"Prefer": _IMMUTABLE},
                )
            except GraphRequestError as exc:
                if exc.status == 404:
                    return message_id, None
                raise
            folder = orjson.loads(response.content).get("parentFolderId")
            return message_id, str(folder) if isinstance(folder, str) else None

        found = await asyncio.gather(*(one(i) for i in message_ids), return_exceptions=True)
        for outcome in found:
            # Every lookup has finished here, so none is left running unobserved.
            if isinstance(outcome, BaseException):
                raise outcome
        return dict(pair for pair in found if isinstance(pair, tuple))

    async def _well_known_folder_ids(self, ctx: SyncContext, base: str) -> dict[str, str]:
        async def resolve(name: str) -> tuple[str, str] | None:
            try:
                response = await self._graph.request(
                    ctx, "GET", f"{base}/mailFolders/{name}", params={"$select": "id"}
                )
            except GraphRequestError as exc:
                # Not every mailbox has every well-known folder (archive, junk).
                if exc.status == 404:
                    return None
                raise
            return str(response.json()["id"]), WELL_KNOWN_LABELS[name]

        found = await asyncio.gather(
            *(resolve(name) for name in WELL_KNOWN_LABELS), return_exceptions=True
        )
        for outcome in found:
            # Every lookup has finished here, so none is left running unobserved.
            if isinstance(outcome, BaseException):
                raise outcome
        return dict(pair for pair in found if isinstance(pair, tuple))

    # -- pages --------------------------------------------------------------------------

    async def fetch_page(self, ctx: SyncContext, stream: StreamInfo, cursor: Cursor | None) -> Page:
        params: dict[str, str] | None = None
        if not cursor:
            link = f"{user_path(ctx.account)}/mailFolders/{stream.key}/messages/delta"
            params = {"$select": MESSAGE_SELECT}
            initial = True
        elif isinstance(cursor.get("next_link"), str):
            link, initial = cursor["next_link"], bool(cursor.get("initial"))
        elif isinstance(cursor.get("delta_link"), str):
            link, initial = cursor["delta_link"], False
        else:
            raise CursorInvalidError("unrecognized Graph cursor")
        if params is None and not self._graph.is_graph_url(link):
            raise CursorInvalidError("stored Graph link does not point at GRAPH_BASE_URL")
        try:
            response = await self._graph.request(
                ctx, "GET", link, params=params, headers={"Prefer": _DELTA_PREFER}
            )
        except GraphRequestError as exc:
            if exc.status == 404 and exc.code in _FOLDER_GONE_CODES:
                # The folder was deleted since the folder list was read: the stream is gone,
                # which is no fault of the mailbox's.
                raise StreamGoneError(f"folder {stream.name!r} is gone ({exc.code})") from exc
            raise
        try:
            decoded = decode_messages(response.content)
        except MalformedPage as exc:
            raise TransientError(f"Graph returned a delta page that is {exc}") from exc
        upserts, deletes = decoded.read(stream.labels)
        page = Page(upserts=upserts, deletes=deletes, total_estimate=stream.total_estimate)
        if isinstance(decoded.next_link, str):
            page.cursor = {"next_link": decoded.next_link, "initial": initial}
        elif isinstance(decoded.delta_link, str):
            page.cursor = {"delta_link": decoded.delta_link}
            page.caught_up = True
            page.full_sync_complete = initial
        else:
            raise TransientError("Graph delta page had neither a nextLink nor a deltaLink")
        return page

    async def recent(
        self, ctx: SyncContext, streams: Sequence[StreamInfo], limit: int
    ) -> dict[str, MessageBatch]:
        # Graph does not say in which order a delta round enumerates a folder: one listing
        # of the whole mailbox, newest first, puts recent mail on screen in any case.
        response = await self._graph.request(
            ctx,
            "GET",
            f"{user_path(ctx.account)}/messages",
            params={
                "$top": str(min(limit, MAX_PAGE_SIZE)),
                "$orderby": "receivedDateTime desc",
                "$select": f"{MESSAGE_SELECT},parentFolderId",
            },
            headers={"Prefer": 'IdType="ImmutableId"'},
        )
        try:
            by_folder = decode_messages(response.content).by_folder()
        except MalformedPage as exc:
            raise TransientError(f"Graph returned a message listing that is {exc}") from exc
        found: dict[str, MessageBatch] = {}
        for stream in streams:
            if stream.key in by_folder:
                found[stream.key], _ = by_folder[stream.key].read(stream.labels)
        return found

    # -- reading on demand ------------------------------------------------------------

    def _message_path(self, ctx: SyncContext, message_id: str) -> str:
        return f"{user_path(ctx.account)}/messages/{quote(message_id, safe='')}"

    async def _get(
        self, ctx: SyncContext, path: str, params: dict[str, str], prefer: str
    ) -> dict[str, Any]:
        try:
            response = await self._graph.request(
                ctx, "GET", path, params=params, headers={"Prefer": prefer}
            )
        except GraphRequestError as exc:
            if exc.status == 404:
                raise MessageGone(str(exc)) from exc
            raise
        body = orjson.loads(response.content)
        return body if isinstance(body, dict) else {}

    async def fetch_body(
        self, ctx: SyncContext, provider_message_id: str, fmt: BodyFormat
    ) -> MessageBody:
        # Graph converts on request: the Prefer header names the form wanted.
        prefer = f'outlook.body-content-type="{fmt}", IdType="ImmutableId"'
        message = await self._get(
            ctx, self._message_path(ctx, provider_message_id), {"$select": "body"}, prefer
        )
        body = message.get("body") if isinstance(message.get("body"), dict) else {}
        assert isinstance(body, dict)
        content = body.get("content") if isinstance(body.get("content"), str) else ""
        assert isinstance(content, str)
        kind = str(body.get("contentType") or fmt).lower()
        if kind != fmt:
            content = text_to_html(content) if fmt == "html" else html_to_text(content)
        attachments: Sequence[AttachmentInfo] = ()
        if fmt == "html" and "cid:" in content.lower():
            attachments = await self.list_attachments(ctx, provider_message_id)
        return MessageBody(fmt, content, attachments)

    async def list_attachments(
        self, ctx: SyncContext, provider_message_id: str
    ) -> Sequence[AttachmentInfo]:
        path = f"{self._message_path(ctx, provider_message_id)}/attachments"
        params: dict[str, str] | None = {"$select": ATTACHMENT_SELECT}
        found: list[AttachmentInfo] = []
        for _ in range(20):  # a message has at most a few pages of attachments
            if params is None and not self._graph.is_graph_url(path):
                break
            page = await self._get(ctx, path, params or {}, 'IdType="ImmutableId"')
            found += [
                _attachment(item) for item in page.get("value") or () if isinstance(item, dict)
            ]
            next_link = page.get("@odata.nextLink")
            if not isinstance(next_link, str):
                break
            path, params = next_link, None
        return found

    @asynccontextmanager
    async def open_attachment(
        self, ctx: SyncContext, provider_message_id: str, attachment_id: str
    ) -> AsyncIterator[AttachmentContent]:
        path = (
            f"{self._message_path(ctx, provider_message_id)}/attachments/"
            f"{quote(attachment_id, safe='')}"
        )
        info = _attachment(
            await self._get(ctx, path, {"$select": ATTACHMENT_SELECT}, 'IdType="ImmutableId"')
        )
        try:
            async with self._graph.stream(ctx, f"{path}/$value") as response:
                yield AttachmentContent(info, response.aiter_bytes())
        except GraphRequestError as exc:
            if exc.status == 404:
                raise MessageGone(str(exc)) from exc
            raise

    # -- completion monitor -------------------------------------------------------------

    async def counts(self, ctx: SyncContext, streams: Sequence[StreamInfo]) -> ProviderCounts:
        """Every folder's totalItemCount and unreadItemCount from one fresh folder listing
        (mailFolders/delta without a token lists nested folders too, 100 a page)."""
        wanted = {stream.key for stream in streams}
        link = f"{user_path(ctx.account)}/mailFolders/delta"
        params: dict[str, str] | None = {"$select": _COUNT_SELECT}
        scopes: list[ScopeCount] = []
        while True:
            response = await self._graph.request(
                ctx, "GET", link, params=params, headers={"Prefer": "odata.maxpagesize=100"}
            )
            body = orjson.loads(response.content)
            for folder in body.get("value", []):
                folder_id = str(folder.get("id"))
                if folder_id not in wanted or "@removed" in folder:
                    continue
                scopes.append(
                    ScopeCount(
                        kind="stream",
                        key=folder_id,
                        total=int(folder.get("totalItemCount") or 0),
                        unread=int(folder.get("unreadItemCount") or 0),
                        # A folder is mended by enumerating it again under a new generation:
                        # that also corrects rows whose content drifted, not only their number.
                        repair="restart",
                        stream=folder_id,
                    )
                )
            next_link = body.get("@odata.nextLink")
            if not isinstance(next_link, str):
                return ProviderCounts(scopes=scopes)
            link, params = next_link, None

    async def scope_ids(
        self, ctx: SyncContext, scope: ScopeCount, *, unread_only: bool = False
    ) -> list[str]:
        """The folder's message ids, 1000 a page (a listing of ids only)."""
        link = f"{user_path(ctx.account)}/mailFolders/{scope.stream}/messages"
        first: dict[str, str] = {"$select": "id", "$top": str(MAX_PAGE_SIZE)}
        if unread_only:
            first["$filter"] = "isRead eq false"
        params: dict[str, str] | None = first
        ids: list[str] = []
        while True:
            response = await self._graph.request(
                ctx, "GET", link, params=params, headers={"Prefer": _IMMUTABLE}
            )
            body = orjson.loads(response.content)
            ids.extend(str(item["id"]) for item in body.get("value", []) if "id" in item)
            next_link = body.get("@odata.nextLink")
            if not isinstance(next_link, str):
                return list(dict.fromkeys(ids))
            if not self._graph.is_graph_url(next_link):
                raise PermanentError("Graph listing link does not point at GRAPH_BASE_URL")
            link, params = next_link, None

    async def get_messages(
        self, ctx: SyncContext, stream: StreamInfo, ids: Sequence[str]
    ) -> MessageBatch:
        slots = asyncio.Semaphore(_GETS_AT_ONCE)

        async def one(message_id: str) -> bytes | None:
            async with slots:
                try:
                    response = await self._graph.request(
                        ctx,
                        "GET",
                        f"{user_path(ctx.account)}/messages/{message_id}",
                        params={"$select": MESSAGE_SELECT},
                        headers={"Prefer": _IMMUTABLE},
                    )
                except GraphRequestError as exc:
                    if exc.status == 404:
                        return None
                    raise
                return response.content

        found = [c for c in await asyncio.gather(*(one(i) for i in ids)) if c is not None]
        # One collection, so the page decoder (typed, with its tolerant fallback) reads it.
        try:
            page = decode_messages(b'{"value":[' + b",".join(found) + b"]}")
        except MalformedPage as exc:
            raise TransientError(f"Graph returned a message that is {exc}") from exc
        upserts, _ = page.read(stream.labels)
        return upserts

    # -- case mail (app/providers/outlook/search.py) --------------------------------------

    async def search_participant(
        self,
        ctx: SyncContext,
        streams: Sequence[StreamInfo],
        address: str,
        window: SearchWindow,
        cursor: Cursor | None,
    ) -> SearchPage:
        return await search.search_page(
            self._graph, ctx, user_path(ctx.account), streams, address, window, cursor
        )

    # -- partitioned backfill (app/providers/outlook/windows.py) ---------------------------

    async def backfill_cursor(self, ctx: SyncContext, stream: StreamInfo) -> Cursor:
        return await windows.backfill_cursor(self._graph, ctx, user_path(ctx.account), stream)

    async def received_range(
        self, ctx: SyncContext, stream: StreamInfo
    ) -> tuple[datetime, datetime] | None:
        return await windows.received_range(self._graph, ctx, user_path(ctx.account), stream)

    async def list_window(
        self, ctx: SyncContext, stream: StreamInfo, window: SearchWindow, cursor: Cursor | None
    ) -> WindowPage:
        return await windows.list_window(
            self._graph, ctx, user_path(ctx.account), stream, window, cursor
        )

    # -- push ---------------------------------------------------------------------------

    def _notification_url(self) -> str | None:
        base = self._settings.public_base_url.rstrip("/")
        return f"{base}/webhooks/microsoft" if base.startswith(("https://", "http://")) else None

    async def subscribe(self, ctx: SyncContext) -> Subscription | None:
        url = self._notification_url()
        if url is None:
            return None
        resource = f"{user_path(ctx.account)}/messages"
        return await subscriptions.create(self._graph, ctx, resource=resource, notification_url=url)

    async def renew(self, ctx: SyncContext, subscription: Subscription) -> Subscription:
        return await subscriptions.renew(self._graph, ctx, subscription)

    async def unsubscribe(self, ctx: SyncContext, subscription: Subscription) -> None:
        await subscriptions.delete(self._graph, ctx, subscription)


def _attachment(item: dict[str, Any]) -> AttachmentInfo:
    size = item.get("size")
    content_id = item.get("contentId")
    content_id = content_id.strip().strip("<>") if isinstance(content_id, str) else None
    return AttachmentInfo(
        attachment_id=str(item.get("id") or ""),
        name=item.get("name") if isinstance(item.get("name"), str) else None,
        content_type=item.get("contentType") if isinstance(item.get("contentType"), str) else None,
        size=size if isinstance(size, int) and not isinstance(size, bool) else None,
        # Outlook marks pasted images inline; one without a Content-ID cannot be shown
        # inside the body, so it is a file like any other.
        inline=item.get("isInline") is True and bool(content_id),
        content_id=content_id or None,
    )
