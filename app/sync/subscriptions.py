"""Push channels (Graph subscriptions, Gmail watches): create, renew, recreate, remove."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from typing import TypeVar

from app.db.repositories.credentials import CredentialRepository
from app.db.repositories.mailboxes import MailboxRepository
from app.db.repositories.monitor import MonitorRepository
from app.db.repositories.subscriptions import StoredSubscription, SubscriptionRepository
from app.providers.base import (
    AccessTokenRejected,
    MailProvider,
    ProviderError,
    Subscription,
    SubscriptionGone,
    SyncContext,
)
from app.sync import states
from app.sync.binding import bind
from app.sync.runtime import Runtime
from app.sync.states import PushState
from app.sync.tokens import TokenSource

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(slots=True)
class _Bound:
    provider: MailProvider
    ctx: SyncContext
    tokens: TokenSource


class SubscriptionService:
    def __init__(self, rt: Runtime) -> None:
        self.rt = rt

    async def _bind(self, mailbox_id: uuid.UUID, *, live_only: bool = True) -> _Bound | None:
        async with self.rt.sessions() as session:
            mailbox = await MailboxRepository(session).get(mailbox_id)
            has_credentials = await CredentialRepository(session, self.rt.cipher).get(mailbox_id)
        if mailbox is None or has_credentials is None:
            return None
        if live_only and mailbox.status in states.PARKED:
            return None
        provider, ctx, tokens = bind(self.rt, mailbox)
        return _Bound(provider, ctx, tokens)

    async def _store(self, mailbox_id: uuid.UUID, provider: str, sub: Subscription) -> None:
        async with self.rt.sessions() as session, session.begin():
            await SubscriptionRepository(session, self.rt.cipher).replace_active(
                mailbox_id,
                provider=provider,
                subscription_id=sub.subscription_id,
                expires_at=sub.expires_at,
                client_state=sub.client_state,
                resource=sub.resource,
                extra=dict(sub.extra),
                channel=sub.channel,
            )

    async def ensure(self, mailbox_id: uuid.UUID) -> Subscription | None:
        """Create the channel if the mailbox has none; renew it if it has one. The mailbox's
        push state follows: active, none (push not configured) or failing."""
        bound = await self._bind(mailbox_id)
        if bound is None:
            return None
        try:
            async with self.rt.sessions() as session:
                current = await SubscriptionRepository(session, self.rt.cipher).active_for(
                    mailbox_id
                )
            if current is not None:
                sub = await self.renew(mailbox_id, current, bound)
            else:
                sub = await self._call(bound, lambda: bound.provider.subscribe(bound.ctx))
                if sub is not None:
                    await self._store(mailbox_id, bound.provider.name, sub)
                    log.info(
                        "mailbox %s: push subscription %s created", mailbox_id, sub.subscription_id
                    )
        except ProviderError:
            await self._push_state(mailbox_id, PushState.FAILING)
            raise
        await self._push_state(mailbox_id, PushState.NONE if sub is None else PushState.ACTIVE)
        return sub

    async def _push_state(self, mailbox_id: uuid.UUID, state: PushState) -> None:
        settings = self.rt.settings
        poll_within = None
        if state is not PushState.ACTIVE:
            poll_within = states.pass_interval(
                state,
                interval=settings.sync_interval_seconds,
                without_push=settings.sync_poll_without_push_seconds,
            )
        async with self.rt.sessions() as session, session.begin():
            changed = await MonitorRepository(session).set_push_state(
                [mailbox_id], state, poll_within=poll_within
            )
        if changed:
            log.info("mailbox %s: push %s", mailbox_id, state.value)

    async def renew(
        self, mailbox_id: uuid.UUID, current: StoredSubscription, bound: _Bound | None = None
    ) -> Subscription | None:
        bound = bound or await self._bind(mailbox_id)
        if bound is None:
            return None
        existing = Subscription(
            subscription_id=current.subscription_id,
            expires_at=current.expires_at,
            client_state=current.client_state,
            resource=current.resource,
            extra=current.extra,
        )
        try:
            sub = await self._call(bound, lambda: bound.provider.renew(bound.ctx, existing))
        except SubscriptionGone:
            log.info(
                "mailbox %s: subscription %s is gone; recreating",
                mailbox_id,
                current.subscription_id,
            )
            recreated = await self._call(bound, partial(bound.provider.subscribe, bound.ctx))
            if recreated is None:
                return None
            sub = recreated
        await self._store(mailbox_id, bound.provider.name, sub)
        return sub

    async def remove_all(self, mailbox_id: uuid.UUID) -> None:
        """Delete the mailbox's channels at the provider, then forget them."""
        bound = await self._bind(mailbox_id, live_only=False)
        async with self.rt.sessions() as session:
            subs = await SubscriptionRepository(session, self.rt.cipher).all_for_mailbox(mailbox_id)
        if bound is not None:
            for stored in subs:
                if stored.status != "active":
                    continue
                if stored.channel is not None and await self._shared(stored.channel, mailbox_id):
                    # Another mailbox of the same address still receives through it.
                    log.info(
                        "mailbox %s: push channel kept for the other mailboxes of its address",
                        mailbox_id,
                    )
                    continue
                sub = Subscription(
                    subscription_id=stored.subscription_id,
                    expires_at=stored.expires_at,
                    client_state=stored.client_state,
                    resource=stored.resource,
                    extra=stored.extra,
                )
                await self._call(bound, partial(bound.provider.unsubscribe, bound.ctx, sub))
        async with self.rt.sessions() as session, session.begin():
            await SubscriptionRepository(session, self.rt.cipher).delete_for_mailbox(mailbox_id)

    async def _shared(self, channel: str, mailbox_id: uuid.UUID) -> bool:
        async with self.rt.sessions() as session:
            return await SubscriptionRepository(session, self.rt.cipher).channel_used_by_others(
                channel, mailbox_id
            )

    @staticmethod
    async def _call(bound: _Bound, call: Callable[[], Awaitable[T]]) -> T:
        try:
            return await call()
        except AccessTokenRejected:
            await bound.tokens.after_rejection()
            return await call()
