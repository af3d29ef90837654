"""What connect, disconnect and status mean; the routes only translate HTTP to these calls."""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Protocol

from sqlalchemy.ext.asyncio import AsyncSession

from app.db.models import Mailbox
from app.db.repositories.credentials import CredentialRepository
from app.db.repositories.cursors import CursorRepository
from app.db.repositories.mailbox_actions import MailboxActions
from app.db.repositories.mailboxes import ConnectedMailbox, MailboxRepository
from app.db.repositories.messages import MessageRepository
from app.db.repositories.outbox import OutboxRepository
from app.db.repositories.reading import ReadRepository
from app.events.changes import MESSAGES_CHANGED, PageChanges
from app.sync import states
from app.sync.cases.service import resume_mailbox_cases
from app.sync.cases.states import MailboxScope
from app.sync.queue import connect_job_suffix, enqueue_cleanup, enqueue_sync
from app.sync.runtime import Runtime


class MailboxNotFound(Exception):
    pass


class ScopeConflict(Exception):
    """The account is connected already, with the other scope."""


class Transaction(Protocol):
    """The caller's unit of work (app.api.deps.UnitOfWork): a session and after-commit jobs."""

    session: AsyncSession
    rt: Runtime

    def after_commit(self, action: Callable[[], Awaitable[object]]) -> None: ...


@dataclass(frozen=True, slots=True)
class ConnectCommand:
    user_id: str
    provider: str
    auth_mode: str
    email: str | None
    # Secrets: kept out of repr() so a logged command never carries a token.
    access_token: str | None = field(repr=False)
    refresh_token: str | None = field(repr=False)
    expires_in: int | None
    tenant_id: str | None = None
    provider_user_id: str | None = None
    scope: MailboxScope = MailboxScope.FULL


def account_key(cmd: ConnectCommand) -> str:
    if cmd.email:
        return cmd.email.lower()
    if cmd.provider_user_id:
        return f"user:{cmd.provider_user_id.lower()}"
    # Without an address the refresh token is all that identifies the grant; callers that
    # send `email` get idempotent reconnects, which the README recommends.
    assert cmd.refresh_token is not None
    return "grant:" + hashlib.sha256(cmd.refresh_token.encode()).hexdigest()[:24]


async def connect(uow: Transaction, cmd: ConnectCommand) -> ConnectedMailbox:
    """Create or revive the mailbox and store its credentials in the caller's transaction;
    the first sync and the push subscription are enqueued after it commits."""
    session = uow.session
    # The job's id is stored with the mailbox: the scheduler's rescue of a first sync that
    # is due re-enqueues this very job (collapsed with it while it waits in Redis).
    suffix = connect_job_suffix()
    mailbox = await MailboxRepository(session).upsert_for_connect(
        user_id=cmd.user_id,
        provider=cmd.provider,
        account_key=account_key(cmd),
        email=cmd.email.lower() if cmd.email else None,
        auth_mode=cmd.auth_mode,
        tenant_id=cmd.tenant_id,
        provider_user_id=cmd.provider_user_id,
        scope=cmd.scope,
        connect_job=suffix,
    )
    if mailbox.scope != cmd.scope:
        raise ScopeConflict(
            f"this account is connected with scope {mailbox.scope!r}; a mailbox keeps the "
            "scope it was first connected with"
        )
    credentials = CredentialRepository(session, uow.rt.cipher)
    if cmd.auth_mode == "application":
        # App-only: the worker obtains tokens with the client credentials; store an expired
        # placeholder so the first use mints a real token.
        await credentials.put(
            mailbox.id, access_token="", refresh_token=None, expires_at=datetime.now(UTC)
        )
    else:
        assert cmd.access_token is not None and cmd.expires_in is not None
        await credentials.put(
            mailbox.id,
            access_token=cmd.access_token,
            refresh_token=cmd.refresh_token,
            expires_at=datetime.now(UTC) + timedelta(seconds=cmd.expires_in),
        )
    redis = uow.rt.redis
    mailbox_id = mailbox.id
    # A reconnect while a sync job is queued must not be swallowed by job-id coalescing:
    # the new credentials deserve a pass of their own.
    uow.after_commit(lambda: enqueue_sync(redis, mailbox_id, suffix=suffix))
    # The push channel is created (or renewed) by the worker that takes this job, at the
    # service's pace (app/sync/jobs.py): connect waits for nothing more.
    if mailbox.revived:
        # A reconnect: case searches parked by a refused grant resume from their
        # checkpoints.
        await resume_mailbox_cases(uow, mailbox_id)
    return mailbox


async def disconnect(uow: Transaction, mailbox_ids: list[uuid.UUID], *, purge: bool) -> None:
    session = uow.session
    repo = MailboxRepository(session)
    redis = uow.rt.redis
    for mailbox_id in mailbox_ids:
        await repo.mark_disconnected(mailbox_id)
        if purge:
            purged = await MessageRepository(session).purge(mailbox_id)
            if purged and uow.rt.settings.events_enabled:
                # Consumers keep copies too: a purge deletes them there as well.
                changes = PageChanges(None)
                changes.deleted(purged)
                await OutboxRepository(session).add(
                    mailbox_id, MESSAGES_CHANGED, changes.payload() or {}
                )
            await ReadRepository(session).forget_bodies(mailbox_id)
        uow.after_commit(partial(enqueue_cleanup, redis, mailbox_id))


async def resolve_targets(
    session: AsyncSession, user_id: str, mailbox_id: uuid.UUID | None, provider: str | None
) -> list[uuid.UUID]:
    repo = MailboxRepository(session)
    if mailbox_id is not None:
        mailbox = await repo.get_for_user(user_id, mailbox_id)
        if mailbox is None:
            raise MailboxNotFound(str(mailbox_id))
        return [mailbox.id]
    found = [m.id for m in await repo.list_for_user(user_id) if m.provider == provider]
    if not found:
        raise MailboxNotFound(f"no {provider} mailbox")
    return found


@dataclass(frozen=True, slots=True)
class MailboxView:
    """A mailbox as status reports it: its row and what its streams say."""

    mailbox: Mailbox
    streams: list[states.StreamProgress]

    @property
    def percent(self) -> int:
        m = self.mailbox
        return states.percent(
            m.status,
            self.streams,
            messages_synced=m.messages_synced,
            total_estimate=m.messages_total_estimate,
        )

    @property
    def streams_behind(self) -> int:
        return states.streams_behind(self.streams)

    @property
    def in_sync(self) -> bool:
        return states.in_sync(
            self.mailbox.status,
            self.streams,
            owed=self.mailbox.pending_since is not None,
            phase=self.mailbox.phase,
        )

    @property
    def push(self) -> states.PushState:
        return states.PushState(self.mailbox.push_state)


async def status_of(session: AsyncSession, user_id: str) -> list[MailboxView]:
    mailboxes = await MailboxRepository(session).list_for_user(user_id)
    streams = await CursorRepository(session).progress([m.id for m in mailboxes])
    return [MailboxView(m, streams.get(m.id, [])) for m in mailboxes]


class MailboxParked(Exception):
    """The mailbox cannot sync until the user reconnects it, or it is paused."""


async def sync_now(uow: Transaction, mailbox_id: uuid.UUID) -> None:
    if not await MailboxActions(uow.session).request_sync(mailbox_id):
        raise MailboxParked("the mailbox is paused or must be reconnected; nothing to sync")
    redis = uow.rt.redis
    # Its own job id: a queued or running pass must not swallow the user's request.
    uow.after_commit(lambda: enqueue_sync(redis, mailbox_id, suffix=f"now{uuid.uuid4().hex[:8]}"))


async def resync(uow: Transaction, mailbox_id: uuid.UUID) -> None:
    if not await MailboxActions(uow.session).resync(mailbox_id):
        raise MailboxParked("the mailbox is paused or must be reconnected; nothing to rebuild")
    redis = uow.rt.redis
    uow.after_commit(
        lambda: enqueue_sync(redis, mailbox_id, suffix=f"resync{uuid.uuid4().hex[:8]}")
    )


async def pause(uow: Transaction, mailbox_id: uuid.UUID) -> None:
    await MailboxActions(uow.session).pause(mailbox_id)


async def resume(uow: Transaction, mailbox_id: uuid.UUID) -> None:
    await MailboxActions(uow.session).resume(mailbox_id)
    redis = uow.rt.redis
    uow.after_commit(
        lambda: enqueue_sync(redis, mailbox_id, suffix=f"resume{uuid.uuid4().hex[:8]}")
    )


async def view_of(session: AsyncSession, user_id: str, mailbox_id: uuid.UUID) -> MailboxView | None:
    mailbox = await MailboxRepository(session).get_for_user(user_id, mailbox_id)
    if mailbox is None:
        return None
    streams = await CursorRepository(session).progress([mailbox.id])
    return MailboxView(mailbox, streams.get(mailbox.id, []))


async def readable_mailboxes(
    session: AsyncSession, user_id: str, mailbox_id: uuid.UUID | None
) -> list[uuid.UUID]:
    """The user's mailboxes a read covers: the one asked for, or all of them."""
    repo = MailboxRepository(session)
    if mailbox_id is not None:
        if await repo.get_for_user(user_id, mailbox_id) is None:
            raise MailboxNotFound(str(mailbox_id))
        return [mailbox_id]
    return [m.id for m in await repo.list_for_user(user_id)]
