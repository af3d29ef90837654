"""GmailProvider: the whole mailbox as one stream, followed through history ids.

A sync starts with a full enumeration and then reads history:

1. full: record the mailbox's current historyId (getProfile) *before* listing, then page
   messages.list (500 ids, Spam and Trash included) and fetch each page's metadata. A
   message deleted between list and get answers 404 and is skipped. The last page
   completes the enumeration and turns the cursor into history mode at the recorded id,
   so every change made while the listing ran is replayed from history afterwards.
2. history: history.list from the stored id, all four record types, folded per message
   (added -> fetch metadata, deleted -> delete, label edits -> LabelChange). The cursor
   only moves forward. A 404 means the id is too old: CursorInvalidError, full resync.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import httpx

from app.config import Settings
from app.providers.base import (
    Account,
    Cursor,
    CursorInvalidError,
    LabelChange,
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
)
from app.providers.gmail.client import FetchStrategy, GmailClient, RetryPolicy
from app.providers.gmail.cursor import GmailCursor
from app.providers.gmail.history import fold_history
from app.providers.gmail.labels import LabelCache
from app.providers.gmail.mapper import METADATA_HEADERS, label_names, to_normalized
from app.providers.gmail.oauth import refresh_access_token
from app.providers.gmail.search import search_page

STREAM_KEY = "mailbox"
LIST_PAGE_SIZE = 500
HISTORY_PAGE_SIZE = 500


class GmailProvider:
    name: ProviderName = "google"
    # messages.list pages through every result: no cap.
    search_cap: int | None = None

    def __init__(
        self,
        settings: Settings,
        http: httpx.AsyncClient,
        *,
        fetch_strategy: FetchStrategy = "batch",
        retry: RetryPolicy | None = None,
    ) -> None:
        self._settings = settings
        self._http = http
        self._client = GmailClient(settings, http, retry=retry, fetch_strategy=fetch_strategy)
        self._labels = LabelCache(self._client)

    def limits(self) -> ProviderLimits:
        return ProviderLimits(units_per_second=self._settings.gmail_quota_units_per_second)

    async def refresh_token(self, account: Account, refresh_token: str | None) -> TokenSet:
        return await refresh_access_token(self._settings, self._http, refresh_token)

    async def account_address(self, ctx: SyncContext) -> str | None:
        address = (await self._client.get_profile(ctx)).get("emailAddress")
        return str(address).lower() if address else None

    async def list_streams(self, ctx: SyncContext) -> Sequence[StreamInfo]:
        profile = await self._client.get_profile(ctx)
        return [
            StreamInfo(
                key=STREAM_KEY,
                name=str(profile.get("emailAddress") or ctx.account.email or "me"),
                total_estimate=profile.get("messagesTotal"),
            )
        ]

    async def fetch_page(self, ctx: SyncContext, stream: StreamInfo, cursor: Cursor | None) -> Page:
        if cursor is None:
            profile = await self._client.get_profile(ctx)
            return await self._full_page(ctx, GmailCursor("full", int(profile["historyId"])))
        state = GmailCursor.load(cursor)
        if state.phase == "full":
            return await self._full_page(ctx, state)
        return await self._history_page(ctx, state)

    # -- full enumeration ------------------------------------------------------------

    async def _full_page(self, ctx: SyncContext, state: GmailCursor) -> Page:
        try:
            listing = await self._client.list_messages(
                ctx, page_token=state.page_token, max_results=LIST_PAGE_SIZE
            )
        except PermanentError as exc:
            if state.page_token:
                # A page token Gmail no longer accepts: start the enumeration over.
                raise CursorInvalidError(f"Gmail refused the listing page token: {exc}") from exc
            raise
        ids = [m["id"] for m in listing.get("messages") or ()]
        upserts = await self._fetch(ctx, ids)
        next_token = listing.get("nextPageToken")
        total = listing.get("resultSizeEstimate")
        if next_token:
            return Page(
                upserts=upserts,
                cursor=GmailCursor("full", state.history_id, next_token).dump(),
                total_estimate=total,
            )
        return Page(
            upserts=upserts,
            # Not caught up: history since the recorded id still has to be read.
            cursor=GmailCursor("history", state.history_id).dump(),
            full_sync_complete=True,
            total_estimate=total,
        )

    # -- history ---------------------------------------------------------------------

    async def _history_page(self, ctx: SyncContext, state: GmailCursor) -> Page:
        response = await self._client.list_history(
            ctx,
            start_history_id=state.history_id,
            page_token=state.page_token,
            max_results=HISTORY_PAGE_SIZE,
        )
        records: list[dict[str, Any]] = response.get("history") or []
        fold = fold_history(records)
        upserts = await self._fetch(ctx, fold.fetch)
        changed = {label for add, remove in fold.label_changes.values() for label in add + remove}
        names = await self._labels.names(ctx, changed) if changed else {}
        label_changes = [
            LabelChange(
                provider_message_id=message_id,
                add=tuple(label_names(add, names)),
                remove=tuple(label_names(remove, names)),
            )
            for message_id, (add, remove) in fold.label_changes.items()
        ]
        next_token = response.get("nextPageToken")
        if next_token:
            if records:
                # Resume after the last record applied rather than from a page token:
                # a history id is a cursor Gmail keeps for a week.
                after = max(state.history_id, int(records[-1]["id"]))
                cursor = GmailCursor("history", after)
            else:
                cursor = GmailCursor("history", state.history_id, next_token)
            caught_up = False
        else:
            current = int(response.get("historyId") or state.history_id)
            cursor = GmailCursor("history", max(state.history_id, current))
            caught_up = True
        return Page(
            upserts=upserts,
            deletes=fold.deletes,
            label_changes=label_changes,
            cursor=cursor.dump(),
            caught_up=caught_up,
        )

    async def _fetch(self, ctx: SyncContext, ids: Sequence[str]) -> MessageBatch:
        """Normalized metadata of `ids`, in order, without the ones deleted meanwhile."""
        if not ids:
            return MessageBatch()
        found = await self._client.get_messages(ctx, ids, METADATA_HEADERS)
        messages = [m for i in ids if (m := found.get(i)) is not None]
        label_ids = {label for m in messages for label in m.get("labelIds") or ()}
        names = await self._labels.names(ctx, label_ids)
        return MessageBatch.of(to_normalized(m, names) for m in messages)

    async def recent(
        self, ctx: SyncContext, streams: Sequence[StreamInfo], limit: int
    ) -> dict[str, MessageBatch]:
        # messages.list answers newest first and the full sync walks it in that order, but
        # its first page is 500 messages: under the per-user quota that is ten seconds
        # before anything shows. A short listing first costs `limit` gets once.
        if not any(stream.key == STREAM_KEY for stream in streams):
            return {}
        listing = await self._client.list_messages(ctx, page_token=None, max_results=limit)
        ids = [m["id"] for m in listing.get("messages") or ()]
        return {STREAM_KEY: await self._fetch(ctx, ids)}

    # -- case mail (app/providers/gmail/search.py) ----------------------------------

    async def search_participant(
        self,
        ctx: SyncContext,
        streams: Sequence[StreamInfo],
        address: str,
        window: SearchWindow,
        cursor: Cursor | None,
    ) -> SearchPage:
        if not any(stream.key == STREAM_KEY for stream in streams):
            return SearchPage()
        return await search_page(
            self._client, self._fetch, ctx, STREAM_KEY, address, window, cursor
        )

    async def live_cursor(self, ctx: SyncContext, stream: StreamInfo) -> Cursor | None:
        """History from the profile's current historyId replays every change made after it."""
        profile = await self._client.get_profile(ctx)
        return GmailCursor("history", int(profile["historyId"])).dump()

    # -- push ------------------------------------------------------------------------

    async def _watch(self, ctx: SyncContext, topic: str) -> Subscription:
        response = await self._client.watch(ctx, topic)
        email = ctx.account.email or str((await self._client.get_profile(ctx))["emailAddress"])
        return Subscription(
            subscription_id=f"watch:{email}",
            expires_at=datetime.fromtimestamp(int(response["expiration"]) / 1000, UTC),
            resource=topic,
            extra={"history_id": str(response["historyId"])},
        )

    async def subscribe(self, ctx: SyncContext) -> Subscription | None:
        topic = self._settings.gmail_pubsub_topic
        if not topic:
            return None
        return await self._watch(ctx, topic)

    async def renew(self, ctx: SyncContext, subscription: Subscription) -> Subscription:
        # A Gmail watch is renewed by calling watch again, before its expiration.
        topic = self._settings.gmail_pubsub_topic or subscription.resource
        if not topic:
            raise PermanentError("GMAIL_PUBSUB_TOPIC is not set; cannot renew the Gmail watch")
        return await self._watch(ctx, topic)

    async def unsubscribe(self, ctx: SyncContext, subscription: Subscription) -> None:
        await self._client.stop(ctx)
