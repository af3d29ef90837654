"""Mailbox rows: connect/disconnect, status, progress and the sync lease.

The lease is the only thing that makes a worker the writer of a mailbox. Every write a
sync makes goes through `fence`, which checks the fencing token and an unexpired lease in
the same statement that renews it, so a worker whose lease lapsed cannot write anything.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import and_, func, or_, select, text, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from app.db.models import Mailbox

# Statuses in which nothing may sync until the user acts.
PARKED = ("disconnected", "auth_expired")


class LeaseLost(Exception):
    """The lease lapsed or was taken over: the caller must stop and roll back."""


@dataclass(frozen=True, slots=True)
class Lease:
    mailbox_id: uuid.UUID
    owner: str
    fencing_token: int


class MailboxRepository:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    # -- connect / lookup -------------------------------------------------------------

    async def upsert_for_connect(
        self,
        *,
        user_id: str,
        provider: str,
        account_key: str,
        email: str | None,
        auth_mode: str,
        tenant_id: str | None,
        provider_user_id: str | None,
    ) -> Mailbox:
        """Create the mailbox, or revive the existing one for this account (reconnect)."""
        values = {
            "id": uuid.uuid4(),
            "user_id": user_id,
            "provider": provider,
            "account_key": account_key,
            "email": email,
            "auth_mode": auth_mode,
            "tenant_id": tenant_id,
            "provider_user_id": provider_user_id,
            "status": "pending",
            "next_sync_at": func.now(),
            "sync_requested_at": func.now(),
        }
        insert_stmt = insert(Mailbox).values(values)
        stmt = insert_stmt.on_conflict_do_update(
            constraint="uq_mailboxes_account",
            set_={
                "email": func.coalesce(insert_stmt.excluded.email, col(Mailbox.email)),
                "auth_mode": insert_stmt.excluded.auth_mode,
                "tenant_id": insert_stmt.excluded.tenant_id,
                "provider_user_id": insert_stmt.excluded.provider_user_id,
                # A reconnect clears auth_expired/error/disconnected; a healthy mailbox keeps
                # its status (it is syncing or connected with new credentials).
                "status": text(
                    "CASE WHEN mailboxes.status IN ('auth_expired', 'error', 'disconnected') "
                    "THEN 'pending' ELSE mailboxes.status END"
                ),
                "last_error": None,
                "last_error_at": None,
                "consecutive_failures": 0,
                "disconnected_at": None,
                "next_sync_at": func.now(),
                "sync_requested_at": func.now(),
                "updated_at": func.now(),
            },
        ).returning(Mailbox)
        result = await self.session.execute(
            select(Mailbox).from_statement(stmt).execution_options(populate_existing=True)
        )
        return result.scalar_one()

    async def get(self, mailbox_id: uuid.UUID) -> Mailbox | None:
        return await self.session.get(Mailbox, mailbox_id, populate_existing=True)

    async def get_for_user(self, user_id: str, mailbox_id: uuid.UUID) -> Mailbox | None:
        result = await self.session.execute(
            select(Mailbox).where(col(Mailbox.id) == mailbox_id, col(Mailbox.user_id) == user_id)
        )
        return result.scalar_one_or_none()

    async def list_for_user(self, user_id: str) -> Sequence[Mailbox]:
        result = await self.session.execute(
            select(Mailbox)
            .where(col(Mailbox.user_id) == user_id)
            .order_by(col(Mailbox.created_at), col(Mailbox.id))
        )
        return result.scalars().all()

    async def ids_by_email(self, provider: str, email: str) -> list[uuid.UUID]:
        result = await self.session.execute(
            select(col(Mailbox.id)).where(
                col(Mailbox.provider) == provider,
                func.lower(col(Mailbox.email)) == email.lower(),
                col(Mailbox.status).notin_(("disconnected",)),
            )
        )
        return list(result.scalars().all())

    async def learn_email(self, mailbox_id: uuid.UUID, email: str) -> None:
        """Fill in the address a connect did not give (never overwrites one)."""
        await self.session.execute(
            update(Mailbox)
            .where(col(Mailbox.id) == mailbox_id, col(Mailbox.email).is_(None))
            .values(email=email.lower(), updated_at=func.now())
        )

    # -- user actions -----------------------------------------------------------------

    async def mark_disconnected(self, mailbox_id: uuid.UUID) -> None:
        """Park the mailbox; bumping the fencing token refuses any in-flight sync's writes."""
        await self.session.execute(
            update(Mailbox)
            .where(col(Mailbox.id) == mailbox_id)
            .values(
                status="disconnected",
                phase=None,
                disconnected_at=func.now(),
                next_sync_at=None,
                lease_owner=None,
                lease_expires_at=None,
                fencing_token=col(Mailbox.fencing_token) + 1,
                updated_at=func.now(),
            )
        )

    async def request_sync(self, mailbox_ids: Sequence[uuid.UUID]) -> None:
        """Note that something changed; a sync that started earlier owes another pass."""
        if not mailbox_ids:
            return
        await self.session.execute(
            update(Mailbox)
            .where(col(Mailbox.id).in_(mailbox_ids))
            .values(sync_requested_at=func.now())
        )

    # -- lease ------------------------------------------------------------------------

    async def acquire_lease(self, mailbox_id: uuid.UUID, owner: str, seconds: int) -> Lease | None:
        """Take the lease if it is free or lapsed; None when another live worker holds it."""
        result = await self.session.execute(
            text(
                """
                UPDATE mailboxes
                   SET lease_owner = :owner,
                       lease_expires_at = now() + make_interval(secs => :seconds),
                       fencing_token = fencing_token + 1,
                       sync_started_at = now(),
                       updated_at = now()
                 WHERE id = :id
                   AND status NOT IN ('disconnected', 'auth_expired')
                   AND NOT paused
                   AND (lease_owner IS NULL OR lease_expires_at < now())
             RETURNING fencing_token
                """
            ),
            {"id": mailbox_id, "owner": owner, "seconds": seconds},
        )
        token = result.scalar_one_or_none()
        return None if token is None else Lease(mailbox_id, owner, int(token))

    async def fence(
        self,
        lease: Lease,
        seconds: int,
        *,
        synced_delta: int = 0,
        total_estimate: int | None = None,
        status: str | None = None,
        phase: str | None = None,
    ) -> None:
        """Check the lease, renew it and move progress, in one statement; raise LeaseLost."""
        result = await self.session.execute(
            text(
                """
                UPDATE mailboxes
                   SET lease_expires_at = now() + make_interval(secs => :seconds),
                       messages_synced = GREATEST(messages_synced + :delta, 0),
                       messages_total_estimate = COALESCE(:total, messages_total_estimate),
                       status = COALESCE(:status, status),
                       phase = COALESCE(:phase, phase),
                       updated_at = now()
                 WHERE id = :id AND fencing_token = :token AND lease_owner = :owner
                   AND lease_expires_at > now()
                   AND status NOT IN ('disconnected', 'auth_expired')
                """
            ),
            {
                "id": lease.mailbox_id,
                "token": lease.fencing_token,
                "owner": lease.owner,
                "seconds": seconds,
                "delta": synced_delta,
                "total": total_estimate,
                "status": status,
                "phase": phase,
            },
        )
        if result.rowcount != 1:  # type: ignore[attr-defined]
            raise LeaseLost(f"lease on mailbox {lease.mailbox_id} is no longer held")

    async def finish(
        self,
        lease: Lease,
        *,
        status: str,
        phase: str | None,
        next_sync_at: datetime | None,
        last_error: str | None = None,
        synced: bool = False,
        failure: bool = False,
        messages_synced: int | None = None,
    ) -> datetime | None:
        """Release the lease with a final status; returns sync_requested_at if it came after
        this sync started (the caller then owes another pass), else None."""
        result = await self.session.execute(
            text(
                """
                UPDATE mailboxes
                   SET lease_owner = NULL,
                       lease_expires_at = NULL,
                       status = :status,
                       phase = :phase,
                       next_sync_at = :next_sync_at,
                       last_synced_at = CASE WHEN :synced THEN now() ELSE last_synced_at END,
                       last_error = CASE WHEN :failure THEN :last_error
                                         WHEN :synced THEN NULL ELSE last_error END,
                       last_error_at = CASE WHEN :failure THEN now()
                                            WHEN :synced THEN NULL ELSE last_error_at END,
                       consecutive_failures = CASE WHEN :failure THEN consecutive_failures + 1
                                                   ELSE 0 END,
                       messages_synced = COALESCE(:messages_synced, messages_synced),
                       updated_at = now()
                 WHERE id = :id AND fencing_token = :token AND lease_owner = :owner
                   AND status NOT IN ('disconnected', 'auth_expired')
             RETURNING CASE WHEN sync_requested_at > sync_started_at THEN sync_requested_at END
                """
            ),
            {
                "id": lease.mailbox_id,
                "token": lease.fencing_token,
                "owner": lease.owner,
                "status": status,
                "phase": phase,
                "next_sync_at": next_sync_at,
                "synced": synced,
                "failure": failure,
                "last_error": last_error,
                "messages_synced": messages_synced,
            },
        )
        row = result.one_or_none()
        if row is None:
            raise LeaseLost(f"lease on mailbox {lease.mailbox_id} is no longer held")
        requested: datetime | None = row[0]
        return requested

    async def park_auth_expired(self, lease: Lease, message: str) -> None:
        """A refused refresh: stop syncing until the user reconnects."""
        result = await self.session.execute(
            text(
                """
                UPDATE mailboxes
                   SET status = 'auth_expired', phase = NULL,
                       last_error = :message, last_error_at = now(),
                       lease_owner = NULL, lease_expires_at = NULL,
                       next_sync_at = NULL, updated_at = now()
                 WHERE id = :id AND fencing_token = :token AND lease_owner = :owner
                """
            ),
            {
                "id": lease.mailbox_id,
                "token": lease.fencing_token,
                "owner": lease.owner,
                "message": message,
            },
        )
        if result.rowcount != 1:  # type: ignore[attr-defined]
            raise LeaseLost(f"lease on mailbox {lease.mailbox_id} is no longer held")

    # -- scheduler --------------------------------------------------------------------

    async def due_for_sync(self, limit: int) -> list[uuid.UUID]:
        """Mailboxes whose periodic sync is due, or that owe a pass for a change notice."""
        result = await self.session.execute(
            select(col(Mailbox.id))
            .where(
                col(Mailbox.status).notin_(PARKED),
                col(Mailbox.paused).is_(False),
                or_(col(Mailbox.lease_owner).is_(None), col(Mailbox.lease_expires_at) < func.now()),
                or_(
                    col(Mailbox.next_sync_at) <= func.now(),
                    and_(
                        col(Mailbox.sync_requested_at).is_not(None),
                        or_(
                            col(Mailbox.sync_started_at).is_(None),
                            col(Mailbox.sync_requested_at) > col(Mailbox.sync_started_at),
                        ),
                    ),
                ),
            )
            .order_by(col(Mailbox.next_sync_at).asc().nulls_first())
            .limit(limit)
        )
        return list(result.scalars().all())

    async def with_lapsed_lease(self, limit: int) -> list[tuple[uuid.UUID, int]]:
        """Mailboxes whose worker died mid-sync: (id, fencing token of the dead lease)."""
        result = await self.session.execute(
            select(col(Mailbox.id), col(Mailbox.fencing_token))
            .where(
                col(Mailbox.lease_owner).is_not(None),
                col(Mailbox.lease_expires_at) < func.now(),
                col(Mailbox.status).notin_(PARKED),
            )
            .limit(limit)
        )
        return [(row[0], int(row[1])) for row in result.all()]

    async def disconnected_with_credentials(self, limit: int) -> list[uuid.UUID]:
        """Disconnected mailboxes whose cleanup job was lost: credentials must not linger."""
        result = await self.session.execute(
            text(
                "SELECT m.id FROM mailboxes m JOIN credentials c ON c.mailbox_id = m.id "
                "WHERE m.status = 'disconnected' LIMIT :limit"
            ),
            {"limit": limit},
        )
        return [row[0] for row in result.all()]
