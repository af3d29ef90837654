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

import asyncio
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

import httpx

from app.config import Settings
from app.providers.base import (
    Account,
    AttachmentContent,
    AttachmentInfo,
    BodyFormat,
    Cursor,
    CursorInvalidError,
    LabelChange,
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
    StreamInfo,
    Subscription,
    SyncContext,
    TokenSet,
    WindowPage,
)
from app.providers.bodies import html_to_text, text_to_html
from app.providers.gmail import mime, windows
from app.providers.gmail.attachment_stream import decoded_chunks
from app.providers.gmail.client import JSON, FetchStrategy, GmailClient, RetryPolicy
from app.providers.gmail.cursor import GmailCursor
from app.providers.gmail.history import fold_history
from app.providers.gmail.labels import LabelCache, is_user_label
from app.providers.gmail.mapper import label_names, to_normalized
from app.providers.gmail.oauth import refresh_access_token
from app.providers.gmail.search import search_page
from app.providers.gmail.streams import STREAM_KEY

LIST_PAGE_SIZE = 500
HISTORY_PAGE_SIZE = 500
# A repair by listing holds every id of the scope in memory on both sides of the diff;
# past this many, enumerating the mailbox again is the cheaper way to be sure.
LIST_REPAIR_MAX = 200_000


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
        return ProviderLimits(
            units_per_second=self._settings.gmail_quota_units_per_second, page_size=LIST_PAGE_SIZE
        )

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
        # format=full: the MIME tree is the only place Gmail says whether a message has
        # attachments (metadata has no parts). Same quota cost, larger answers.
        found = await self._client.get_messages(ctx, ids, fmt="full")
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

    # -- reading on demand -----------------------------------------------------------

    async def _full(self, ctx: SyncContext, message_id: str) -> JSON:
        return await self._client.get_message(ctx, message_id, "full")

    async def _part_text(self, ctx: SyncContext, message_id: str, part: mime.Part) -> str:
        text = part.text()
        if text is not None:
            return text
        if part.attachment_id is None:
            return ""
        # Gmail sends a large body by id, like a file.
        answer = await self._client.get_attachment(ctx, message_id, part.attachment_id)
        data = answer.get("data")
        raw = mime.decode_data(data) if isinstance(data, str) else b""
        return mime.decode_text(raw, part.charset)

    async def fetch_body(
        self, ctx: SyncContext, provider_message_id: str, fmt: BodyFormat
    ) -> MessageBody:
        message = await self._full(ctx, provider_message_id)
        payload = message.get("payload") or {}
        text_part, html_part = mime.body_parts(payload)
        if fmt == "html":
            if html_part is not None:
                html = await self._part_text(ctx, provider_message_id, html_part)
            else:
                plain = (
                    await self._part_text(ctx, provider_message_id, text_part) if text_part else ""
                )
                html = text_to_html(plain)
            return MessageBody("html", html, mime.attachments(payload, html))
        if text_part is not None:
            return MessageBody("text", await self._part_text(ctx, provider_message_id, text_part))
        html = await self._part_text(ctx, provider_message_id, html_part) if html_part else ""
        return MessageBody("text", html_to_text(html))

    async def list_attachments(
        self, ctx: SyncContext, provider_message_id: str
    ) -> Sequence[AttachmentInfo]:
        message = await self._full(ctx, provider_message_id)
        return mime.attachments(message.get("payload") or {})

    @asynccontextmanager
    async def open_attachment(
        self, ctx: SyncContext, provider_message_id: str, attachment_id: str
    ) -> AsyncIterator[AttachmentContent]:
        # Our attachment id is the part id; Gmail's own attachmentId changes with every
        # messages.get, so the current one is read from the message first.
        message = await self._full(ctx, provider_message_id)
        payload = message.get("payload") or {}
        part = mime.find_part(payload, attachment_id)
        info = next(
            (a for a in mime.attachments(payload) if a.attachment_id == attachment_id), None
        )
        if part is None or info is None:
            raise MessageGone(f"Gmail message has no attachment {attachment_id!r}")
        data = part.body.get("data")
        if isinstance(data, str):
            yield AttachmentContent(info, _one(mime.decode_data(data)))
            return
        if part.attachment_id is None:
            raise MessageGone(f"Gmail sent no content for attachment {attachment_id!r}")
        async with self._client.stream_attachment(
            ctx, provider_message_id, part.attachment_id
        ) as response:
            yield AttachmentContent(info, decoded_chunks(response.aiter_bytes()))

    # -- completion monitor ------------------------------------------------------------

    async def counts(self, ctx: SyncContext, streams: Sequence[StreamInfo]) -> ProviderCounts:
        """The profile's messagesTotal and every label's messagesTotal/messagesUnread (only
        labels.get carries them): about twenty quota units. The profile is read again at the
        end; a history id that moved means the mailbox changed while it was counted."""
        before = await self._client.get_profile(ctx)
        listing = await self._client.list_labels(ctx)
        label_ids = [
            str(label["id"])
            for label in listing.get("labels") or ()
            if isinstance(label, dict) and label.get("id")
        ]
        labels = await asyncio.gather(*(self._client.get_label(ctx, i) for i in label_ids))
        after = await self._client.get_profile(ctx)
        total = int(before.get("messagesTotal") or 0)
        scopes = [
            ScopeCount(
                kind="stream",
                key=STREAM_KEY,
                total=total,
                unread=None,
                repair="list" if total <= LIST_REPAIR_MAX else "restart",
                stream=STREAM_KEY,
            )
        ]
        for label in labels:
            label_id = str(label.get("id") or "")
            if not label_id:
                continue
            # The store writes user labels by name, system labels by id (see the mapper).
            key = str(label.get("name") or label_id) if is_user_label(label_id) else label_id
            label_total = int(label.get("messagesTotal") or 0)
            scopes.append(
                ScopeCount(
                    kind="label",
                    key=key,
                    total=label_total,
                    unread=int(label.get("messagesUnread") or 0),
                    repair="list" if label_total <= LIST_REPAIR_MAX else "restart",
                    stream=STREAM_KEY,
                    ref=label_id,
                )
            )
        stable = str(before.get("historyId")) == str(after.get("historyId"))
        return ProviderCounts(scopes=scopes, stable=stable)

    async def scope_ids(
        self, ctx: SyncContext, scope: ScopeCount, *, unread_only: bool = False
    ) -> list[str]:
        """messages.list, 500 ids (5 quota units) a page, Spam and Trash included like the
        full sync; a label's listing filters on its id (and UNREAD for its unread ones)."""
        label_ids = [scope.ref] if scope.kind == "label" and scope.ref else []
        if unread_only and "UNREAD" not in label_ids:
            label_ids.append("UNREAD")
        ids: list[str] = []
        page_token: str | None = None
        while True:
            listing = await self._client.list_messages(
                ctx, page_token=page_token, max_results=LIST_PAGE_SIZE, label_ids=label_ids
            )
            ids.extend(str(m["id"]) for m in listing.get("messages") or ())
            page_token = listing.get("nextPageToken")
            if not page_token:
                return list(dict.fromkeys(ids))

    async def get_messages(
        self, ctx: SyncContext, stream: StreamInfo, ids: Sequence[str]
    ) -> MessageBatch:
        return await self._fetch(ctx, ids)

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

    # -- partitioned backfill (app/providers/gmail/windows.py) --------------------------

    async def backfill_cursor(self, ctx: SyncContext, stream: StreamInfo) -> Cursor:
        cursor = await self.live_cursor(ctx, stream)
        assert cursor is not None
        return cursor

    async def received_range(
        self, ctx: SyncContext, stream: StreamInfo
    ) -> tuple[datetime, datetime] | None:
        return await windows.received_range(self._client, ctx, self._fetch)

    async def list_window(
        self, ctx: SyncContext, stream: StreamInfo, window: SearchWindow, cursor: Cursor | None
    ) -> WindowPage:
        return await windows.list_window(self._client, ctx, self._fetch, window, cursor)

    # -- push ------------------------------------------------------------------------

    async def _watch(self, ctx: SyncContext, topic: str) -> Subscription:
        response = await self._client.watch(ctx, topic)
        email = ctx.account.email or str((await self._client.get_profile(ctx))["emailAddress"])
        return Subscription(
            # Our bookkeeping is per mailbox; the watch itself is per address at Google, so
            # every mailbox of the address shares its channel.
            subscription_id=f"watch:{email}:{ctx.account.mailbox_id}",
            expires_at=datetime.fromtimestamp(int(response["expiration"]) / 1000, UTC),
            resource=topic,
            extra={"history_id": str(response["historyId"])},
            channel=f"gmail-watch:{email.lower()}",
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


async def _one(data: bytes) -> AsyncIterator[bytes]:
    yield data
