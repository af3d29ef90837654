"""Which worker processes are alive, kept in Redis, so work that should spread over all of
them (a partitioned backfill's window jobs) knows how many there are.

ARQ hands every job that is due to whichever worker polls first, up to its `max_jobs`: the
window jobs a slice enqueues together would all land on one process while the others idle.
Each worker process announces itself here every few seconds; an entry not renewed within
`PRESENCE_TTL_SECONDS` (a killed worker's) no longer counts.
"""

from __future__ import annotations

import asyncio
import logging
import time

from redis.asyncio import Redis
from redis.exceptions import RedisError

log = logging.getLogger(__name__)

PRESENCE_KEY = "mailsync:workers"
PRESENCE_TTL_SECONDS = 15.0
_RENEW_SECONDS = PRESENCE_TTL_SECONDS / 3


async def announce(redis: Redis, worker_id: str) -> None:
    now = time.time()
    async with redis.pipeline(transaction=False) as pipe:
        pipe.zadd(PRESENCE_KEY, {worker_id: now + PRESENCE_TTL_SECONDS})
        pipe.zremrangebyscore(PRESENCE_KEY, "-inf", now)
        await pipe.execute()


async def withdraw(redis: Redis, worker_id: str) -> None:
    await redis.zrem(PRESENCE_KEY, worker_id)


async def live_workers(redis: Redis) -> int:
    """Worker processes alive now (at least one: the caller is one)."""
    return max(1, int(await redis.zcount(PRESENCE_KEY, time.time(), "+inf")))


async def announce_forever(redis: Redis, worker_id: str) -> None:
    while True:
        try:
            await announce(redis, worker_id)
        except (OSError, RedisError) as exc:
            log.debug("presence not renewed: %s", exc)
        await asyncio.sleep(_RENEW_SECONDS)
