"""Resnapshot walks: one row per request, its keyset cursor advanced batch by batch."""

from __future__ import annotations

import uuid
from collections.abc import Sequence

from sqlalchemy import func, select, text, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from app.db.models import Resnapshot


class ResnapshotRepository:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def start(
        self, mailbox_id: uuid.UUID, requested_by: str | None, total_estimate: int | None
    ) -> tuple[Resnapshot, bool]:
        """A new walk, or the one already running for this mailbox (False)."""
        created = await self.session.execute(
            select(Resnapshot)
            .from_statement(
                insert(Resnapshot)
                .values(
                    id=uuid.uuid4(),
                    mailbox_id=mailbox_id,
                    requested_by=requested_by,
                    total_estimate=total_estimate,
                )
                .on_conflict_do_nothing(
                    index_elements=["mailbox_id"], index_where=text("finished_at IS NULL")
                )
                .returning(Resnapshot)
            )
            .execution_options(populate_existing=True)
        )
        row = created.scalar_one_or_none()
        if row is not None:
            return row, True
        running = await self.session.execute(
            select(Resnapshot).where(
                col(Resnapshot.mailbox_id) == mailbox_id, col(Resnapshot.finished_at).is_(None)
            )
        )
        return running.scalar_one(), False

    async def get(self, snapshot_id: uuid.UUID) -> Resnapshot | None:
        return await self.session.get(Resnapshot, snapshot_id, populate_existing=True)

    async def lock(self, snapshot_id: uuid.UUID) -> Resnapshot | None:
        """The walk's row, locked until the caller's transaction ends: two copies of one
        batch's job (ARQ may run a job twice) take turns, and the second finds it done."""
        result = await self.session.execute(
            select(Resnapshot)
            .where(col(Resnapshot.id) == snapshot_id)
            .with_for_update()
            .execution_options(populate_existing=True)
        )
        return result.scalar_one_or_none()

    async def advance(self, snapshot_id: uuid.UUID, *, after: str, emitted: int) -> None:
        await self.session.execute(
            update(Resnapshot)
            .where(col(Resnapshot.id) == snapshot_id)
            .values(
                after=after,
                emitted=col(Resnapshot.emitted) + emitted,
                batch=col(Resnapshot.batch) + 1,
                updated_at=func.now(),
            )
        )

    async def finish(self, snapshot_id: uuid.UUID) -> None:
        await self.session.execute(
            update(Resnapshot)
            .where(col(Resnapshot.id) == snapshot_id)
            .values(finished_at=func.now(), updated_at=func.now())
        )

    async def stalled(self, idle_seconds: float, limit: int) -> Sequence[Resnapshot]:
        """Running walks whose last batch is older than `idle_seconds` (a lost job)."""
        result = await self.session.execute(
            select(Resnapshot)
            .where(
                col(Resnapshot.finished_at).is_(None),
                col(Resnapshot.updated_at)
                < func.now() - func.make_interval(0, 0, 0, 0, 0, 0, idle_seconds),
            )
            .limit(limit)
        )
        return result.scalars().all()
