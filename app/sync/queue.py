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
import time
import uuid
from typing import Any

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


CONNECT_SUFFIX = "connect"


def connect_job_suffix() -> str:
    """The first sync of a connect has a job id of its own: a reconnect while a sync job is
    queued must not be collapsed into it, and its worker knows to create the push channel."""
    return f"{CONNECT_SUFFIX}{uuid.uuid4().hex[:8]}"


def is_connect_job(job_id: str) -> bool:
    return job_id.startswith("sync:") and f":{CONNECT_SUFFIX}" in job_id


async def enqueue_subscription(
    redis: ArqRedis, mailbox_id: uuid.UUID | str, *, defer_by: float | None = None
) -> bool:
    job = await redis.enqueue_job(
        SUBSCRIBE_FUNCTION, str(mailbox_id), _job_id=f"subscribe:{mailbox_id}", _defer_by=defer_by
    )
    return job is not None


# The next free moment (epoch milliseconds) for creating a push channel, shared by every
# process: each caller takes the next slot, one every 1/rate seconds.
_PACE_KEY = "mailsync:pace:subscriptions"
_TAKE_SLOT = """
local now = tonumber(ARGV[1])
local free = tonumber(redis.call('GET', KEYS[1]) or '0')
if free < now then free = now end
redis.call('SET', KEYS[1], tostring(free + tonumber(ARGV[2])), 'PX', 86400000)
return tostring(free - now)
"""


async def subscription_slot(redis: ArqRedis, per_second: float) -> float:
    """Seconds to wait before creating one more push channel, so that a burst of connects
    creates them at `per_second` (providers throttle subscription creation per app)."""
    now_ms = time.time() * 1000
    wait_ms: Any = await redis.eval(  # type: ignore[misc]  # redis-py's stubs
        _TAKE_SLOT, 1, _PACE_KEY, f"{now_ms:.0f}", f"{1000 / per_second:.3f}"
    )
    return max(float(wait_ms), 0.0) / 1000


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
