"""Mailbox rows: connect/disconnect, status, progress and the sync lease.

The lease is the only thing that makes a worker the writer of a mailbox. Every write a
sync makes goes through `fence`, which checks the fencing token and an unexpired lease in
the same statement that renews it, so a worker whose lease lapsed cannot write anything.

Every status write is guarded by the transition table of app/sync/states.py: the UPDATE
matches only a row whose current status may move to the new one, reads the old status in
the same statement, and the lifecycle event the transition raises is written to the outbox
in the same transaction.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import func, select, text, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from app.db.models import Mailbox
from app.db.repositories.outbox import OutboxRepository
from app.sync import states
from app.sync.cases.states import MailboxScope
from app.sync.states import MailboxStatus, Phase

_SYNCABLE = sorted(s.value for s in states.SYNCABLE)
_DISCONNECTED = MailboxStatus.DISCONNECTED.value


class LeaseLost(Exception):
    """The lease lapsed or was taken over: the caller must stop and roll back."""


@dataclass(frozen=True, slots=True)
class Lease:
    mailbox_id: uuid.UUID
    owner: str
    fencing_token: int


@dataclass(frozen=True, slots=True)
class Finished:
    """What releasing the lease found: the transition made, and whether a change arrived
    during the pass that just completed (then another pass is owed)."""

    transition: states.Transition
    owed: bool
    # Change notifications noted meanwhile point to streams (another pass owes them).
    hinted: bool = False
    # The mailbox belongs to a case (its entries may wait for this pass).
    in_cases: bool = True


# "A pass is owed" (MailboxRepository.request_sync): the assignments, shared with the webhook
# log, which makes them in the same statement as its rows
# (app/db/repositories/notifications.py).
REQUEST_SYNC_ASSIGNMENTS = """
    sync_requested_at = now(),
    pending_since = COALESCE(pending_since, now()),
    pending_next = CASE WHEN pass_started_at IS NOT NULL
                        THEN COALESCE(pending_next, now()) END,
    next_sync_at = CASE WHEN consecutive_failures = 0
                        THEN LEAST(COALESCE(next_sync_at, now()), now())
                        ELSE next_sync_at END
"""
# True when those assignments would change what is owed: false when a pass is already owed
# and due (the mailbox is pending, a running pass has already noted a change that came
# after it began, and the next pass is due now or waits for a backoff). The webhook log
# skips the update then: a storm does not rewrite the same mailbox row again and again.
REQUEST_SYNC_CHANGES = """
    (pending_since IS NULL
     OR (pass_started_at IS NOT NULL AND pending_next IS NULL)
     OR (consecutive_failures = 0 AND (next_sync_at IS NULL OR next_sync_at > now())))
"""


# Connect's common case, a new mailbox, in one plain statement: connect is the hottest
# write of the API (a tenant's burst of users), and ORM insert-returning costs more than the
# round trip.
_CREATE = text(
    """
    INSERT INTO mailboxes (id, user_id, provider, account_key, email, auth_mode, tenant_id,
                           provider_user_id, scope, status, next_sync_at, sync_requested_at,
                           pending_since, connect_job)
    VALUES (:id, :user_id, :provider, :account_key, :email, :auth_mode, :tenant_id,
            :provider_user_id, :scope, :status, now(), now(), now(), :connect_job)
    ON CONFLICT ON CONSTRAINT uq_mailboxes_account DO NOTHING
    RETURNING id, user_id, provider, email, status, scope
    """
)


@dataclass(frozen=True, slots=True)
class ConnectedMailbox:
    """What connect answers with; `revived`: the account's mailbox existed (a reconnect)."""

    id: uuid.UUID
    user_id: str
    provider: str
    email: str | None
    status: str
    scope: str
    revived: bool = False


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
        scope: str = MailboxScope.FULL,
        connect_job: str | None = None,
    ) -> ConnectedMailbox:
        """Create the mailbox, or revive the existing one for this account (reconnect).
        An existing mailbox keeps its scope (the caller checks it against `scope`).
        `connect_job`: the suffix of the first sync job the caller enqueues after commit."""
        created = await self.session.execute(
            _CREATE,
            {
                "id": uuid.uuid4(),
                "user_id": user_id,
                "provider": provider,
                "account_key": account_key,
                "email": email,
                "auth_mode": auth_mode,
                "tenant_id": tenant_id,
                "provider_user_id": provider_user_id,
                "scope": scope,
                "status": MailboxStatus.PENDING.value,
                "connect_job": connect_job,
            },
        )
        row = created.one_or_none()
        if row is not None:
            return ConnectedMailbox(*row)
        existing = (
            await self.session.execute(
                select(Mailbox)
                .where(
                    col(Mailbox.user_id) == user_id,
                    col(Mailbox.provider) == provider,
                    col(Mailbox.account_key) == account_key,
                )
                .with_for_update()
                .execution_options(populate_existing=True)
            )
        ).scalar_one()
        # New credentials revive a parked or failed mailbox; a healthy one keeps its status.
        new_status = states.on_reconnect(existing.status)
        change = states.transition(existing.status, new_status)
        result = await self.session.execute(
            update(Mailbox)
            .where(col(Mailbox.id) == existing.id)
            .values(
                email=func.coalesce(email, col(Mailbox.email)),
                auth_mode=auth_mode,
                tenant_id=tenant_id,
                provider_user_id=provider_user_id,
                status=change.new.value,
                last_error=None,
                last_error_at=None,
                consecutive_failures=0,
                disconnected_at=None,
                next_sync_at=func.now(),
                connect_job=connect_job,
                sync_requested_at=func.now(),
                pending_since=func.coalesce(col(Mailbox.pending_since), func.now()),
                # New credentials: the next pass looks at everything.
                full_pass_at=func.now(),
                updated_at=func.now(),
            )
            .returning(Mailbox)
            .execution_options(populate_existing=True, synchronize_session=False)
        )
        mailbox = result.scalar_one()
        await self._announce(mailbox.id, mailbox.user_id, change, {})
        return ConnectedMailbox(
            mailbox.id,
            mailbox.user_id,
            mailbox.provider,
            mailbox.email,
            mailbox.status,
            mailbox.scope,
            revived=True,
        )

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
                col(Mailbox.status) != MailboxStatus.DISCONNECTED.value,
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
        row = await self._guarded_update(
            mailbox_id,
            MailboxStatus.DISCONNECTED,
            """
            phase = NULL, disconnected_at = now(), next_sync_at = NULL,
            lease_owner = NULL, lease_expires_at = NULL, fencing_token = m.fencing_token + 1,
            pass_started_at = NULL, pending_since = NULL, pending_next = NULL,
            failing_since = NULL
            """,
        )
        if row is not None:
            change = states.transition(row["old_status"], MailboxStatus.DISCONNECTED)
            await self._announce(mailbox_id, row["user_id"], change, {})

    async def request_sync(self, mailbox_ids: Sequence[uuid.UUID], *, full: bool = True) -> None:
        """Note that something changed at the provider: a pass is owed.

        A change that arrives while a pass runs may already be behind a stream the pass has
        read, so it is kept apart (`pending_next`) and earns the next pass. A mailbox that is
        backing off after failures keeps its backoff (the change waits for the retry).
        `full`: nothing says where the change is, so the pass follows every stream; else
        the hints in `pending_streams` say (app/sync/targets.py)."""
        if not mailbox_ids:
            return
        full_pass = ", full_pass_at = now()" if full else ""
        await self.session.execute(
            text(
                f"UPDATE mailboxes SET {REQUEST_SYNC_ASSIGNMENTS}{full_pass} "  # noqa: S608 - constants
                "WHERE id = ANY(CAST(:ids AS uuid[])) AND status <> :disconnected"
            ),
            {"ids": list(mailbox_ids), "disconnected": MailboxStatus.DISCONNECTED.value},
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
                       -- The connect's job has run, or another took its place: a pass
                       -- owed from now on is queued under an id of its own.
                       connect_job = NULL,
                       updated_at = now()
                 WHERE id = :id
                   AND status = ANY(CAST(:syncable AS text[]))
                   AND NOT paused
                   AND (lease_owner IS NULL OR lease_expires_at < now())
             RETURNING fencing_token
                """
            ),
            {"id": mailbox_id, "owner": owner, "seconds": seconds, "syncable": _SYNCABLE},
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
        status: MailboxStatus | None = None,
        phase: Phase | None = None,
        begin_pass: bool = False,
        full_pass: bool = False,
    ) -> bool:
        """Check the lease, renew it and move progress, in one statement; raise LeaseLost.

        `status` may only name a status the current one may move to without an event (a
        slice's own status while it runs); `begin_pass` marks the start of a new pass, and
        `full_pass` one over every stream (`full_pass_at` is NULL while it runs: `finish`
        schedules the next one when it completes).
        Returns whether the mailbox belongs to a case (read under the row's lock, so a page
        knows whether to link its mail without a statement of its own: app/sync/cases)."""
        result = await self.session.execute(
            text(
                """
                UPDATE mailboxes
                   SET lease_expires_at = now() + make_interval(secs => :seconds),
                       messages_synced = GREATEST(messages_synced + :delta, 0),
                       messages_total_estimate = COALESCE(:total, messages_total_estimate),
                       status = COALESCE(:status, status),
                       phase = COALESCE(:phase, phase),
                       pass_started_at = CASE WHEN :begin_pass THEN now()
                                              ELSE pass_started_at END,
                       pending_next = CASE WHEN :begin_pass THEN NULL ELSE pending_next END,
                       full_pass_at = CASE WHEN :full_pass THEN NULL ELSE full_pass_at END,
                       updated_at = now()
                 WHERE id = :id AND fencing_token = :token AND lease_owner = :owner
                   AND lease_expires_at > now()
                   AND status = ANY(CAST(:sources AS text[]))
             RETURNING EXISTS (SELECT 1 FROM case_mailboxes WHERE mailbox_id = :id)
                """
            ),
            {
                "id": lease.mailbox_id,
                "token": lease.fencing_token,
                "owner": lease.owner,
                "seconds": seconds,
                "delta": synced_delta,
                "total": total_estimate,
                "status": status.value if status else None,
                "phase": phase.value if phase else None,
                "begin_pass": begin_pass,
                "full_pass": full_pass,
                "sources": states.allowed_sources(status) if status else _SYNCABLE,
            },
        )
        in_cases = result.scalar_one_or_none()
        if in_cases is None:
            raise LeaseLost(f"lease on mailbox {lease.mailbox_id} is no longer held")
        return bool(in_cases)

    async def heartbeat(self, lease: Lease, seconds: int) -> bool:
        """Renew the lease without writing anything else; False when it is no longer held."""
        result = await self.session.execute(
            text(
                """
                UPDATE mailboxes
                   SET lease_expires_at = now() + make_interval(secs => :seconds)
                 WHERE id = :id AND fencing_token = :token AND lease_owner = :owner
                   AND lease_expires_at > now()
                   AND status = ANY(CAST(:syncable AS text[]))
                """
            ),
            {
                "id": lease.mailbox_id,
                "token": lease.fencing_token,
                "owner": lease.owner,
                "seconds": seconds,
                "syncable": _SYNCABLE,
            },
        )
        return bool(result.rowcount == 1)  # type: ignore[attr-defined]

    async def release(self, lease: Lease, *, phase: Phase | None) -> bool:
        """Give the lease back without ending a pass or moving the status (the monitor's
        repairs); False when it was no longer held."""
        result = await self.session.execute(
            text(
                """
                UPDATE mailboxes
                   SET lease_owner = NULL, lease_expires_at = NULL, phase = :phase,
                       updated_at = now()
                 WHERE id = :id AND fencing_token = :token AND lease_owner = :owner
                """
            ),
            {
                "id": lease.mailbox_id,
                "token": lease.fencing_token,
                "owner": lease.owner,
                "phase": phase.value if phase else None,
            },
        )
        return bool(result.rowcount == 1)  # type: ignore[attr-defined]

    async def finish(
        self,
        lease: Lease,
        *,
        status: MailboxStatus,
        phase: Phase | None,
        next_sync_at: datetime | None,
        last_error: str | None = None,
        pass_completed: bool = False,
        failure: bool = False,
        messages_synced: int | None = None,
        error_class: str | None = None,
    ) -> Finished:
        """Release the lease with a status. When the pass completed, the changes that arrived
        during it become the pending ones and `owed` says another pass is due.

        A completed pass over every stream schedules the next one at `next_sync_at`; a
        completed targeted pass leaves that schedule as it was (app/sync/targets.py)."""
        enters_failing = states.enters_failing(status)
        row = await self._guarded_update(
            lease.mailbox_id,
            status,
            """
            lease_owner = NULL,
            lease_expires_at = NULL,
            phase = :phase,
            next_sync_at = CASE WHEN :completed AND m.full_pass_at IS NOT NULL
                                THEN m.full_pass_at ELSE :next_sync_at END,
            full_pass_at = CASE WHEN :completed AND m.full_pass_at IS NULL
                                THEN :next_sync_at ELSE m.full_pass_at END,
            last_synced_at = CASE WHEN :completed THEN now() ELSE m.last_synced_at END,
            connected_at = CASE WHEN :completed THEN COALESCE(m.connected_at, now())
                                ELSE m.connected_at END,
            failing_since = CASE WHEN :completed THEN NULL
                                 WHEN :enters_failing THEN COALESCE(m.failing_since, now())
                                 ELSE m.failing_since END,
            pass_started_at = CASE WHEN :completed THEN NULL ELSE m.pass_started_at END,
            pending_since = CASE WHEN :completed THEN m.pending_next ELSE m.pending_since END,
            pending_next = CASE WHEN :completed THEN NULL ELSE m.pending_next END,
            last_error = CASE WHEN :failure THEN :last_error
                              WHEN :completed THEN NULL ELSE m.last_error END,
            last_error_at = CASE WHEN :failure THEN now()
                                 WHEN :completed THEN NULL ELSE m.last_error_at END,
            consecutive_failures = CASE WHEN :failure THEN m.consecutive_failures + 1
                                        ELSE 0 END,
            messages_synced = COALESCE(:messages_synced, m.messages_synced)
            """,
            lease=lease,
            # What the pass's end needs to know, read under the row's lock in the same
            # statement rather than by statements of their own.
            returning=""",
                EXISTS (SELECT 1 FROM pending_streams p WHERE p.mailbox_id = m.id) AS hinted,
                EXISTS (SELECT 1 FROM case_mailboxes c WHERE c.mailbox_id = m.id) AS in_cases""",
            params={
                "phase": phase.value if phase else None,
                "next_sync_at": next_sync_at,
                "completed": pass_completed,
                "enters_failing": enters_failing,
                "failure": failure,
                "last_error": last_error,
                "messages_synced": messages_synced,
            },
        )
        if row is None:
            raise LeaseLost(f"lease on mailbox {lease.mailbox_id} is no longer held")
        change = states.transition(
            row["old_status"],
            status,
            pass_completed=pass_completed,
            ever_completed=row["old_connected_at"] is not None,
            failing=row["old_failing_since"] is not None,
        )
        detail: dict[str, Any] = {}
        if change.event is states.LifecycleEvent.SYNC_FAILED:
            detail = {
                "error_class": error_class,
                "message": last_error,
                "consecutive_failures": row["consecutive_failures"],
            }
        await self._announce(lease.mailbox_id, row["user_id"], change, detail)
        return Finished(
            change,
            owed=pass_completed and row["old_pending_next"] is not None,
            hinted=bool(row["hinted"]),
            in_cases=bool(row["in_cases"]),
        )

    async def park_auth_expired(self, lease: Lease, message: str) -> None:
        """A refused refresh: stop syncing until the user reconnects."""
        row = await self._guarded_update(
            lease.mailbox_id,
            MailboxStatus.AUTH_EXPIRED,
            """
            phase = NULL, last_error = :message, last_error_at = now(),
            lease_owner = NULL, lease_expires_at = NULL, next_sync_at = NULL,
            failing_since = COALESCE(m.failing_since, now())
            """,
            lease=lease,
            require_live_lease=False,
            params={"message": message},
        )
        if row is None:
            raise LeaseLost(f"lease on mailbox {lease.mailbox_id} is no longer held")
        change = states.transition(row["old_status"], MailboxStatus.AUTH_EXPIRED)
        await self._announce(
            lease.mailbox_id, row["user_id"], change, {"last_error": message, "action": "reconnect"}
        )

    async def _guarded_update(
        self,
        mailbox_id: uuid.UUID,
        new_status: MailboxStatus,
        assignments: str,
        *,
        lease: Lease | None = None,
        require_live_lease: bool = False,
        params: dict[str, Any] | None = None,
        returning: str = "",
    ) -> dict[str, Any] | None:
        """One UPDATE that moves the status only from a status the transition table allows
        (and, with a lease, only for its holder), returning the row as it was before."""
        fenced = ""
        if lease is not None:
            fenced = "AND m.fencing_token = :token AND m.lease_owner = :owner"
            if require_live_lease:
                fenced += " AND m.lease_expires_at > now()"
        result = await self.session.execute(
            text(
                f"""
                UPDATE mailboxes AS m
                   SET status = :new_status, updated_at = now(), {assignments}
                  FROM (SELECT id, status, connected_at, failing_since, pending_next
                          FROM mailboxes WHERE id = :id FOR UPDATE) AS old
                 WHERE m.id = old.id AND m.status = ANY(CAST(:sources AS text[])) {fenced}
             RETURNING old.status AS old_status, old.connected_at AS old_connected_at,
                       old.failing_since AS old_failing_since,
                       old.pending_next AS old_pending_next,
                       m.user_id, m.consecutive_failures{returning}
                """  # noqa: S608 - assignments, fencing, returning are constant fragments
            ),
            {
                **(params or {}),
                "id": mailbox_id,
                "new_status": new_status.value,
                "sources": states.allowed_sources(new_status),
                **(
                    {"token": lease.fencing_token, "owner": lease.owner}
                    if lease is not None
                    else {}
                ),
            },
        )
        row = result.one_or_none()
        return None if row is None else dict(row._mapping)

    async def _announce(
        self,
        mailbox_id: uuid.UUID,
        user_id: str,
        change: states.Transition,
        detail: dict[str, Any],
    ) -> None:
        if change.event is None:
            return
        await OutboxRepository(self.session).add(
            mailbox_id,
            change.event.value,
            {"user_id": user_id, "status": change.new.value, **detail},
        )

    # -- scheduler --------------------------------------------------------------------

    async def due_for_sync(self, limit: int) -> list[tuple[uuid.UUID, str | None]]:
        """Mailboxes whose next pass is due (periodic, owed after a change, or a retry),
        each with the suffix of its connect's job while no slice has taken the lease."""
        result = await self.session.execute(
            text(
                """
                SELECT id, connect_job FROM mailboxes
                 WHERE next_sync_at <= now()
                   AND status = ANY(CAST(:syncable AS text[]))
                   AND NOT paused
                   AND (lease_owner IS NULL OR lease_expires_at < now())
                 ORDER BY next_sync_at
                 LIMIT :limit
                """
            ),
            {"syncable": _SYNCABLE, "limit": limit},
        )
        return [(row[0], row[1]) for row in result.all()]

    async def reslot_late(
        self, *, interval: float, without_push: float, late_seconds: float, limit: int
    ) -> int:
        """Periodic passes overdue by more than `late_seconds` (the workers were down, or
        behind) move to their mailbox's next slot of the interval instead of all running
        now (app/sync/spread.py computes the same slots). A pass owed by a change, a retry
        and a first pass are never moved. Returns how many moved."""
        result = await self.session.execute(
            text(
                """
                WITH late AS (
                    SELECT id,
                           CASE WHEN push_state = ANY(CAST(:polled AS text[]))
                                THEN LEAST(CAST(:interval AS numeric),
                                           CAST(:without_push AS numeric))
                                ELSE CAST(:interval AS numeric)
                           END AS period
                      FROM mailboxes
                     WHERE next_sync_at < now() - make_interval(secs => CAST(:late AS double precision))
                       AND status = ANY(CAST(:syncable AS text[]))
                       AND pending_since IS NULL AND consecutive_failures = 0
                       AND pass_started_at IS NULL AND connected_at IS NOT NULL
                       AND lease_owner IS NULL
                     ORDER BY next_sync_at
                     LIMIT :limit
                       FOR UPDATE SKIP LOCKED
                ),
                slot AS (
                    SELECT id, period,
                           extract(epoch FROM now())::numeric AS base,
                           mod(('x' || left(replace(id::text, '-', ''), 8))::bit(32)::bigint,
                               GREATEST(floor(period * 1000)::bigint, 1)) / 1000.0 AS phase
                      FROM late
                )
                UPDATE mailboxes m
                   SET next_sync_at = to_timestamp(
                           CASE WHEN s.base - mod(s.base, s.period) + s.phase >= s.base
                                THEN s.base - mod(s.base, s.period) + s.phase
                                ELSE s.base - mod(s.base, s.period) + s.phase + s.period END),
                       updated_at = now()
                  FROM slot s
                 WHERE m.id = s.id
                """
            ),
            {
                "interval": float(interval),
                "without_push": float(without_push),
                "late": float(late_seconds),
                "limit": limit,
                "syncable": _SYNCABLE,
                "polled": sorted(p.value for p in states.POLLED),
            },
        )
        return int(getattr(result, "rowcount", 0) or 0)

    async def with_lapsed_lease(self, limit: int) -> list[tuple[uuid.UUID, int]]:
        """Mailboxes whose worker died mid-sync: (id, fencing token of the dead lease)."""
        result = await self.session.execute(
            text(
                """
                SELECT id, fencing_token FROM mailboxes
                 WHERE lease_expires_at < now() AND lease_owner IS NOT NULL
                   AND status = ANY(CAST(:syncable AS text[]))
                 LIMIT :limit
                """
            ),
            {"syncable": _SYNCABLE, "limit": limit},
        )
        return [(row[0], int(row[1])) for row in result.all()]

    async def disconnected_with_credentials(self, limit: int) -> list[uuid.UUID]:
        """Disconnected mailboxes whose cleanup job was lost: credentials must not linger."""
        # The status as a literal: a generic plan of `status = $1` could not use the
        # partial index of disconnected mailboxes (migration 0013).
        result = await self.session.execute(
            text(
                "SELECT m.id FROM mailboxes m JOIN credentials c ON c.mailbox_id = m.id "  # noqa: S608 - a constant
                f"WHERE m.status = '{_DISCONNECTED}' LIMIT :limit"
            ),
            {"limit": limit},
        )
        return [row[0] for row in result.all()]
