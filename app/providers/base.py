"""The contract between the provider-agnostic engine and each mail provider.

A provider turns a provider's API into pages of normalized changes. It never touches the
database, the queue or the HTTP API: everything it needs arrives through `SyncContext`,
and everything it learns leaves as return values or as one of the errors below, which the
engine maps onto retries and mailbox status.
"""

from __future__ import annotations

from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Iterable,
    Iterator,
    Mapping,
    Sequence,
)
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal, Protocol, runtime_checkable

ProviderName = Literal["google", "microsoft"]

# ---------------------------------------------------------------------------
# Error taxonomy. The engine decides what happens next from the class alone.
# ---------------------------------------------------------------------------


class ProviderError(Exception):
    """Base of every error a provider raises on purpose."""


class TransientError(ProviderError):
    """Network trouble or a 5xx: try again later, with backoff."""

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class ThrottledError(TransientError):
    """429/503 or a quota error: wait at least `retry_after` seconds when the provider says so."""


class AccessTokenRejected(ProviderError):
    """The provider answered 401 for the access token; the engine refreshes once and retries."""


class AccessDenied(AccessTokenRejected):
    """The provider refused the mailbox to a token it accepts (Graph 403 ErrorAccessDenied
    for an app-only token). Like a 401, it earns one fresh token and one retry; when the
    fresh token is refused too, the permission itself is gone (admin consent withdrawn) and
    the mailbox waits for someone to act. The message says who, and never holds a token.
    """


class AuthExpiredError(ProviderError):
    """The grant itself is gone (`invalid_grant`, revoked consent): only a reconnect helps.

    `message` is shown to the user as `last_error`, so it carries the provider's own code
    (an AADSTS number, Google's error description) and never a token.
    """


class CursorInvalidError(ProviderError):
    """The stored cursor is dead (Graph 410 syncStateNotFound, Gmail history 404)."""


class StreamGoneError(ProviderError):
    """The stream itself is gone at the provider (a Graph folder deleted while it was being
    synced: ErrorSyncFolderNotFound, ErrorItemNotFound). Not the mailbox's failure: the
    engine drops the stream's cursor and rows and carries on with the others."""


class PermanentError(ProviderError):
    """A request the provider will never accept; the mailbox goes to `error` with the reason."""


class MessageGone(PermanentError):
    """The message (or one of its attachments) no longer exists at the provider."""


# ---------------------------------------------------------------------------
# Values exchanged with the engine.
# ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TokenSet:
    access_token: str
    expires_at: datetime
    # None when the provider did not rotate it (keep the stored one).
    refresh_token: str | None = None


@dataclass(frozen=True, slots=True)
class Account:
    """Who the mailbox is at the provider. Never holds a secret."""

    provider: ProviderName
    mailbox_id: str
    email: str | None = None
    # "delegated": a user's OAuth grant; "application": Microsoft client-credentials (app-only).
    auth_mode: Literal["delegated", "application"] = "delegated"
    tenant_id: str | None = None
    # The provider's id for the user (Graph user id for app-only; Gmail "me" otherwise).
    provider_user_id: str | None = None


@dataclass(slots=True)
class NormalizedMessage:
    provider_message_id: str
    thread_id: str | None = None
    internet_message_id: str | None = None
    subject: str | None = None
    from_: str | None = None
    to: list[str] = field(default_factory=list)
    cc: list[str] = field(default_factory=list)
    bcc: list[str] = field(default_factory=list)
    snippet: str | None = None
    received_at: datetime | None = None
    labels: list[str] = field(default_factory=list)
    is_read: bool = False
    has_attachments: bool = False
    # Display names, one per address of the list beside it ("" when the provider gave none).
    from_name: str | None = None
    to_names: list[str] = field(default_factory=list)
    cc_names: list[str] = field(default_factory=list)
    bcc_names: list[str] = field(default_factory=list)
    sent_at: datetime | None = None
    in_reply_to: str | None = None
    references: list[str] = field(default_factory=list)
    # Bytes, as the provider estimates them; None when the provider does not say (Graph).
    size: int | None = None
    # "low", "normal" or "high"; None when unknown.
    importance: str | None = None
    # Outlook's follow-up flag, Gmail's star.
    flagged: bool = False


_BATCH_COLUMNS = (
    "provider_message_id", "thread_id", "internet_message_id", "subject", "from_", "to", "cc",
    "bcc", "snippet", "received_at", "labels", "is_read", "has_attachments", "from_name",
    "to_names", "cc_names", "bcc_names", "sent_at", "in_reply_to", "references", "size",
    "importance", "flagged",
)  # fmt: skip


@dataclass(slots=True, eq=False)
class MessageBatch:
    """A page's messages column by column: the shape the store writes a page in.

    A Graph delta page holds a thousand messages; building one object per message and
    taking them apart again for the database costs more CPU than the database write.
    Providers that decode whole pages append straight to the columns; the others append
    `NormalizedMessage`s. Reading it back message by message (iteration, indexing) is for
    tests and small pages.
    """

    provider_message_id: list[str] = field(default_factory=list)
    thread_id: list[str | None] = field(default_factory=list)
    internet_message_id: list[str | None] = field(default_factory=list)
    subject: list[str | None] = field(default_factory=list)
    from_: list[str | None] = field(default_factory=list)
    to: list[list[str]] = field(default_factory=list)
    cc: list[list[str]] = field(default_factory=list)
    bcc: list[list[str]] = field(default_factory=list)
    snippet: list[str | None] = field(default_factory=list)
    received_at: list[datetime | None] = field(default_factory=list)
    labels: list[list[str]] = field(default_factory=list)
    is_read: list[bool] = field(default_factory=list)
    has_attachments: list[bool] = field(default_factory=list)
    from_name: list[str | None] = field(default_factory=list)
    to_names: list[list[str]] = field(default_factory=list)
    cc_names: list[list[str]] = field(default_factory=list)
    bcc_names: list[list[str]] = field(default_factory=list)
    sent_at: list[datetime | None] = field(default_factory=list)
    in_reply_to: list[str | None] = field(default_factory=list)
    references: list[list[str]] = field(default_factory=list)
    size: list[int | None] = field(default_factory=list)
    importance: list[str | None] = field(default_factory=list)
    flagged: list[bool] = field(default_factory=list)

    @classmethod
    def of(cls, messages: Iterable[NormalizedMessage]) -> MessageBatch:
        batch = cls()
        for message in messages:
            batch.append(message)
        return batch

    def append(self, message: NormalizedMessage) -> None:
        for name in _BATCH_COLUMNS:
            getattr(self, name).append(getattr(message, name))

    def extend(self, other: MessageBatch) -> None:
        for name in _BATCH_COLUMNS:
            getattr(self, name).extend(getattr(other, name))

    def __len__(self) -> int:
        return len(self.provider_message_id)

    def __getitem__(self, index: int) -> NormalizedMessage:
        return NormalizedMessage(**{name: getattr(self, name)[index] for name in _BATCH_COLUMNS})

    def __iter__(self) -> Iterator[NormalizedMessage]:
        return (self[i] for i in range(len(self)))

    def latest(self) -> MessageBatch:
        """One row per message, the last version winning (a page may repeat a message)."""
        ids = self.provider_message_id
        last = {message_id: i for i, message_id in enumerate(ids)}
        if len(last) == len(ids):
            return self
        return self.pick(sorted(last.values()))

    def remove(self, drop: Iterable[int]) -> None:
        """Drop the rows at these indices, in place. A few rows out of a page cost a few
        list deletions per column instead of a copy of every column (`pick`)."""
        for index in sorted(set(drop), reverse=True):
            for name in _BATCH_COLUMNS:
                del getattr(self, name)[index]

    def pick(self, keep: Sequence[int]) -> MessageBatch:
        """The rows at these indices, in this order."""
        batch = MessageBatch()
        for name in _BATCH_COLUMNS:
            column = getattr(self, name)
            getattr(batch, name).extend(column[i] for i in keep)
        return batch


@dataclass(frozen=True, slots=True)
class LabelChange:
    """A partial update: only labels and read state changed (Gmail labelsAdded/Removed)."""

    provider_message_id: str
    add: tuple[str, ...] = ()
    remove: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class StreamInfo:
    """One independently cursored sequence of changes: a Graph folder, the Gmail mailbox."""

    key: str
    name: str
    total_estimate: int | None = None
    # Labels every message of this stream carries (INBOX for the Inbox folder, …).
    labels: tuple[str, ...] = ()


Cursor = dict[str, Any]


@dataclass(slots=True)
class Page:
    """What one fetch produced. The engine commits all of it, with `cursor`, in one transaction."""

    upserts: MessageBatch = field(default_factory=MessageBatch)
    # Provider ids that left this stream. Scoped to the stream: a message that moved to
    # another folder and was already written there is not deleted by the old folder's entry.
    deletes: list[str] = field(default_factory=list)
    label_changes: list[LabelChange] = field(default_factory=list)
    # The cursor to store once this page is committed; resuming from it must never skip work.
    cursor: Cursor = field(default_factory=dict)
    # True when the stream has caught up (a deltaLink, the end of history).
    caught_up: bool = False
    # True when this page ends a full enumeration started from an empty cursor: the engine
    # then removes rows of this stream that the enumeration did not see.
    full_sync_complete: bool = False
    total_estimate: int | None = None


BodyFormat = Literal["text", "html"]


@dataclass(frozen=True, slots=True)
class AttachmentInfo:
    """One attachment as the provider describes it; `attachment_id` is the provider's own
    (stable across requests: Gmail's changing attachmentId never leaves its provider)."""

    attachment_id: str
    name: str | None
    content_type: str | None
    size: int | None
    # An image shown inside the HTML body (cid:), not something the user attached.
    inline: bool = False
    content_id: str | None = None


@dataclass(frozen=True, slots=True)
class MessageBody:
    """A body fetched at request time, as the provider has it (not yet sanitized)."""

    format: BodyFormat
    content: str
    # The message's attachments when the provider learned them with the body (or needed
    # them to resolve cid: links); empty when it did not look.
    attachments: Sequence[AttachmentInfo] = ()


@dataclass(slots=True)
class AttachmentContent:
    """An attachment being downloaded: its description and its bytes, chunk by chunk."""

    info: AttachmentInfo
    chunks: AsyncIterator[bytes]


@dataclass(frozen=True, slots=True)
class SearchWindow:
    """Messages received in [start, end); None is open (before everything, after everything)."""

    start: datetime | None = None
    end: datetime | None = None


@dataclass(slots=True)
class SearchPage:
    """One page of a provider-side search for a participant, within one window."""

    # By stream key, like `recent`: results in streams the caller did not name are left out.
    upserts: dict[str, MessageBatch] = field(default_factory=dict)
    # The next page of the same search; None when the window's results are exhausted (or
    # the provider's cap stops it).
    cursor: Cursor | None = None
    # Results the provider returned on this page, including any left out of `upserts`.
    results: int = 0
    # receivedDateTime of every result on this page (to split a window at the cap).
    received: list[datetime] = field(default_factory=list)
    # The provider's estimate of the whole window's results, when it gives one.
    estimate: int | None = None


@runtime_checkable
class ParticipantSearch(Protocol):
    """A provider that finds, server side, the messages a given address took part in."""

    # Results one search returns at most, whatever the paging (Graph: 1,000); None: no cap.
    search_cap: int | None

    async def search_participant(
        self,
        ctx: SyncContext,
        streams: Sequence[StreamInfo],
        address: str,
        window: SearchWindow,
        cursor: Cursor | None,
    ) -> SearchPage:
        """One page of messages from, to, cc or bcc `address` received in `window`, after
        `cursor` (None: the first page). Raises CursorInvalidError for a page cursor the
        provider no longer accepts (the window is then searched again from its start)."""


@runtime_checkable
class LiveCursor(Protocol):
    """A provider that can follow a stream from now on without enumerating it first."""

    async def live_cursor(self, ctx: SyncContext, stream: StreamInfo) -> Cursor | None:
        """The stream's cursor as of now; None when the provider cannot give one."""


@dataclass(slots=True)
class WindowPage:
    """One page of a stream's messages received within one window (a partition)."""

    upserts: MessageBatch = field(default_factory=MessageBatch)
    # Where the next page of the same window starts; None when the window is exhausted.
    # It never holds the window's bounds: the window comes with every call and may shrink.
    cursor: Cursor | None = None
    # Every message of the window received before this moment has been listed (a provider
    # that lists oldest first), so the rest of the window may be split; None: cannot say.
    listed_before: datetime | None = None


@runtime_checkable
class WindowedListing(Protocol):
    """A provider that can list a stream's messages by received-time windows, so a large
    stream's first enumeration runs as partitions on many workers at once."""

    async def backfill_cursor(self, ctx: SyncContext, stream: StreamInfo) -> Cursor:
        """The stream's cursor as of now: following it (fetch_page) replays every change
        made after this call, so windows listed later lose nothing that changed meanwhile."""

    async def received_range(
        self, ctx: SyncContext, stream: StreamInfo
    ) -> tuple[datetime, datetime] | None:
        """The oldest and newest received time in the stream; None when it is empty."""

    async def list_window(
        self,
        ctx: SyncContext,
        stream: StreamInfo,
        window: SearchWindow,
        cursor: Cursor | None,
    ) -> WindowPage:
        """One page of the messages received in `window`, after `cursor` (None: the first)."""


@dataclass(frozen=True, slots=True)
class ChangeHint:
    """What one change notification points to, so the pass it owes follows only that.

    `stream`: the stream's key when the notification names it (Gmail's history). Otherwise
    `message`: a provider message id, whose stream the store knows if the message was
    synced; with `locate`, the provider is also asked where the message is now (it may be
    new, or have moved). Both empty: every stream.
    """

    stream: str = ""
    message: str = ""
    locate: bool = False

    @property
    def everything(self) -> bool:
        return not (self.stream or self.message)


EVERY_STREAM = ChangeHint()


@dataclass(slots=True)
class StreamListing:
    """The streams, and what the provider wants back the next time it lists them (opaque,
    JSON; the engine keeps it in PostgreSQL so any worker continues from it)."""

    streams: Sequence[StreamInfo]
    state: dict[str, Any]


@runtime_checkable
class CatalogedStreams(Protocol):
    """A provider whose stream discovery is worth keeping between passes and workers
    (Graph: a folder enumeration and the well-known folder lookups, then folder delta)."""

    async def list_streams_after(
        self, ctx: SyncContext, state: Mapping[str, Any] | None
    ) -> StreamListing:
        """The streams as of now, continuing from `state` (None: discover from scratch)."""


@runtime_checkable
class MessageLocator(Protocol):
    """A provider that can say in which stream a message is now (one request each)."""

    async def locate(self, ctx: SyncContext, message_ids: Sequence[str]) -> dict[str, str | None]:
        """Each message's stream key; None for a message the provider no longer has."""


@dataclass(frozen=True, slots=True)
class Subscription:
    """A push channel at the provider (Graph subscription, Gmail watch)."""

    subscription_id: str
    expires_at: datetime
    # Graph clientState; the engine stores it encrypted.
    client_state: str | None = None
    resource: str | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)
    # The channel at the provider when several subscriptions share one (Gmail keeps one
    # watch per address: users.stop ends it for every mailbox of that address); None when
    # this subscription is a channel of its own (a Graph subscription).
    channel: str | None = None


@dataclass(frozen=True, slots=True)
class ScopeCount:
    """What the provider says one part of a mailbox holds, read cheaply (a folder's item
    counts, a label's message counts), for the completion monitor to compare with the store.

    `kind` "stream": the stored rows of stream `key`; "label": the stored rows carrying the
    label `key`, as the store writes it (system ids as they are, user labels by name).
    `repair` says how a real difference is mended: "restart" enumerates the stream again
    under a new generation; "list" lists the scope's ids (`scope_ids`) and diffs them with
    the store, fetching only the messages it lacks (`get_messages`) into `stream`.
    """

    kind: Literal["stream", "label"]
    key: str
    total: int
    # None when the provider does not count unread messages for this scope.
    unread: int | None
    repair: Literal["restart", "list"]
    # The stream whose rows hold the scope's messages (a label's, for a "list" repair).
    stream: str
    # The provider's own name for the scope (a Gmail label id); opaque to the engine.
    ref: str | None = None


@dataclass(frozen=True, slots=True)
class ProviderCounts:
    scopes: list[ScopeCount]
    # False when the mailbox changed at the provider while it was being counted (Gmail's
    # history id moved between the first and the last request): compare nothing this time.
    stable: bool = True


@dataclass(frozen=True, slots=True)
class ProviderLimits:
    """A provider's documented per-mailbox limits, enforced across all workers by the engine."""

    max_concurrency: int | None = None
    units_per_second: float | None = None
    # The most messages one listing page returns (Graph `$top` 1000; Gmail maxResults 500).
    page_size: int | None = None


class RateGate(Protocol):
    """Per-mailbox limits shared by every worker (Graph concurrency, Gmail quota units)."""

    def request(self, cost: int = 1) -> AbstractAsyncContextManager[None]:
        """Hold one concurrent-request slot and spend `cost` quota units for one request."""

    async def pause(self, seconds: float) -> None:
        """Tell every worker to send nothing for this mailbox for `seconds` (Retry-After)."""

    async def tighten(self) -> None:
        """The provider refused a request for concurrency although our limit allowed it
        (other clients of the mailbox use its slots too): allow fewer at once for a while."""

    async def refund(self, units: int) -> None:
        """Give back quota units spent on work the provider refused without charging
        (Gmail batch parts refused for concurrency)."""


@dataclass(slots=True)
class SyncContext:
    account: Account
    # Returns a currently valid access token; refreshes it when it is near expiry.
    # Providers call it for every request and never keep the result, so a token that
    # expires during a long sync is never sent.
    access_token: Callable[[], Awaitable[str]]
    gate: RateGate
    # Set when a person is waiting for the answer (an API request): a provider that would
    # wait longer than this for a Retry-After or a backoff raises ThrottledError instead.
    max_wait: float | None = None


@runtime_checkable
class MailProvider(Protocol):
    name: ProviderName

    def limits(self) -> ProviderLimits:
        """Per-mailbox limits the engine's RateGate must keep."""

    async def refresh_token(self, account: Account, refresh_token: str | None) -> TokenSet:
        """Exchange the refresh token (or client credentials for app-only) for a new TokenSet.

        Raises AuthExpiredError for `invalid_grant`, TransientError for network trouble.
        """

    async def account_address(self, ctx: SyncContext) -> str | None:
        """The mailbox's own address at the provider, for a connect that did not give one
        (pushes are matched to mailboxes by address)."""

    async def list_streams(self, ctx: SyncContext) -> Sequence[StreamInfo]:
        """The streams to sync now, with totals for progress."""

    async def fetch_page(self, ctx: SyncContext, stream: StreamInfo, cursor: Cursor | None) -> Page:
        """One page of changes after `cursor`; None starts a full enumeration of the stream."""

    async def recent(
        self, ctx: SyncContext, streams: Sequence[StreamInfo], limit: int
    ) -> dict[str, MessageBatch]:
        """The mailbox's newest `limit` messages by stream key, shown before a first backfill
        reaches them. May be empty: it is only a head start."""

    async def fetch_body(
        self, ctx: SyncContext, provider_message_id: str, fmt: BodyFormat
    ) -> MessageBody:
        """The message's body in `fmt` (converted when the message lacks that form).
        Raises MessageGone when the provider no longer has the message."""

    async def list_attachments(
        self, ctx: SyncContext, provider_message_id: str
    ) -> Sequence[AttachmentInfo]:
        """Every attachment of the message, inline images included (marked `inline`)."""

    def open_attachment(
        self, ctx: SyncContext, provider_message_id: str, attachment_id: str
    ) -> AbstractAsyncContextManager[AttachmentContent]:
        """Stream one attachment: memory must not grow with its size. MessageGone when the
        message or the attachment is gone."""

    async def subscribe(self, ctx: SyncContext) -> Subscription | None:
        """Create the push channel; None when push is not configured."""

    async def renew(self, ctx: SyncContext, subscription: Subscription) -> Subscription:
        """Extend it; raises CursorInvalidError-free ProviderError subclasses only."""

    async def unsubscribe(self, ctx: SyncContext, subscription: Subscription) -> None:
        """Remove it; a channel the provider no longer knows is not an error."""

    async def counts(self, ctx: SyncContext, streams: Sequence[StreamInfo]) -> ProviderCounts:
        """Cheap counts of what the mailbox holds (a few requests, whatever its size), for
        the completion monitor to compare with the store."""

    async def scope_ids(
        self, ctx: SyncContext, scope: ScopeCount, *, unread_only: bool = False
    ) -> list[str]:
        """Every message id the provider holds in `scope` (scopes whose repair is "list"),
        or only its unread ones."""

    async def get_messages(
        self, ctx: SyncContext, stream: StreamInfo, ids: Sequence[str]
    ) -> MessageBatch:
        """The current state of these messages of `stream`, in order; ids the provider no
        longer has are left out."""


class SubscriptionGone(ProviderError):
    """Renewal found the subscription deleted at the provider: create a new one."""


async def aiter_pages(
    provider: MailProvider, ctx: SyncContext, stream: StreamInfo, cursor: Cursor | None
) -> AsyncIterator[Page]:
    """Follow a stream until it catches up. Tests and benchmarks use it; the engine pages itself."""
    while True:
        page = await provider.fetch_page(ctx, stream, cursor)
        yield page
        cursor = page.cursor
        if page.caught_up:
            return
