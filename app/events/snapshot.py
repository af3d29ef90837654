"""Resnapshot: re-emit every message a mailbox holds as `email.snapshot`, then
`mailbox.snapshot_complete`, so a consumer that lost its state (or joined after the
stream's retention) rebuilds it without a resync from the provider.

The walk is a row in `resnapshots` with a keyset cursor over the messages' primary key,
advanced by one ARQ job per batch (`resnapshot_batch`): each batch is one short
transaction, a lost job is re-enqueued by the scheduler from the row, and a job that runs
twice finds its batch already done. Each batch locks the mailbox row before it reads, the
lock every outbox row takes for its position: a change committed before the batch is in
what it reads, one committed after comes after it in the stream, so `version` orders
snapshots and changes exactly.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import uuid
from typing import Any

from arq.connections import ArqRedis

from app.config import Settings
from app.db.models import Resnapshot
from app.db.repositories.mailboxes import MailboxRepository
from app.db.repositories.messages import MessageRepository
from app.db.repositories.outbox import OutboxRepository
from app.db.repositories.resnapshots import ResnapshotRepository
from app.db.session import AsyncSession
from app.events.changes import MESSAGES_SNAPSHOT, SNAPSHOT_COMPLETE, columns_of_rows
from app.sync.queue import enqueue
from app.sync.runtime import Runtime

log = logging.getLogger(__name__)

FUNCTION = "resnapshot_batch"
BATCH = 1000
# A running walk whose last batch is older than this has lost its job.
STALLED_SECONDS = 60.0


class MailboxNotFound(Exception):
    pass


class EventsDisabled(Exception):
    """EVENTS_ENABLED=false: a walk would emit nothing."""


def job_id(snapshot_id: uuid.UUID | str, batch: int) -> str:
    return f"resnapshot:{snapshot_id}:{batch}"


async def enqueue_batch(redis: ArqRedis, snapshot_id: uuid.UUID | str, batch: int) -> bool:
    return await enqueue(
        redis, FUNCTION, str(snapshot_id), batch, job_id=job_id(snapshot_id, batch)
    )


async def request(
    session: AsyncSession, mailbox_id: uuid.UUID, requested_by: str | None
) -> tuple[Resnapshot, bool]:
    """Start a walk in the caller's transaction (enqueue its first batch after commit);
    a walk already running for the mailbox is returned instead (False)."""
    if not OutboxRepository(session).writes:
        raise EventsDisabled("events are disabled (EVENTS_ENABLED=false)")
    mailbox = await MailboxRepository(session).get(mailbox_id)
    if mailbox is None:
        raise MailboxNotFound(str(mailbox_id))
    return await ResnapshotRepository(session).start(
        mailbox_id, requested_by, mailbox.messages_synced
    )


async def run_batch(rt: Runtime, snapshot_id: uuid.UUID, batch: int) -> str:
    """Emit one batch; enqueue the next one, or finish the walk."""
    async with rt.sessions() as session, session.begin():
        walks = ResnapshotRepository(session)
        walk = await walks.lock(snapshot_id)
        if walk is None or walk.finished_at is not None or walk.batch != batch:
            return "stale"
        outbox = OutboxRepository(session)
        if not await outbox.lock_mailbox(walk.mailbox_id):
            await walks.finish(snapshot_id)
            return "gone"
        rows = await MessageRepository(session).snapshot_batch(walk.mailbox_id, walk.after, BATCH)
        total = walk.emitted + len(rows)
        if rows:
            await outbox.add(
                walk.mailbox_id,
                MESSAGES_SNAPSHOT,
                {"snapshot_id": str(snapshot_id), "snapshot": columns_of_rows(rows)},
            )
            await walks.advance(
                snapshot_id, after=rows[-1]["provider_message_id"], emitted=len(rows)
            )
        done = len(rows) < BATCH
        if done:
            await outbox.add(
                walk.mailbox_id,
                SNAPSHOT_COMPLETE,
                {"snapshot_id": str(snapshot_id), "messages": total},
            )
            await walks.finish(snapshot_id)
    if done:
        log.info("resnapshot %s: complete, %d messages", snapshot_id, total)
        return "complete"
    await enqueue_batch(rt.redis, snapshot_id, batch + 1)
    return "continue"


async def resnapshot_batch(ctx: dict[str, Any], snapshot_id: str, batch: int) -> str:
    """ARQ job: one batch of a resnapshot walk (ids only; safe to run twice)."""
    rt: Runtime = ctx["rt"]
    return await run_batch(rt, uuid.UUID(snapshot_id), batch)


async def recover_stalled(rt: Runtime, limit: int) -> int:
    """For the scheduler: walks whose job was lost (Redis flushed) continue from the row."""
    async with rt.sessions() as session:
        stalled = await ResnapshotRepository(session).stalled(STALLED_SECONDS, limit)
    enqueued = 0
    for walk in stalled:
        enqueued += await enqueue_batch(rt.redis, walk.id, walk.batch)
    return enqueued


async def resnapshot_from_cli(settings: Settings, mailbox_id: uuid.UUID, *, wait: bool) -> int:
    """`mailsync events resnapshot --mailbox ID [--wait]`: start (or find) the walk; the
    workers emit it. `--wait` follows its progress until it completes."""
    rt = await Runtime.create(settings)
    try:
        async with rt.sessions() as session, session.begin():
            try:
                walk, created = await request(session, mailbox_id, "cli")
            except MailboxNotFound:
                print(f"no mailbox {mailbox_id}", file=sys.stderr)
                return 1
            except EventsDisabled as exc:
                print(f"{exc}: nothing to re-emit", file=sys.stderr)
                return 1
        await enqueue_batch(rt.redis, walk.id, walk.batch)
        print(
            f"resnapshot {walk.id} of mailbox {mailbox_id} "
            + ("started" if created else "already running")
            + f" (~{walk.total_estimate or 0} messages; a worker emits it)"
        )
        while wait:
            await asyncio.sleep(1.0)
            async with rt.sessions() as session:
                current = await ResnapshotRepository(session).get(walk.id)
            assert current is not None
            print(f"  {current.emitted} emitted", flush=True)
            if current.finished_at is not None:
                print(f"complete: {current.emitted} messages")
                break
        return 0
    finally:
        await rt.close()
