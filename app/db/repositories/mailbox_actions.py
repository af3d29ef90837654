"""What a user can ask of one mailbox: sync now, rebuild, pause, resume.

Pause and resync bump the fencing token and drop the lease, as disconnect does: a slice
already running can commit nothing more (its next page fence fails and rolls back), so a
paused mailbox stops at once and a rebuild never mixes with the pass it replaces.
Statements take the cursor rows before the mailbox row, the order every sync transaction
takes them in, so a user action and a page commit never deadlock.
"""

from __future__ import annotations

import uuid

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from app.db.repositories.mailboxes import MailboxRepository
from app.sync.states import PARKED, Phase, StreamMode

_PARKED = sorted(status.value for status in PARKED)


class MailboxActions:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def _syncable(self, mailbox_id: uuid.UUID) -> bool:
        allowed = await self.session.execute(
            text(
                "SELECT 1 FROM mailboxes WHERE id = :id AND NOT paused "
                "AND NOT (status = ANY(CAST(:parked AS text[])))"
            ),
            {"id": mailbox_id, "parked": _PARKED},
        )
        return allowed.first() is not None

    async def request_sync(self, mailbox_id: uuid.UUID) -> bool:
        """A pass now (one that is running owes another), even while backing off after
        failures: the user asked. False when parked or paused."""
        if not await self._syncable(mailbox_id):
            return False
        await MailboxRepository(self.session).request_sync([mailbox_id])
        await self.session.execute(
            text("UPDATE mailboxes SET next_sync_at = now(), updated_at = now() WHERE id = :id"),
            {"id": mailbox_id},
        )
        return True

    async def resync(self, mailbox_id: uuid.UUID) -> bool:
        """Every stream enumerates again under a new generation: the result is exactly the
        provider's state (rows not seen again are swept). False when parked or paused."""
        if not await self._syncable(mailbox_id):
            return False
        await self.session.execute(
            text(
                """
                UPDATE sync_cursors
                   SET cursor = NULL, mode = :full, caught_up = false, enumerated = 0,
                       generation = generation + 1, updated_at = now()
                 WHERE mailbox_id = :id
                """
            ),
            {"id": mailbox_id, "full": StreamMode.FULL.value},
        )
        await self._fence_off(mailbox_id, "phase = :phase, ", {"phase": Phase.RESYNC.value})
        await MailboxRepository(self.session).request_sync([mailbox_id])
        return True

    async def pause(self, mailbox_id: uuid.UUID) -> None:
        await self._fence_off(mailbox_id, "paused = true, ")

    async def resume(self, mailbox_id: uuid.UUID) -> None:
        await self.session.execute(
            text(
                "UPDATE mailboxes SET paused = false, next_sync_at = now(), updated_at = now() "
                "WHERE id = :id"
            ),
            {"id": mailbox_id},
        )
        # Whatever changed while paused is owed a pass.
        await MailboxRepository(self.session).request_sync([mailbox_id])

    async def _fence_off(
        self, mailbox_id: uuid.UUID, also: str, params: dict[str, str] | None = None
    ) -> None:
        await self.session.execute(
            text(
                f"""
                UPDATE mailboxes
                   SET {also}fencing_token = fencing_token + 1,
                       lease_owner = NULL, lease_expires_at = NULL,
                       next_sync_at = now(), updated_at = now()
                 WHERE id = :id
                """  # noqa: S608 - `also` is one of two constants above
            ),
            {"id": mailbox_id, **(params or {})},
        )
