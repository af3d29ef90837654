"""`arq app.sync.worker.WorkerSettings`: the sync worker.

Function timeouts are short on purpose: ARQ re-runs a killed worker's job only after the
longest function timeout, and a slice of sync work is bounded well below it anyway.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import socket
import time
import uuid
from typing import Any, ClassVar

from arq import cron
from arq.connections import ArqRedis, RedisSettings
from arq.constants import default_queue_name
from arq.worker import func
from redis.exceptions import RedisError
from sqlalchemy.exc import SQLAlchemyError

from app.config import get_settings
from app.db.session import open_connections
from app.events import snapshot
from app.logging import configure_logging
from app.metrics import QUEUE_DEPTH, serve_process_metrics
from app.providers import registry
from app.sync import jobs, partitions, presence
from app.sync.cases import jobs as case_jobs
from app.sync.runtime import Runtime
from app.sync.webhook_retention import prune_webhook_log

log = logging.getLogger(__name__)

_settings = get_settings()


# A sync takes a connection per folder page in flight: the first job finds some open.
_CONNECTIONS_AT_START = 4


async def _open_database_connections(rt: Runtime) -> None:
    # Best effort: with PostgreSQL down the worker still starts, and connects later.
    try:
        async with asyncio.timeout(5):
            await open_connections(rt.engine, _CONNECTIONS_AT_START)
    except (OSError, TimeoutError, SQLAlchemyError) as exc:
        log.warning("no database connections opened at start-up: %s", exc)


# Collections start after this many net allocations of tracked objects (CPython's default:
# 700, 10, 10). See `_tune_the_collector`.
_GC_THRESHOLDS = (10_000, 10, 100)


def _tune_the_collector() -> None:
    """A backfill page allocates thousands of lists and strings that live until the page
    commits, and the default thresholds ran ~1,200 collections per 100k messages, a tenth of
    the worker's CPU, walking the same pages in flight over and over (and, before they were
    frozen, everything the worker imported). Almost nothing of a page is cyclic garbage
    (the HTTP client breaks httpx's response cycle, see app/providers/http_client.py), so
    reference counting frees it and rarer collections cost no memory: with these thresholds
    a 100k backfill runs a handful of collections and the worker's peak RSS is unchanged
    (~115 MiB). Before httpx's cycle was broken, the same thresholds grew it to ~195 MiB.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(*_GC_THRESHOLDS)


QUEUE_SAMPLE_SECONDS = 5.0


async def sample_queue_depth(redis: ArqRedis) -> None:
    """Jobs due now and jobs deferred (backoff, continuations), for the queue-depth gauge."""
    now_ms = int(time.time() * 1000)
    async with redis.pipeline(transaction=False) as pipe:
        pipe.zcount(default_queue_name, "-inf", now_ms)
        pipe.zcount(default_queue_name, f"({now_ms}", "+inf")
        ready, deferred = await pipe.execute()
    QUEUE_DEPTH.labels("ready").set(ready)
    QUEUE_DEPTH.labels("deferred").set(deferred)


async def _sample_forever(redis: ArqRedis) -> None:
    while True:
        try:
            await sample_queue_depth(redis)
        except (OSError, RedisError) as exc:
            log.debug("queue depth not sampled: %s", exc)
        await asyncio.sleep(QUEUE_SAMPLE_SECONDS)


async def startup(ctx: dict[str, Any]) -> None:
    configure_logging()
    settings = get_settings()
    ctx["rt"] = rt = await Runtime.create(settings, redis=ctx["redis"])
    ctx["worker_id"] = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
    serve_process_metrics(settings.worker_metrics_port, settings.metrics_host, "worker")
    rt.activity.start()
    ctx["sampler"] = asyncio.create_task(_sample_forever(ctx["redis"]), name="queue-depth")
    ctx["presence"] = asyncio.create_task(
        presence.announce_forever(ctx["redis"], ctx["worker_id"]), name="presence"
    )
    registry.import_providers()
    await _open_database_connections(rt)
    _tune_the_collector()
    log.info("worker %s started", ctx["worker_id"])


async def shutdown(ctx: dict[str, Any]) -> None:
    for name in ("sampler", "presence"):
        task: asyncio.Task[None] | None = ctx.get(name)
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    if "worker_id" in ctx:
        with contextlib.suppress(OSError, RedisError):
            await presence.withdraw(ctx["redis"], ctx["worker_id"])
    rt: Runtime | None = ctx.get("rt")
    if rt is not None:
        # arq closes the Redis pool it owns; the rest is ours.
        await rt.close(close_redis=False)


def _timeout() -> int:
    return get_settings().job_timeout_seconds


class WorkerSettings:
    functions: ClassVar[list[Any]] = [
        # keep_result=0: a finished job must never block the next enqueue of the same id.
        func(
            jobs.sync_mailbox, name="sync_mailbox", timeout=_timeout(), keep_result=0, max_tries=3
        ),
        func(
            jobs.ensure_subscription,
            name="ensure_subscription",
            timeout=60,
            keep_result=0,
            max_tries=3,
        ),
        func(
            jobs.cleanup_disconnected,
            name="cleanup_disconnected",
            timeout=60,
            keep_result=0,
            max_tries=3,
        ),
        func(
            case_jobs.sync_case_entry,
            name=case_jobs.CASE_FUNCTION,
            timeout=_timeout(),
            keep_result=0,
            max_tries=3,
        ),
        # A check is a few requests; a repair by listing fetches only what is missing.
        func(
            jobs.verify_mailbox,
            name="verify_mailbox",
            timeout=_timeout(),
            keep_result=0,
            max_tries=1,
        ),
        # One job of a partitioned backfill: claims free windows of the mailbox until its
        # slice budget is spent (app/sync/partitions.py).
        func(
            partitions.run_windows,
            name=partitions.PARTITION_FUNCTION,
            timeout=_timeout(),
            keep_result=0,
            max_tries=3,
        ),
        # One batch of a resnapshot walk; each enqueues the next (app/events/snapshot.py).
        func(
            snapshot.resnapshot_batch,
            name=snapshot.FUNCTION,
            timeout=60,
            keep_result=0,
            max_tries=3,
        ),
    ]
    cron_jobs: ClassVar[list[Any]] = [
        # Every 5 s: due mailboxes, owed passes, lapsed leases (with the lease heartbeat,
        # a dead worker's mailbox resumes within about LEASE_SECONDS + 5 s). Unique per run,
        # so two workers do not both run one tick; the query walks the due-time index.
        cron(
            jobs.schedule,
            second=set(range(0, 60, 5)),
            run_at_startup=True,
            timeout=30,
            keep_result=0,
            unique=True,
        ),
        # The completion monitor: every 15 s it enqueues the checks that came due (each
        # mailbox's at its own moment of VERIFY_INTERVAL_SECONDS); once a minute it also
        # re-enqueues overdue syncs and marks lapsed push channels.
        cron(
            jobs.monitor,
            second={7, 22, 37, 52},
            run_at_startup=False,
            timeout=30,
            keep_result=0,
            unique=True,
        ),
        cron(
            case_jobs.schedule_cases,
            second=set(range(2, 60, 5)),
            run_at_startup=True,
            timeout=30,
            keep_result=0,
            unique=True,
        ),
        cron(
            jobs.renew_subscriptions,
            minute=set(range(0, 60, 5)),
            run_at_startup=True,
            timeout=60,
            keep_result=0,
            unique=True,
        ),
        # Windows of a partitioned backfill that nobody holds (a dead worker's lease lapsed,
        # their jobs lost with Redis) get a job again.
        cron(
            partitions.recover_windows,
            second=set(range(4, 60, 5)),
            run_at_startup=True,
            timeout=30,
            keep_result=0,
            unique=True,
        ),
        # The webhook audit log's retention (WEBHOOK_LOG_RETENTION_HOURS).
        cron(
            prune_webhook_log,
            minute=set(range(3, 60, 10)),
            timeout=120,
            keep_result=0,
            unique=True,
        ),
    ]
    on_startup = startup
    on_shutdown = shutdown
    redis_settings = RedisSettings.from_dsn(_settings.redis_url)
    max_jobs = _settings.worker_max_jobs
    job_timeout = _settings.job_timeout_seconds
    keep_result = 0
    # SIGTERM: stop taking jobs and let running slices (bounded by SYNC_SLICE_SECONDS, 20 s
    # by default) commit and end; what still runs after this is cancelled (its page in
    # flight rolls back), so the process is gone within a container's 30 s grace period.
    job_completion_wait = max(1, min(int(_settings.sync_slice_seconds) + 5, 25))
    health_check_interval = 30
    # ARQ polls Redis for due jobs; the default half second would be added to every sync a
    # webhook asks for.
    poll_delay = 0.1
