"""The Redis rate gate on its own: tightening, holding abandoned slots, refunds."""

from __future__ import annotations

import asyncio
import time

from app.providers.base import ProviderLimits
from app.sync.ratelimit import RedisRateGate
from app.sync.runtime import Runtime


async def _in_flight_at_once(gate: RedisRateGate, requests: int) -> int:
    """How many of `requests` concurrent requests the gate lets in at the same time."""
    inside = peak = 0

    async def one() -> None:
        nonlocal inside, peak
        async with gate.request():
            inside += 1
            peak = max(peak, inside)
            await asyncio.sleep(0.05)
            inside -= 1

    await asyncio.gather(*(one() for _ in range(requests)))
    return peak


async def test_tighten_lowers_the_limit_one_at_a_time_down_to_one(rt: Runtime) -> None:
    gate = RedisRateGate(rt.redis, "gate-test-tighten", ProviderLimits(max_concurrency=4))
    assert await _in_flight_at_once(gate, 8) == 4
    await gate.tighten()
    assert await gate.concurrency_limit() == 3
    assert await _in_flight_at_once(gate, 8) == 3
    for _ in range(5):
        await gate.tighten()
    assert await gate.concurrency_limit() == 1
    # For a while only: the cap lapses and the documented limit is back.
    short = RedisRateGate(
        rt.redis, "gate-test-lapse", ProviderLimits(max_concurrency=4), tighten_seconds=0.2
    )
    await short.tighten()
    assert await short.concurrency_limit() == 3
    await asyncio.sleep(0.3)
    assert await short.concurrency_limit() == 4


async def test_a_cancelled_request_keeps_its_slot_until_its_timeout(rt: Runtime) -> None:
    gate = RedisRateGate(
        rt.redis, "gate-test-hold", ProviderLimits(max_concurrency=1), request_timeout_seconds=0.5
    )
    started = asyncio.Event()

    async def abandoned() -> None:
        async with gate.request():
            started.set()
            await asyncio.sleep(10)

    task = asyncio.create_task(abandoned())
    await started.wait()
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    # The provider may still be on it: the slot is kept, to lapse at the request's timeout
    # (not at the admission's crash-safety expiry, nor given back now).
    [(_, lapses_at)] = await rt.redis.zrange("gate:gate-test-hold:slots", 0, -1, withscores=True)
    now_ms = time.time() * 1000
    assert now_ms < lapses_at <= now_ms + 500
    async with gate.request():
        pass
    # A request that ended gives its slot back at once.
    async with gate.request():
        pass
    assert await rt.redis.zcard("gate:gate-test-hold:slots") == 0


async def test_refund_puts_units_back_up_to_the_bucket(rt: Runtime) -> None:
    gate = RedisRateGate(rt.redis, "gate-test-refund", ProviderLimits(units_per_second=100))
    async with gate.request(cost=100):
        pass
    tokens = float(await rt.redis.hget("gate:gate-test-refund:bucket", "tokens") or 0)
    assert tokens < 5
    await gate.refund(60)
    refilled = float(await rt.redis.hget("gate:gate-test-refund:bucket", "tokens") or 0)
    assert 60 <= refilled < 70
    await gate.refund(1000)
    assert float(await rt.redis.hget("gate:gate-test-refund:bucket", "tokens") or 0) == 100
