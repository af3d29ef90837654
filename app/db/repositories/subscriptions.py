"""Push subscriptions (Graph subscriptions, Gmail watches); their notifications are logged in
app/db/repositories/notifications.py."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from app.crypto import TokenCipher
from app.sync.states import MailboxStatus

# Graph may still deliver to a subscription id for a while after we replaced it.
REPLACED_GRACE_SECONDS = 3600


@dataclass(frozen=True, slots=True)
class StoredSubscription:
    mailbox_id: uuid.UUID
    provider: str
    subscription_id: str
    resource: str | None
    client_state: str | None
    expires_at: datetime
    status: str
    extra: dict[str, Any]
    channel: str | None = None

    def __repr__(self) -> str:
        return f"StoredSubscription({self.subscription_id!r}, mailbox={self.mailbox_id})"


class SubscriptionRepository:
    def __init__(self, session: AsyncSession, cipher: TokenCipher) -> None:
        self.session = session
        self.cipher = cipher

    def _load(self, row: Any) -> StoredSubscription:
        client_state = self.cipher.decrypt(row.client_state) if row.client_state else None
        return StoredSubscription(
            mailbox_id=row.mailbox_id,
            provider=row.provider,
            subscription_id=row.subscription_id,
            resource=row.resource,
            client_state=client_state,
            expires_at=row.expires_at,
            status=row.status,
            extra=dict(row.extra or {}),
            channel=row.channel,
        )

    async def replace_active(
        self,
        mailbox_id: uuid.UUID,
        *,
        provider: str,
        subscription_id: str,
        expires_at: datetime,
        client_state: str | None,
        resource: str | None,
        extra: dict[str, Any] | None = None,
        channel: str | None = None,
    ) -> None:
        """Make this the mailbox's active subscription; the previous one stays mappable briefly."""
        await self.session.execute(
            text(
                "UPDATE subscriptions SET status = 'replaced', replaced_at = now() "
                "WHERE mailbox_id = :id AND status = 'active' AND subscription_id <> :sid"
            ),
            {"id": mailbox_id, "sid": subscription_id},
        )
        await self.session.execute(
            text(
                """
                INSERT INTO subscriptions (id, mailbox_id, provider, subscription_id, resource,
                                           client_state, expires_at, status, extra, channel)
                VALUES (:pk, :id, :provider, :sid, :resource, :client_state, :expires_at, 'active',
                        CAST(:extra AS jsonb), :channel)
                ON CONFLICT (subscription_id) DO UPDATE
                   SET expires_at = EXCLUDED.expires_at, status = 'active', replaced_at = NULL,
                       renewed_at = now(),
                       extra = EXCLUDED.extra, channel = EXCLUDED.channel,
                       client_state = COALESCE(EXCLUDED.client_state, subscriptions.client_state)
                """
            ),
            {
                "pk": uuid.uuid4(),
                "id": mailbox_id,
                "provider": provider,
                "sid": subscription_id,
                "resource": resource,
                "client_state": self.cipher.encrypt(client_state) if client_state else None,
                "expires_at": expires_at,
                "extra": json.dumps(extra or {}),
                "channel": channel,
            },
        )

    async def active_for(self, mailbox_id: uuid.UUID) -> StoredSubscription | None:
        result = await self.session.execute(
            text("SELECT * FROM subscriptions WHERE mailbox_id = :id AND status = 'active'"),
            {"id": mailbox_id},
        )
        row = result.first()
        return self._load(row) if row else None

    async def find(self, subscription_id: str) -> StoredSubscription | None:
        """The mailbox a notification belongs to: the active subscription or a recent one."""
        result = await self.session.execute(
            text(
                """
                SELECT * FROM subscriptions
                 WHERE subscription_id = :sid
                   AND (status = 'active'
                        OR replaced_at > now() - make_interval(secs => :grace))
                """
            ),
            {"sid": subscription_id, "grace": REPLACED_GRACE_SECONDS},
        )
        row = result.first()
        return self._load(row) if row else None

    async def due_for_renewal(self, every_seconds: int, limit: int) -> list[uuid.UUID]:
        """Renew daily (`every_seconds`) and always once half the granted lifetime is gone,
        so a subscription with a short lifetime is renewed well before it lapses."""
        result = await self.session.execute(
            text(
                """
                SELECT s.mailbox_id FROM subscriptions s JOIN mailboxes m ON m.id = s.mailbox_id
                 WHERE s.status = 'active'
                   AND m.status NOT IN ('disconnected', 'auth_expired')
                   AND (s.renewed_at < now() - make_interval(secs => :every)
                        OR s.expires_at - now() < (s.expires_at - s.renewed_at) / 2)
                 ORDER BY s.expires_at LIMIT :limit
                """
            ),
            {"every": every_seconds, "limit": limit},
        )
        return [row[0] for row in result.all()]

    async def without_subscription(self, provider: str, limit: int) -> list[uuid.UUID]:
        """Live mailboxes with no active subscription (creation failed or was removed)."""
        result = await self.session.execute(
            text(
                """
                SELECT m.id FROM mailboxes m
                 WHERE m.provider = :provider
                   AND m.status NOT IN ('disconnected', 'auth_expired')
                   AND NOT EXISTS (SELECT 1 FROM subscriptions s
                                    WHERE s.mailbox_id = m.id AND s.status = 'active')
                 LIMIT :limit
                """
            ),
            {"provider": provider, "limit": limit},
        )
        return [row[0] for row in result.all()]

    async def channel_used_by_others(self, channel: str, mailbox_id: uuid.UUID) -> bool:
        """Does another mailbox still connected rely on this provider-side channel? (Gmail
        keeps one watch per address; stopping it for one mailbox stops it for all.)"""
        result = await self.session.execute(
            text(
                """
                SELECT EXISTS (
                    SELECT 1 FROM subscriptions s JOIN mailboxes m ON m.id = s.mailbox_id
                     WHERE s.channel = :channel AND s.status = 'active'
                       AND s.mailbox_id <> :id AND m.status <> :disconnected)
                """
            ),
            {
                "channel": channel,
                "id": mailbox_id,
                "disconnected": MailboxStatus.DISCONNECTED.value,
            },
        )
        return bool(result.scalar_one())

    async def delete_for_mailbox(self, mailbox_id: uuid.UUID) -> None:
        await self.session.execute(
            text("DELETE FROM subscriptions WHERE mailbox_id = :id"), {"id": mailbox_id}
        )

    async def all_for_mailbox(self, mailbox_id: uuid.UUID) -> list[StoredSubscription]:
        result = await self.session.execute(
            text("SELECT * FROM subscriptions WHERE mailbox_id = :id"), {"id": mailbox_id}
        )
        return [self._load(row) for row in result.all()]
