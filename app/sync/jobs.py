"""ARQ job functions. Each takes ids only, opens its own sessions and is safe to run twice."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from functools import partial
from typing import Any

from app.db.repositories.credentials import CredentialRepository
from app.db.repositories.mailboxes import MailboxRepository
from app.db.repositories.subscriptions import SubscriptionRepository
from app.events import snapshot
from app.providers.base import AuthExpiredError, ProviderError
from app.sync.cases.jobs import wake_after_pass
from app.sync.engine import Outcome, SyncEngine
from app.sync.monitor import CompletionMonitor
from app.sync.queue import (
    enqueue_cleanup,
    enqueue_subscription,
    enqueue_sync,
    is_connect_job,
    subscription_slot,
)
from app.sync.runtime import Runtime
from app.sync.states import MailboxStatus
from app.sync.subscriptions import SubscriptionService

log = logging.getLogger(__name__)

# How often a healthy push channel is renewed (Gmail asks for daily watch renewal).
RENEW_EVERY_SECONDS = 24 * 3600
# A periodic pass overdue by more than this goes to its mailbox's next slot of the interval
# (app/sync/spread.py) instead of running with every other overdue one.
LATE_PERIODIC_SECONDS = 60.0
# Enqueues the scheduler sends to Redis at once.
ENQUEUE_AT_ONCE = 50


def _rt(ctx: dict[str, Any]) -> Runtime:
    rt: Runtime = ctx["rt"]
    return rt


async def sync_mailbox(ctx: dict[str, Any], mailbox_id: str) -> str:
    """One bounded slice of sync for one mailbox, then schedule what follows."""
    rt = _rt(ctx)
    mid = uuid.UUID(mailbox_id)
    if is_connect_job(str(ctx.get("job_id", ""))):
        # The push channel of a mailbox just connected: created by a worker, at the
        # service's pace, so connect answers without it and a burst of connects is not
        # throttled; beside the first slice, so changes during the backfill are notified.
        delay = await subscription_slot(rt.redis, rt.settings.subscriptions_per_second)
        await enqueue_subscription(rt.redis, mid, defer_by=delay or None)
    result = await SyncEngine(rt, owner=ctx.get("worker_id", "worker")).run_slice(mid)
    token = result.fencing_token
    if result.outcome is Outcome.CONTINUE:
        # Our own job id is still held while we run, so the continuation needs its own.
        await enqueue_sync(rt.redis, mid, suffix=f"c{token}")
    elif result.outcome is Outcome.DONE_AGAIN:
        await enqueue_sync(rt.redis, mid, suffix=f"a{token}")
    elif result.outcome is Outcome.RETRY_LATER:
        await enqueue_sync(rt.redis, mid, suffix=f"r{uuid.uuid4().hex[:8]}", defer_by=result.delay)
    if result.outcome in (Outcome.DONE, Outcome.DONE_AGAIN) and result.in_cases:
        # A full mirror's case entries wait for its first completed pass.
        await wake_after_pass(rt, mid)
    log.info("sync %s: %s after %d pages", mailbox_id, result.outcome.value, result.pages)
    return result.outcome.value


async def ensure_subscription(ctx: dict[str, Any], mailbox_id: str) -> str:
    rt = _rt(ctx)
    try:
        sub = await SubscriptionService(rt).ensure(uuid.UUID(mailbox_id))
    except AuthExpiredError as exc:
        log.warning("subscription for %s: authorization expired: %s", mailbox_id, exc)
        return "auth_expired"
    except ProviderError as exc:
        # The renewal cron tries again; sync still runs on its schedule meanwhile.
        log.warning("subscription for %s failed: %s: %s", mailbox_id, exc.__class__.__name__, exc)
        return "failed"
    return "none" if sub is None else "active"


async def cleanup_disconnected(ctx: dict[str, Any], mailbox_id: str) -> str:
    """After a disconnect: remove push channels at the provider, then the credentials."""
    rt = _rt(ctx)
    mid = uuid.UUID(mailbox_id)
    async with rt.sessions() as session:
        mailbox = await MailboxRepository(session).get(mid)
    if mailbox is None or mailbox.status != MailboxStatus.DISCONNECTED:
        return "skipped"
    try:
        await SubscriptionService(rt).remove_all(mid)
    except ProviderError as exc:
        # The channel expires by itself; credentials must go regardless.
        log.warning("unsubscribe for %s failed: %s", mailbox_id, exc)
        async with rt.sessions() as session, session.begin():
            await SubscriptionRepository(session, rt.cipher).delete_for_mailbox(mid)
    async with rt.sessions() as session, session.begin():
        current = await MailboxRepository(session).get(mid)
        # A reconnect may have raced us: its new credentials must stay.
        if current is not None and current.status == MailboxStatus.DISCONNECTED:
            await CredentialRepository(session, rt.cipher).delete(mid)
    return "cleaned"


async def schedule(ctx: dict[str, Any]) -> dict[str, int]:
    """Rebuild the queue from PostgreSQL: due mailboxes, owed passes, lapsed leases."""
    rt = _rt(ctx)
    settings = rt.settings
    limit = settings.scheduler_batch
    async with rt.sessions() as session, session.begin():
        repo = MailboxRepository(session)
        # Periodic passes that all came due at once (workers down or behind) are spread
        # over the interval again, rather than run together.
        reslotted = await repo.reslot_late(
            interval=settings.sync_interval_seconds,
            without_push=settings.sync_poll_without_push_seconds,
            late_seconds=LATE_PERIODIC_SECONDS,
            limit=limit,
        )
    async with rt.sessions() as session:
        repo = MailboxRepository(session)
        due = await repo.due_for_sync(limit)
        lapsed = await repo.with_lapsed_lease(limit)
        leftovers = await repo.disconnected_with_credentials(limit)
    # A first sync still waiting for its connect's job is queued under that job's id:
    # collapsed with it while it waits, made again if Redis lost it.
    enqueued = sum(
        await _in_batches(
            [partial(enqueue_sync, rt.redis, mid, suffix=connect) for mid, connect in due]
        )
    )
    # A dead worker's job id may still be held for the in-progress timeout; use a new one.
    enqueued += sum(
        await _in_batches(
            [
                partial(enqueue_sync, rt.redis, mid, suffix=f"recover{token}")
                for mid, token in lapsed
            ]
        )
    )
    for mid in leftovers:
        await enqueue_cleanup(rt.redis, mid)
    # Resnapshot walks whose batch job was lost continue from their row.
    await snapshot.recover_stalled(rt, limit)
    if due or lapsed or reslotted:
        log.info(
            "scheduler: %d due, %d lapsed leases, %d enqueued, %d late passes spread",
            len(due),
            len(lapsed),
            enqueued,
            reslotted,
        )
    return {"due": len(due), "lapsed": len(lapsed), "enqueued": enqueued, "spread": reslotted}


async def _in_batches(actions: list[Callable[[], Awaitable[bool]]]) -> list[bool]:
    """Enqueue side by side, ENQUEUE_AT_ONCE at a time: a tick that finds hundreds of
    mailboxes due pays a few Redis round trips' time, not hundreds in a row."""
    done: list[bool] = []
    for start in range(0, len(actions), ENQUEUE_AT_ONCE):
        done += await asyncio.gather(*(a() for a in actions[start : start + ENQUEUE_AT_ONCE]))
    return done


async def renew_subscriptions(ctx: dict[str, Any]) -> dict[str, int]:
    rt = _rt(ctx)
    limit = rt.settings.scheduler_batch
    async with rt.sessions() as session:
        subs = SubscriptionRepository(session, rt.cipher)
        due = await subs.due_for_renewal(RENEW_EVERY_SECONDS, limit)
        # Gmail push needs a Pub/Sub topic; without one there is nothing to create.
        providers = ["microsoft"] + (["google"] if rt.settings.gmail_pubsub_topic else [])
        missing = [mid for p in providers for mid in await subs.without_subscription(p, limit)]
    for mid in {*due, *missing}:
        await enqueue_subscription(rt.redis, mid)
    return {"renew": len(due), "create": len(missing)}


async def monitor(ctx: dict[str, Any], *, sweep: bool | None = None) -> dict[str, int]:
    """The completion monitor's cron: schedule and enqueue checks; once a minute, also
    re-enqueue overdue syncs and mark lapsed push channels."""
    if sweep is None:
        sweep = datetime.now(UTC).second < 15
    return await CompletionMonitor(_rt(ctx), owner=ctx.get("worker_id", "worker")).tick(sweep=sweep)


async def verify_mailbox(ctx: dict[str, Any], mailbox_id: str) -> str:
    """Compare one mailbox with the provider's counts; repair what differs."""
    monitor = CompletionMonitor(_rt(ctx), owner=ctx.get("worker_id", "worker"))
    outcome = await monitor.verify(uuid.UUID(mailbox_id))
    log.info("verify %s: %s", mailbox_id, outcome.value)
    return outcome.value
