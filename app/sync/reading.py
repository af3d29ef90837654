"""Bodies and attachments, fetched from the provider while a person waits for them.

The request gets its access token exactly as the worker does (TokenSource: read from the
store at use time, refreshed near expiry, once after a 401, serialized with the worker's
refreshes) and passes the mailbox's shared rate gate, so a reader never pushes a mailbox
past the provider's limits. What differs is patience: a wait longer than
READ_MAX_WAIT_SECONDS (a Retry-After, a backoff, a paused gate) is not waited, it is
answered as ThrottledError with the wait, which the API turns into 503 + Retry-After.
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from typing import TypeVar

from app.db.models import Mailbox
from app.db.repositories.reading import ReadRepository
from app.providers.base import (
    AccessTokenRejected,
    AttachmentContent,
    AttachmentInfo,
    AuthExpiredError,
    BodyFormat,
    MessageBody,
)
from app.sync.binding import bind
from app.sync.runtime import Runtime
from app.sync.states import PARKED, MailboxStatus

T = TypeVar("T")


class MailboxUnavailable(Exception):
    """The mailbox cannot reach its provider until the user reconnects it."""


class _Reader:
    def __init__(self, rt: Runtime, mailbox: Mailbox) -> None:
        if mailbox.status in PARKED:
            detail = mailbox.last_error if mailbox.status == MailboxStatus.AUTH_EXPIRED else None
            raise MailboxUnavailable(
                "the mailbox must be reconnected before its content can be read"
                + (f" ({detail})" if detail else "")
            )
        self.provider, self.ctx, self.tokens = bind(
            rt, mailbox, max_wait_seconds=rt.settings.read_max_wait_seconds
        )

    async def call(self, call: Callable[[], Awaitable[T]]) -> T:
        """One 401 earns one refresh and one retry, as in the engine."""
        try:
            return await call()
        except AccessTokenRejected:
            await self.tokens.after_rejection()
            try:
                return await call()
            except AccessTokenRejected as exc:
                raise AuthExpiredError(
                    "the provider rejected a freshly refreshed access token; reconnect the mailbox"
                ) from exc


class ReadService:
    def __init__(self, rt: Runtime) -> None:
        self.rt = rt

    async def body(
        self, mailbox: Mailbox, provider_message_id: str, fmt: BodyFormat
    ) -> MessageBody:
        settings = self.rt.settings
        ttl = settings.body_cache_seconds
        if ttl:
            async with self.rt.sessions() as session:
                cached = await ReadRepository(session).cached_body(
                    mailbox.id, provider_message_id, fmt, ttl
                )
            if cached is not None:
                return MessageBody(
                    fmt, cached["content"], [AttachmentInfo(**a) for a in cached["attachments"]]
                )
        reader = _Reader(self.rt, mailbox)
        body = await reader.call(
            lambda: reader.provider.fetch_body(reader.ctx, provider_message_id, fmt)
        )
        if ttl and len(body.content.encode()) <= settings.body_cache_max_bytes:
            async with self.rt.sessions() as session, session.begin():
                await ReadRepository(session).store_body(
                    mailbox.id,
                    provider_message_id,
                    fmt,
                    body.content,
                    [dataclasses.asdict(a) for a in body.attachments],
                    ttl,
                )
        return body

    async def attachments(
        self, mailbox: Mailbox, provider_message_id: str
    ) -> Sequence[AttachmentInfo]:
        reader = _Reader(self.rt, mailbox)
        return await reader.call(
            lambda: reader.provider.list_attachments(reader.ctx, provider_message_id)
        )

    @asynccontextmanager
    async def attachment(
        self, mailbox: Mailbox, provider_message_id: str, attachment_id: str
    ) -> AsyncIterator[AttachmentContent]:
        reader = _Reader(self.rt, mailbox)
        async with AsyncExitStack() as stack:
            # The 401-and-refresh retry applies to opening the download (its headers),
            # never to a download already under way.
            for attempt in (1, 2):
                try:
                    content = await stack.enter_async_context(
                        reader.provider.open_attachment(
                            reader.ctx, provider_message_id, attachment_id
                        )
                    )
                    break
                except AccessTokenRejected as exc:
                    if attempt == 2:
                        raise AuthExpiredError(
                            "the provider rejected a freshly refreshed access token; "
                            "reconnect the mailbox"
                        ) from exc
                    await reader.tokens.after_rejection()
            yield content

    async def forget(self, mailbox_id: uuid.UUID) -> None:
        async with self.rt.sessions() as session, session.begin():
            await ReadRepository(session).forget_bodies(mailbox_id)
