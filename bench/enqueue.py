"""Enqueueing: ARQ's `enqueue_job` against mailsync's one-round-trip `enqueue`.

    python -m bench.enqueue [--jobs 20000] [--concurrency 64]

Both write the same jobs (new ids, then the same ids again, which both refuse) through the
same Redis (BENCH_REDIS_URL, default database 15, flushed), `--concurrency` at a time as
a burst of connects or webhooks would; each way runs three times, alternated, and the
best run of each is printed: jobs/s, this process's CPU per 1000 enqueues, Redis's CPU per
1000, and the ratio.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import time
from collections.abc import Awaitable, Callable

from arq import create_pool
from arq.connections import ArqRedis, RedisSettings

from app.sync.queue import enqueue

REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/15")

Enqueue = Callable[[ArqRedis, str], Awaitable[bool]]


async def _arq(redis: ArqRedis, job_id: str) -> bool:
    return await redis.enqueue_job("sync_mailbox", job_id, _job_id=job_id) is not None


async def _ours(redis: ArqRedis, job_id: str) -> bool:
    return await enqueue(redis, "sync_mailbox", job_id, job_id=job_id)


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def _redis_cpu(redis: ArqRedis) -> float:
    info = await redis.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


async def _run(redis: ArqRedis, way: Enqueue, jobs: int, concurrency: int) -> dict[str, float]:
    await redis.flushdb()
    ids = [f"sync:bench-{i}" for i in range(jobs)]
    gate = asyncio.Semaphore(concurrency)

    async def one(job_id: str) -> bool:
        async with gate:
            return await way(redis, job_id)

    cpu, redis_cpu, started = _cpu(), await _redis_cpu(redis), time.perf_counter()
    queued = await asyncio.gather(*(one(i) for i in ids))
    again = await asyncio.gather(*(one(i) for i in ids))  # every id exists: refused
    seconds = time.perf_counter() - started
    if not all(queued) or any(again) or await redis.zcard("arq:queue") != jobs:
        raise RuntimeError("the two ways disagree on what was queued")
    calls = 2 * jobs
    return {
        "rate": calls / seconds,
        "cpu": (_cpu() - cpu) * 1000 * 1000 / calls,
        "redis": (await _redis_cpu(redis) - redis_cpu) * 1000 * 1000 / calls,
    }


async def main(args: argparse.Namespace) -> None:
    settings = RedisSettings.from_dsn(REDIS_URL)
    settings.max_connections = args.concurrency
    redis = await create_pool(settings)
    try:
        best: dict[str, dict[str, float]] = {}
        for _ in range(3):
            for name, way in (("arq enqueue_job", _arq), ("one round trip", _ours)):
                result = await _run(redis, way, args.jobs, args.concurrency)
                if name not in best or result["rate"] > best[name]["rate"]:
                    best[name] = result
        for name, result in best.items():
            print(
                f"{name:<18}{result['rate']:>9,.0f} enqueues/s   CPU per 1000: "
                f"this process {result['cpu']:.1f} ms, Redis {result['redis']:.1f} ms"
            )
        ratio = best["one round trip"]["rate"] / best["arq enqueue_job"]["rate"]
        print(f"{'ratio':<18}{ratio:>9.2f} (one round trip / enqueue_job)")
        await redis.flushdb()
    finally:
        await redis.aclose()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--jobs", type=int, default=20_000)
    parser.add_argument("--concurrency", type=int, default=64)
    asyncio.run(main(parser.parse_args()))
