"""ARQ jobs for case entries: ids only, short slices, safe to run twice.

Job ids follow the mailbox sync's scheme (app/sync/queue.py): `case:<entry id>` for "this
entry has work" (a burst of requests collapses into one pending job), a suffix for a
continuation or a retry (the running job still holds its own id).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterable
from typing import Any

from arq.connections import ArqRedis

from app.db.repositories.cases import CaseEntryRepository
from app.sync.cases.runner import CaseSearchRunner, Outcome
from app.sync.queue import enqueue
from app.sync.runtime import Runtime

log = logging.getLogger(__name__)

CASE_FUNCTION = "sync_case_entry"


def case_job_id(entry_id: int | str, suffix: str | None = None) -> str:
    return f"case:{entry_id}" + (f":{suffix}" if suffix else "")


async def enqueue_case(
    redis: ArqRedis,
    entry_id: int | str,
    *,
    suffix: str | None = None,
    defer_by: float | None = None,
) -> bool:
    return await enqueue(
        redis, CASE_FUNCTION, str(entry_id), job_id=case_job_id(entry_id, suffix), defer_by=defer_by
    )


async def enqueue_cases(redis: ArqRedis, entry_ids: Iterable[int]) -> None:
    for entry_id in entry_ids:
        await enqueue_case(redis, entry_id)


async def sync_case_entry(ctx: dict[str, Any], entry_id: str) -> str:
    """One slice of one entry's search (or link query), then schedule what follows."""
    rt: Runtime = ctx["rt"]
    runner = CaseSearchRunner(rt, owner=ctx.get("worker_id", "worker"))
    result = await runner.run_slice(int(entry_id))
    token = result.fencing_token
    if result.outcome is Outcome.CONTINUE:
        await enqueue_case(rt.redis, entry_id, suffix=f"c{token}")
    elif result.outcome in (Outcome.RETRY_LATER, Outcome.WAITING):
        # (An entry in `error` retries slowly, and a full mirror's entry waits for its
        # mailbox's pass: both are the scheduler's, from next_run_at.)
        await enqueue_case(
            rt.redis, entry_id, suffix=f"r{uuid.uuid4().hex[:8]}", defer_by=result.delay
        )
    log.info("case entry %s: %s after %d pages", entry_id, result.outcome.value, result.pages)
    return result.outcome.value


async def wake_after_pass(rt: Runtime, mailbox_id: uuid.UUID) -> None:
    """A mailbox completed a pass: its full-mirror entries waiting for the backfill finish."""
    async with rt.sessions() as session:
        waiting = await CaseEntryRepository(session).waiting_on_mailbox(mailbox_id)
    await enqueue_cases(rt.redis, waiting)


async def schedule_cases(ctx: dict[str, Any]) -> dict[str, int]:
    """Rebuild the queue from PostgreSQL: due entries and entries whose worker died."""
    rt: Runtime = ctx["rt"]
    limit = rt.settings.scheduler_batch
    async with rt.sessions() as session:
        entries = CaseEntryRepository(session)
        due = await entries.due(limit)
        lapsed = await entries.with_lapsed_lease(limit)
    enqueued = 0
    for entry_id in due:
        enqueued += await enqueue_case(rt.redis, entry_id)
    for entry_id, token in lapsed:
        enqueued += await enqueue_case(rt.redis, entry_id, suffix=f"recover{token}")
    if due or lapsed:
        log.info("case scheduler: %d due, %d lapsed, %d enqueued", len(due), len(lapsed), enqueued)
    return {"due": len(due), "lapsed": len(lapsed), "enqueued": enqueued}
