"""One-round-trip enqueue: what ARQ's own `enqueue_job` would have written and answered."""

from __future__ import annotations

import time

from arq.constants import expires_extra_ms, job_key_prefix, result_key_prefix
from arq.jobs import Job, JobStatus

from app.sync.queue import enqueue
from app.sync.runtime import Runtime


async def test_the_job_is_the_one_arq_would_queue(rt: Runtime) -> None:
    before = int(time.time() * 1000)
    assert await enqueue(rt.redis, "sync_mailbox", "m-1", job_id="sync:m-1") is True
    after = int(time.time() * 1000)

    info = await Job("sync:m-1", rt.redis).info()
    assert info is not None
    assert (info.function, info.args, info.kwargs, info.job_try) == (
        "sync_mailbox",
        ("m-1",),
        {},
        None,
    )
    assert before <= info.score <= after  # type: ignore[operator]
    assert await Job("sync:m-1", rt.redis).status() == JobStatus.queued
    ttl = await rt.redis.pttl(job_key_prefix + "sync:m-1")
    assert expires_extra_ms - 5_000 < ttl <= expires_extra_ms


async def test_a_deferred_job_is_scored_and_kept_for_its_delay(rt: Runtime) -> None:
    before = int(time.time() * 1000)
    assert await enqueue(rt.redis, "sync_mailbox", "m-2", job_id="sync:m-2", defer_by=30) is True
    score = await rt.redis.zscore(rt.redis.default_queue_name, "sync:m-2")
    assert score is not None and before + 30_000 <= score <= before + 35_000
    assert await Job("sync:m-2", rt.redis).status() == JobStatus.deferred
    ttl = await rt.redis.pttl(job_key_prefix + "sync:m-2")
    assert expires_extra_ms + 25_000 < ttl <= expires_extra_ms + 30_000


async def test_an_existing_job_or_kept_result_refuses_as_arq_does(rt: Runtime) -> None:
    assert await enqueue(rt.redis, "sync_mailbox", "m-3", job_id="sync:m-3") is True
    # Queued: refused by us and by ARQ alike, and nothing is written twice.
    assert await enqueue(rt.redis, "sync_mailbox", "m-3", job_id="sync:m-3") is False
    assert await rt.redis.enqueue_job("sync_mailbox", "m-3", _job_id="sync:m-3") is None
    assert await rt.redis.zcard(rt.redis.default_queue_name) == 1

    # A job ARQ queued is refused by us too.
    assert await rt.redis.enqueue_job("sync_mailbox", "m-4", _job_id="sync:m-4") is not None
    assert await enqueue(rt.redis, "sync_mailbox", "m-4", job_id="sync:m-4") is False

    # A finished job whose result is kept blocks its id, as the ARQ trap says.
    await rt.redis.set(result_key_prefix + "sync:m-5", b"kept")
    assert await enqueue(rt.redis, "sync_mailbox", "m-5", job_id="sync:m-5") is False
    assert await rt.redis.zscore(rt.redis.default_queue_name, "sync:m-5") is None
    await rt.redis.delete(result_key_prefix + "sync:m-5")
    assert await enqueue(rt.redis, "sync_mailbox", "m-5", job_id="sync:m-5") is True


async def test_the_script_is_loaded_again_after_a_flush(rt: Runtime) -> None:
    assert await enqueue(rt.redis, "sync_mailbox", "m-6", job_id="sync:m-6") is True
    await rt.redis.script_flush()
    assert await enqueue(rt.redis, "sync_mailbox", "m-7", job_id="sync:m-7") is True
    assert await rt.redis.zcard(rt.redis.default_queue_name) == 2
