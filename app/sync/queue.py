"""Enqueueing sync work on ARQ, designed around its job-id semantics.

`enqueue_job` returns None while a job with the same id is queued or running (and while a
finished job's result is kept, which our functions disable with keep_result=0). We use
that on purpose: every "something changed" for a mailbox enqueues `sync:<id>`, so a burst
of webhooks collapses into one pending job. A change that arrives while that job is
already running is not lost: it is recorded as `sync_requested_at` in PostgreSQL, and the
running job sees it when it releases its lease and enqueues another pass under a new id.
"""

from __future__ import annotations

import logging
import uuid

from arq.connections import ArqRedis

log = logging.getLogger(__name__)

SYNC_FUNCTION = "sync_mailbox"
SUBSCRIBE_FUNCTION = "ensure_subscription"
CLEANUP_FUNCTION = "cleanup_disconnected"
VERIFY_FUNCTION = "verify_mailbox"


def sync_job_id(mailbox_id: uuid.UUID | str, suffix: str | None = None) -> str:
    return f"sync:{mailbox_id}" + (f":{suffix}" if suffix else "")


async def enqueue_sync(
    redis: ArqRedis,
    mailbox_id: uuid.UUID | str,
    *,
    suffix: str | None = None,
    defer_by: float | None = None,
) -> bool:
    """Returns False when an equivalent job is already pending (that is fine, see above)."""
    job = await redis.enqueue_job(
        SYNC_FUNCTION,
        str(mailbox_id),
        _job_id=sync_job_id(mailbox_id, suffix),
        _defer_by=defer_by,
    )
    return job is not None


async def enqueue_subscription(redis: ArqRedis, mailbox_id: uuid.UUID | str) -> bool:
    job = await redis.enqueue_job(
        SUBSCRIBE_FUNCTION, str(mailbox_id), _job_id=f"subscribe:{mailbox_id}"
    )
    return job is not None


async def enqueue_cleanup(redis: ArqRedis, mailbox_id: uuid.UUID | str) -> bool:
    job = await redis.enqueue_job(
        CLEANUP_FUNCTION, str(mailbox_id), _job_id=f"cleanup:{mailbox_id}"
    )
    return job is not None


async def enqueue_verify(redis: ArqRedis, mailbox_id: uuid.UUID | str, *, suffix: str) -> bool:
    """One completion check; `suffix` names the scheduled check, so ticks that find the same
    check due do not queue it twice, and a lost job never blocks the next one."""
    job = await redis.enqueue_job(
        VERIFY_FUNCTION, str(mailbox_id), _job_id=f"verify:{mailbox_id}:{suffix}"
    )
    return job is not None
