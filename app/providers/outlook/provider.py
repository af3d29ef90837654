"""Microsoft 365 / Outlook through Graph: one delta-cursored stream per mail folder.

A cursor is `{"next_link": url, "initial": bool}` inside a round and `{"delta_link": url}`
between rounds. `initial` marks a round that began from an empty cursor, so the page with
its deltaLink can tell the engine the folder was enumerated completely.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import httpx
import orjson

from app.config import Settings
from app.providers.base import (
    Account,
    Cursor,
    CursorInvalidError,
    MessageBatch,
    Page,
    PermanentError,
    ProviderLimits,
    ProviderName,
    SearchPage,
    SearchWindow,
    StreamInfo,
    Subscription,
    SyncContext,
    TokenSet,
    TransientError,
)
from app.providers.outlook import search, subscriptions
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

# Graph caps message delta pages at 1000, the largest page it accepts.
MAX_PAGE_SIZE = 1000
_DELTA_PREFER = f'odata.maxpagesize={MAX_PAGE_SIZE}, IdType="ImmutableId"'


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
        return ProviderLimits(max_concurrency=self._settings.graph_max_concurrency)

    async def aclose(self) -> None:
        """Close MSAL's HTTP sessions (the shared httpx client belongs to the caller)."""
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
            if exc.status == 404 and exc.code == "ErrorItemNotFound":
                # The folder itself is gone: a complete, empty enumeration removes its rows.
                return Page(cursor={}, caught_up=True, full_sync_complete=True, total_estimate=0)
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
