"""Enqueueing sync work on ARQ, designed around its job-id semantics.

`enqueue_job` returns None while a job with the same id is queued or running (and while a
finished job's result is kept, which our functions disable with keep_result=0). We use
that on purpose: every "something changed" for a mailbox enqueues `sync:<id>`, so a burst
of webhooks collapses into one pending job. A change that arrives while that job is
already running is not lost: it is recorded as `sync_requested_at` in PostgreSQL, and the
running job sees it when it releases its lease and enqueues another pass under a new id.

Every enqueue here is one Redis round trip: ARQ's `enqueue_job` takes three (WATCH the job
key, EXISTS of the job and its kept result, then MULTI/EXEC), on a connection of its own.
`_ENQUEUE` makes the same check and the same writes in one script, which Redis runs
atomically, so the semantics above hold unchanged: the job and its queue entry are the
ones ARQ's workers read (arq.jobs.serialize_job, ARQ's key prefixes and expiry).
"""

from __future__ import annotations

import logging
import time
import uuid
from typing import Any

from arq.connections import ArqRedis
from arq.constants import job_key_prefix, result_key_prefix
from arq.jobs import serialize_job
from redis.commands.core import AsyncScript

log = logging.getLogger(__name__)

SYNC_FUNCTION = "sync_mailbox"
SUBSCRIBE_FUNCTION = "ensure_subscription"
CLEANUP_FUNCTION = "cleanup_disconnected"
VERIFY_FUNCTION = "verify_mailbox"


# KEYS: the job, its kept result, the queue. ARGV: expiry (ms), the serialized job, score,
# job id. 0 when the job or its result exists (ARQ's enqueue_job returns None then).
_ENQUEUE = AsyncScript(
    None,  # type: ignore[arg-type]  # bound to the caller's client at each call
    b"""
if redis.call('EXISTS', KEYS[1], KEYS[2]) > 0 then return 0 end
redis.call('PSETEX', KEYS[1], ARGV[1], ARGV[2])
redis.call('ZADD', KEYS[3], ARGV[3], ARGV[4])
return 1
""",
)


async def enqueue(
    redis: ArqRedis,
    function: str,
    *args: Any,
    job_id: str,
    defer_by: float | None = None,
) -> bool:
    """ARQ's `enqueue_job(function, *args, _job_id=job_id, _defer_by=defer_by)` in one round
    trip; False where it would return None (a job of that id queued, running or kept)."""
    now_ms = int(time.time() * 1000)
    defer_ms = round(defer_by * 1000) if defer_by else 0
    job = serialize_job(function, args, {}, None, now_ms, serializer=redis.job_serializer)
    queued = await _ENQUEUE(
        keys=[
            job_key_prefix + job_id,
            result_key_prefix + job_id,
            redis.default_queue_name,
        ],
        args=[defer_ms + redis.expires_extra_ms, job, now_ms + defer_ms, job_id],
        client=redis,
    )
    return bool(queued)


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
    return await enqueue(
        redis,
        SYNC_FUNCTION,
        str(mailbox_id),
        job_id=sync_job_id(mailbox_id, suffix),
        defer_by=defer_by,
    )


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
    return await enqueue(
        redis,
        SUBSCRIBE_FUNCTION,
        str(mailbox_id),
        job_id=f"subscribe:{mailbox_id}",
        defer_by=defer_by,
    )


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
    return await enqueue(redis, CLEANUP_FUNCTION, str(mailbox_id), job_id=f"cleanup:{mailbox_id}")


async def enqueue_verify(redis: ArqRedis, mailbox_id: uuid.UUID | str, *, suffix: str) -> bool:
    """One completion check; `suffix` names the scheduled check, so ticks that find the same
    check due do not queue it twice, and a lost job never blocks the next one."""
    return await enqueue(
        redis, VERIFY_FUNCTION, str(mailbox_id), job_id=f"verify:{mailbox_id}:{suffix}"
    )
