"""An in-memory, scriptable MailProvider: the engine's test double.

It behaves like a delta-cursor provider (Graph-like folders, or one Gmail-like stream) and
can be told to misbehave the ways real providers do: throttle, expire a cursor, repeat a
page, refuse a refresh, stall. Tests register it through `app.providers.registry.override`,
the same door the real providers use.
"""

from __future__ import annotations

import asyncio
import itertools
import secrets
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Literal

from app.providers.base import (
    AccessTokenRejected,
    Account,
    AttachmentContent,
    AttachmentInfo,
    AuthExpiredError,
    BodyFormat,
    Cursor,
    CursorInvalidError,
    MessageBatch,
    MessageBody,
    MessageGone,
    NormalizedMessage,
    Page,
    ProviderCounts,
    ProviderLimits,
    ProviderName,
    ScopeCount,
    StreamInfo,
    Subscription,
    SubscriptionGone,
    SyncContext,
    ThrottledError,
    TokenSet,
)


@dataclass
class Faults:
    throttle_next: int = 0
    retry_after: float = 0.05
    refuse_refresh: str | None = None
    expire_cursor_streams: set[str] = field(default_factory=set)
    repeat_next_page: bool = False
    stall_seconds: float = 0.0
    # Called before every page; tests use it to crash "between pages".
    before_page: object | None = None
    # Raised by `recent` (a provider refusing the newest-first listing).
    recent_error: Exception | None = None
    # Called when `counts` has read the counts, before it returns them (a change that
    # arrives while the monitor compares).
    after_counts: object | None = None
    # Items a stream's count includes but its enumeration never returns (Graph counts
    # folder items that are not messages).
    uncounted: dict[str, int] = field(default_factory=dict)


@dataclass
class _Change:
    seq: int
    stream: str
    message_id: str
    deleted: bool


class MemoryProvider:
    """A MailProvider over dicts. One instance can serve many mailboxes (keyed by mailbox id)."""

    def __init__(
        self,
        name: ProviderName = "microsoft",
        *,
        page_size: int = 50,
        access_token_ttl: float = 3600.0,
        max_concurrency: int | None = 4,
        repair: Literal["restart", "list"] = "restart",
        count_labels: bool = False,
    ) -> None:
        self.name = name
        # How the monitor is told to mend a difference, and whether labels are counted too
        # (Gmail-like: one stream, per-label counts, repaired by listing ids).
        self.repair: Literal["restart", "list"] = repair
        self.count_labels = count_labels
        self.count_calls = 0
        self.listed_scopes: list[str] = []
        self.fetched_ids: list[str] = []
        self.page_size = page_size
        self.access_token_ttl = access_token_ttl
        self._limits = ProviderLimits(max_concurrency=max_concurrency)
        self.faults = Faults()
        self.recent_calls = 0
        self.streams: dict[str, dict[str, NormalizedMessage]] = {}
        self.stream_labels: dict[str, tuple[str, ...]] = {}
        self._log: list[_Change] = []
        self._seq = itertools.count(1)
        self._epochs: dict[str, int] = {}
        self.valid_tokens: dict[str, datetime] = {}
        self.refresh_tokens: set[str] = set()
        # (token, expires_at, used_at) for every request: proves no expired token was sent.
        self.token_uses: list[tuple[str, datetime, datetime]] = []
        self.refresh_count = 0
        self.pages_served = 0
        self.subscriptions: dict[str, Subscription] = {}
        self.address: str | None = "owner@example.com"
        # Scripted content for the on-demand reads, by provider message id.
        self.bodies: dict[str, str] = {}
        self.attachments: dict[str, list[AttachmentInfo]] = {}
        self.attachment_bytes: dict[tuple[str, str], bytes] = {}

    # -- scripting ----------------------------------------------------------------------

    def add_stream(self, key: str, labels: Sequence[str] = ()) -> None:
        self.streams.setdefault(key, {})
        self.stream_labels[key] = tuple(labels)

    def put(self, stream: str, message: NormalizedMessage) -> None:
        for other, messages in self.streams.items():
            if other != stream and message.provider_message_id in messages:
                del messages[message.provider_message_id]
                self._log.append(_Change(next(self._seq), other, message.provider_message_id, True))
        labels = sorted({*message.labels, *self.stream_labels.get(stream, ())})
        self.streams[stream][message.provider_message_id] = replace(message, labels=labels)
        self._log.append(_Change(next(self._seq), stream, message.provider_message_id, False))

    def delete(self, stream: str, message_id: str) -> None:
        if self.streams[stream].pop(message_id, None) is not None:
            self._log.append(_Change(next(self._seq), stream, message_id, True))

    def expire_cursors(self, stream: str) -> None:
        """Cursors issued so far for `stream` become invalid (Graph 410, Gmail history 404)."""
        self._epochs[stream] = self._epochs.get(stream, 0) + 1

    def issue_grant(self) -> tuple[str, str, int]:
        access, refresh = secrets.token_urlsafe(16), secrets.token_urlsafe(16)
        self.valid_tokens[access] = datetime.now(UTC) + timedelta(seconds=self.access_token_ttl)
        self.refresh_tokens.add(refresh)
        return access, refresh, int(self.access_token_ttl)

    def truth(self) -> dict[str, NormalizedMessage]:
        return {mid: m for msgs in self.streams.values() for mid, m in msgs.items()}

    # -- MailProvider -------------------------------------------------------------------

    def limits(self) -> ProviderLimits:
        return self._limits

    async def refresh_token(self, account: Account, refresh_token: str | None) -> TokenSet:
        self.refresh_count += 1
        if self.faults.refuse_refresh:
            raise AuthExpiredError(self.faults.refuse_refresh)
        if refresh_token not in self.refresh_tokens:
            raise AuthExpiredError("invalid_grant: refresh token unknown or already used")
        # Rotate like Microsoft does: the old refresh token stops working.
        self.refresh_tokens.discard(refresh_token)
        access, refresh, ttl = self.issue_grant()
        return TokenSet(access, datetime.now(UTC) + timedelta(seconds=ttl), refresh)

    async def _authorize(self, ctx: SyncContext) -> None:
        token = await ctx.access_token()
        now = datetime.now(UTC)
        expires = self.valid_tokens.get(token)
        self.token_uses.append((token, expires or now, now))
        if expires is None or expires <= now:
            raise AccessTokenRejected("401 InvalidAuthenticationToken")

    async def account_address(self, ctx: SyncContext) -> str | None:
        await self._authorize(ctx)
        return self.address

    async def list_streams(self, ctx: SyncContext) -> Sequence[StreamInfo]:
        await self._authorize(ctx)
        return [
            StreamInfo(key=k, name=k, total_estimate=len(v), labels=self.stream_labels.get(k, ()))
            for k, v in self.streams.items()
        ]

    async def fetch_page(self, ctx: SyncContext, stream: StreamInfo, cursor: Cursor | None) -> Page:
        async with ctx.gate.request():
            hook = self.faults.before_page
            if callable(hook):
                result = hook(stream, cursor)
                if asyncio.iscoroutine(result):
                    await result
            await self._authorize(ctx)
            if self.faults.stall_seconds:
                await asyncio.sleep(self.faults.stall_seconds)
            if self.faults.throttle_next > 0:
                self.faults.throttle_next -= 1
                await ctx.gate.pause(self.faults.retry_after)
                raise ThrottledError("429 TooManyRequests", retry_after=self.faults.retry_after)
            self.pages_served += 1
            return self._page(stream.key, cursor)

    def _page(self, key: str, cursor: Cursor | None) -> Page:
        messages = self.streams.get(key, {})
        epoch = self._epochs.get(key, 0)
        if cursor is None:
            cursor = {"full": True, "offset": 0, "seq": self._current_seq(), "epoch": epoch}
        issued = int(cursor["seq"])
        if key in self.faults.expire_cursor_streams or cursor.get("epoch", 0) != epoch:
            self.faults.expire_cursor_streams.discard(key)
            raise CursorInvalidError(f"cursor for {key} expired")
        if cursor.get("full"):
            ids = sorted(messages)
            offset = int(cursor["offset"])
            chunk = ids[offset : offset + self.page_size]
            upserts = MessageBatch.of(messages[i] for i in chunk)
            done = offset + len(chunk) >= len(ids)
            next_cursor: Cursor = {"seq": issued, "epoch": epoch}
            if not done:
                next_cursor.update(full=True, offset=offset + len(chunk))
            page = Page(
                upserts=upserts,
                cursor=next_cursor,
                full_sync_complete=done,
                total_estimate=len(messages),
            )
        else:
            changes = [c for c in self._log if c.seq > issued and c.stream == key][: self.page_size]
            upserts, deletes = MessageBatch(), []
            latest = {c.message_id: c for c in changes}
            for change in latest.values():
                if change.deleted or change.message_id not in messages:
                    deletes.append(change.message_id)
                else:
                    upserts.append(messages[change.message_id])
            last = changes[-1].seq if changes else issued
            more = any(c.seq > last and c.stream == key for c in self._log)
            page = Page(
                upserts=upserts,
                deletes=deletes,
                cursor={"seq": last, "epoch": epoch},
                caught_up=not more,
                total_estimate=len(messages),
            )
        if self.faults.repeat_next_page:
            # A provider replaying a page: the same content, the cursor not advanced.
            self.faults.repeat_next_page = False
            page.cursor = cursor
            page.caught_up = False
            page.full_sync_complete = False
        return page

    async def recent(
        self, ctx: SyncContext, streams: Sequence[StreamInfo], limit: int
    ) -> dict[str, MessageBatch]:
        async with ctx.gate.request():
            await self._authorize(ctx)
            self.recent_calls += 1
            if self.faults.recent_error is not None:
                raise self.faults.recent_error
            wanted = {stream.key for stream in streams}
            present = [
                (message.received_at or datetime.min.replace(tzinfo=UTC), key, message)
                for key, messages in self.streams.items()
                if key in wanted
                for message in messages.values()
            ]
            present.sort(key=lambda entry: entry[0], reverse=True)
            found: dict[str, MessageBatch] = {}
            for _, key, message in present[:limit]:
                found.setdefault(key, MessageBatch()).append(message)
            return found

    async def counts(self, ctx: SyncContext, streams: Sequence[StreamInfo]) -> ProviderCounts:
        async with ctx.gate.request():
            await self._authorize(ctx)
            self.count_calls += 1
            scopes = [
                ScopeCount(
                    kind="stream",
                    key=key,
                    total=len(messages) + self.faults.uncounted.get(key, 0),
                    unread=sum(1 for m in messages.values() if not m.is_read),
                    repair=self.repair,
                    stream=key,
                )
                for key, messages in self.streams.items()
            ]
            if self.count_labels and len(self.streams) == 1:
                [stream] = self.streams
                totals: dict[str, list[int]] = {}
                for message in self.streams[stream].values():
                    for label in message.labels:
                        entry = totals.setdefault(label, [0, 0])
                        entry[0] += 1
                        entry[1] += 0 if message.is_read else 1
                scopes += [
                    ScopeCount("label", label, total, unread, self.repair, stream, ref=label)
                    for label, (total, unread) in sorted(totals.items())
                ]
            hook = self.faults.after_counts
            if callable(hook):
                result = hook()
                if asyncio.iscoroutine(result):
                    await result
            return ProviderCounts(scopes=scopes)

    async def scope_ids(
        self, ctx: SyncContext, scope: ScopeCount, *, unread_only: bool = False
    ) -> list[str]:
        async with ctx.gate.request():
            await self._authorize(ctx)
            self.listed_scopes.append(
                f"{scope.kind}:{scope.key}" + (":unread" if unread_only else "")
            )
            if scope.kind == "stream":
                members = self.streams.get(scope.key, {})
            else:
                members = {mid: m for mid, m in self.truth().items() if scope.key in m.labels}
            return sorted(mid for mid, m in members.items() if not (unread_only and m.is_read))

    async def get_messages(
        self, ctx: SyncContext, stream: StreamInfo, ids: Sequence[str]
    ) -> MessageBatch:
        async with ctx.gate.request():
            await self._authorize(ctx)
            self.fetched_ids.extend(ids)
            truth = self.truth()
            return MessageBatch.of(truth[i] for i in ids if i in truth)

    def _current_seq(self) -> int:
        return self._log[-1].seq if self._log else 0

    # -- reading on demand: bodies and attachments scripted per message ------------------

    def _find(self, message_id: str) -> NormalizedMessage:
        for messages in self.streams.values():
            if message_id in messages:
                return messages[message_id]
        raise MessageGone(f"no message {message_id}")

    async def fetch_body(
        self, ctx: SyncContext, provider_message_id: str, fmt: BodyFormat
    ) -> MessageBody:
        async with ctx.gate.request():
            await self._authorize(ctx)
            message = self._find(provider_message_id)
            text = self.bodies.get(provider_message_id, message.snippet or "")
            return MessageBody(fmt, text, self.attachments.get(provider_message_id, []))

    async def list_attachments(
        self, ctx: SyncContext, provider_message_id: str
    ) -> Sequence[AttachmentInfo]:
        async with ctx.gate.request():
            await self._authorize(ctx)
            self._find(provider_message_id)
            return self.attachments.get(provider_message_id, [])

    @asynccontextmanager
    async def open_attachment(
        self, ctx: SyncContext, provider_message_id: str, attachment_id: str
    ) -> AsyncIterator[AttachmentContent]:
        async with ctx.gate.request():
            await self._authorize(ctx)
            self._find(provider_message_id)
            for info in self.attachments.get(provider_message_id, []):
                if info.attachment_id == attachment_id:
                    content = self.attachment_bytes.get((provider_message_id, attachment_id), b"")

                    yield AttachmentContent(info, _chunks(content))
                    return
            raise MessageGone(f"no attachment {attachment_id}")

    async def subscribe(self, ctx: SyncContext) -> Subscription | None:
        await self._authorize(ctx)
        sub = Subscription(
            subscription_id=secrets.token_hex(8),
            expires_at=datetime.now(UTC) + timedelta(days=3),
            client_state=secrets.token_urlsafe(16),
            resource="me/messages",
        )
        self.subscriptions[sub.subscription_id] = sub
        return sub

    async def renew(self, ctx: SyncContext, subscription: Subscription) -> Subscription:
        await self._authorize(ctx)
        if subscription.subscription_id not in self.subscriptions:
            raise SubscriptionGone(subscription.subscription_id)
        renewed = replace(subscription, expires_at=datetime.now(UTC) + timedelta(days=3))
        self.subscriptions[subscription.subscription_id] = renewed
        return renewed

    async def unsubscribe(self, ctx: SyncContext, subscription: Subscription) -> None:
        await self._authorize(ctx)
        self.subscriptions.pop(subscription.subscription_id, None)


def make_message(
    i: int, *, stream_labels: Sequence[str] = (), read: bool = True
) -> NormalizedMessage:
    """A plausible message for tests and benchmarks."""
    received = datetime(2024, 1, 1, tzinfo=UTC) + timedelta(minutes=i)
    return NormalizedMessage(
        provider_message_id=f"msg-{i:07d}",
        thread_id=f"thread-{i // 3:07d}",
        internet_message_id=f"<{i}@example.com>",
        subject=f"Subject {i}",
        from_=f"sender{i % 17}@example.com",
        to=["owner@example.com"],
        cc=[f"cc{i % 5}@example.org"] if i % 4 == 0 else [],
        snippet=f"snippet of message {i}",
        received_at=received,
        labels=list(stream_labels) + ([] if read else ["UNREAD"]),
        is_read=read,
        has_attachments=i % 7 == 0,
        from_name=f"Sender {i % 17}",
        to_names=["Owner"],
        cc_names=[f"Copy {i % 5}"] if i % 4 == 0 else [],
        sent_at=received - timedelta(seconds=30),
        in_reply_to=f"<{i - 1}@example.com>" if i % 3 else None,
        references=[f"<{i - 1}@example.com>"] if i % 3 else [],
        size=4000 + i % 9000,
        importance="normal",
        flagged=i % 11 == 0,
    )


async def _chunks(content: bytes) -> AsyncIterator[bytes]:
    for start in range(0, len(content), 65536):
        yield content[start : start + 65536]
