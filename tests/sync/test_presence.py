"""Worker presence in Redis: how many worker processes a window job's share divides by."""

from __future__ import annotations

import time

from app.sync import presence
from app.sync.runtime import Runtime


async def test_live_workers_counts_announced_processes_until_they_leave_or_lapse(
    rt: Runtime,
) -> None:
    redis = rt.redis
    assert await presence.live_workers(redis) == 1  # the caller itself, announced or not
    await presence.announce(redis, "a")
    await presence.announce(redis, "b")
    await presence.announce(redis, "b")
    assert await presence.live_workers(redis) == 2
    await presence.withdraw(redis, "a")
    assert await presence.live_workers(redis) == 1
    # A killed worker never withdraws: its entry stops counting once it is not renewed.
    await redis.zadd(presence.PRESENCE_KEY, {"killed": time.time() - 1})
    await presence.announce(redis, "c")
    assert await presence.live_workers(redis) == 2
    assert await redis.zscore(presence.PRESENCE_KEY, "killed") is None
