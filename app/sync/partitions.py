"""A large stream's first enumeration as leased, checkpointed windows on every worker.

    mailbox slice: stream above BACKFILL_PARTITION_THRESHOLD, never enumerated
      -> live cursor first (provider.backfill_cursor) -> received-time windows sized from
         the stream's count -> ONE transaction: plan + fence -> enqueue window jobs (ids)
    window job (any worker, any number at once): claim a window (SKIP LOCKED, fencing token)
      -> per page: fetch -> ONE transaction: messages, progress, outbox, checkpoint (fenced)
      -> a window that turns out large is split, the new half claimed by whoever is free
    the last window done -> ONE transaction: sweep what no window saw, the stream's cursor
      becomes the live cursor -> the mailbox's next slice follows it (its replay of what
      changed meanwhile is idempotent) and only then may the mailbox be `connected`.

Why the live cursor first: a window listed at 10:00 does not see a message deleted at
10:01 or moved in at 10:02; the cursor taken before any window replays both afterwards.
Why windows: a folder's delta pages come one after another (each carries the next link),
so one large folder is a chain of requests no number of workers can shorten; windows of
received time are independent listings that run side by side.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any, TypeVar

from arq.connections import ArqRedis

from app.db.repositories.cursors import CursorRepository, StreamState
from app.db.repositories.mailboxes import Lease, MailboxRepository
from app.db.repositories.messages import MessageRepository
from app.db.repositories.outbox import OutboxRepository
from app.db.repositories.partitions import (
    HeldWindow,
    PartitionLease,
    PartitionLost,
    PartitionRepository,
    PlannedWindow,
    WindowEnd,
)
from app.events.changes import MESSAGES_CHANGED, PageChanges
from app.metrics import MESSAGES_WRITTEN, PAGES_WRITTEN
from app.providers.base import (
    CursorInvalidError,
    MailProvider,
    ProviderError,
    ProviderLimits,
    SearchWindow,
    StreamInfo,
    SyncContext,
    TransientError,
    WindowedListing,
    WindowPage,
)
from app.sync import activity
from app.sync.binding import bind
from app.sync.cases.mail import CaseMail
from app.sync.heartbeat import renew_while_running
from app.sync.presence import live_workers
from app.sync.queue import enqueue, enqueue_sync
from app.sync.runtime import Runtime
from app.sync.states import StreamMode
from app.sync.tokens import TokenSource, with_token_retry

log = logging.getLogger(__name__)

T = TypeVar("T")

PARTITION_FUNCTION = "backfill_partitions"
# Window jobs per mailbox beyond the provider's concurrent requests: while one job commits
# a page, another's request keeps the slot busy.
_EXTRA_JOBS = 2
# A provider without a concurrency limit (Gmail: a quota) still spreads over workers.
_JOBS_WITHOUT_CONCURRENCY = 4
# A window whose provider refused it waits this long at least before it is tried again.
_RETRY_SECONDS = 10.0
# A window job handed to another worker process (this one runs its share of the mailbox's
# window jobs already) is handed on at most this many times, then runs where it lands.
_MAX_HANDOFFS = 4
# More windows than any provider's jobs (jobs_for's cap).
_MANY = 1 << 30
# Window jobs running in this process, per mailbox.
_RUNNING: Counter[uuid.UUID] = Counter()


def windows_for(
    total: int, size: int, oldest: datetime, newest: datetime, *, at_least: int = 1
) -> list[PlannedWindow]:
    """Windows of about `size` messages each if mail were spread evenly over time (it is
    not: large windows split themselves as they run, idle jobs take half of the busiest),
    and at least `at_least` of them (one for each job, so none starts idle). The first and
    last are open, so a message received outside [oldest, newest] still falls in one."""
    count = max(1, at_least, math.ceil(total / size))
    span = newest - oldest
    cuts: list[datetime] = []
    for i in range(1, count):
        cut = (oldest + span * i / count).replace(microsecond=0)
        if cut > oldest and (not cuts or cut > cuts[-1]):
            cuts.append(cut)
    bounds: list[datetime | None] = [None, *cuts, None]
    return [PlannedWindow(bounds[i], bounds[i + 1]) for i in range(len(bounds) - 1)]


# An idle job takes half of a held window that has at least this many pages left.
_PAGES_WORTH_SHARING = 3
# A provider that does not say how large its pages are: as if a thousand.
_NO_PAGE_SIZE = 1000
# A held window is shared only if each half would still span this long (Graph's filters
# have whole seconds; a split of a few seconds saves nothing).
_MIN_SHARED_SPAN = timedelta(seconds=4)


def steal_point(held: list[HeldWindow], min_messages: float) -> tuple[HeldWindow, datetime] | None:
    """The held window with the most messages left after its position, and the middle of
    what it has left; None when none has `min_messages` left (by the density its stream's
    windows have shown so far: messages listed per second of received time covered)."""
    listed: dict[str, float] = {}
    covered: dict[str, float] = {}
    for w in held:
        if w.listed_before > w.listed_from:
            listed[w.stream_key] = listed.get(w.stream_key, 0.0) + w.listed
            seconds = (w.listed_before - w.listed_from).total_seconds()
            covered[w.stream_key] = covered.get(w.stream_key, 0.0) + seconds
    best: tuple[float, HeldWindow, datetime] | None = None
    for w in held:
        if not covered.get(w.stream_key):
            continue
        left = (w.window_end or w.now) - w.listed_before
        if left < 2 * _MIN_SHARED_SPAN:
            continue
        expected = listed[w.stream_key] / covered[w.stream_key] * left.total_seconds()
        if expected >= min_messages and (best is None or expected > best[0]):
            best = (expected, w, (w.listed_before + left / 2).replace(microsecond=0))
    return None if best is None else (best[1], best[2])


def jobs_for(limits: ProviderLimits, windows: int) -> int:
    wanted = (
        limits.max_concurrency + _EXTRA_JOBS
        if limits.max_concurrency
        else _JOBS_WITHOUT_CONCURRENCY
    )
    return max(1, min(wanted, windows))


async def enqueue_windows(
    redis: ArqRedis,
    mailbox_id: uuid.UUID,
    jobs: int,
    tag: str,
    *,
    defer_by: float | None = None,
    handoffs: int = 0,
) -> int:
    """Window jobs carry the mailbox id only (and how often the job was handed on): each
    claims whichever window is free."""
    enqueued = 0
    for slot in range(jobs):
        enqueued += await enqueue(
            redis,
            PARTITION_FUNCTION,
            str(mailbox_id),
            handoffs,
            job_id=f"partition:{mailbox_id}:{tag}:{slot}",
            defer_by=defer_by,
        )
    return enqueued


def partitionable(
    provider: MailProvider, stream: StreamState, threshold: int, *, cases_only: bool
) -> bool:
    return (
        threshold > 0
        and not cases_only
        and isinstance(provider, WindowedListing)
        and stream.cursor is None
        and StreamMode(stream.mode) is StreamMode.FULL
        and (stream.total_estimate or 0) > threshold
    )


async def backfilling(rt: Runtime, mailbox_id: uuid.UUID) -> bool:
    """Whether windows of one of the mailbox's streams are planned and not yet finished."""
    async with rt.sessions() as session:
        return bool(await PartitionRepository(session).active(mailbox_id))


async def plan_backfills(
    rt: Runtime,
    provider: MailProvider,
    ctx: SyncContext,
    call: Callable[[Callable[[], Awaitable[Any]]], Awaitable[Any]],
    lease: Lease,
    streams: list[StreamState],
    *,
    cases_only: bool,
    before_windows: Awaitable[Any] | None = None,
) -> set[str]:
    """The mailbox slice's part: plan windows for large streams never enumerated, and say
    which streams the windows own (the slice leaves them alone).

    `before_windows` (the newest messages' provisional rows, asked for meanwhile) is awaited
    before any window job is enqueued: a window's row must never be overwritten by a
    provisional one."""
    if all(s.cursor is not None for s in streams):
        # Every stream follows its cursor (an incremental pass): none is partitioned, none
        # can be planned, and no plan is left to forget (a stream restarted since has no
        # cursor). Nothing to ask PostgreSQL, on the passes that matter most for their cost.
        if before_windows is not None:
            await before_windows
        return set()
    settings = rt.settings
    mailbox_id = lease.mailbox_id
    async with rt.sessions() as session, session.begin():
        partitions = PartitionRepository(session)
        # Plans of streams gone or restarted since: their windows never run again.
        await partitions.forget_stale(mailbox_id)
        active = await partitions.active(mailbox_id)
    planned: dict[str, int] = {}
    for stream_state in streams:
        if stream_state.stream_key in active or not partitionable(
            provider, stream_state, settings.backfill_partition_threshold, cases_only=cases_only
        ):
            continue
        assert isinstance(provider, WindowedListing)
        stream = stream_state.as_stream()
        # The live cursor before any window is listed: whatever changes from here on is
        # replayed after the windows. The range is no listing of content: asked meanwhile.
        asked = await asyncio.gather(
            call(partial(provider.backfill_cursor, ctx, stream)),
            call(partial(provider.received_range, ctx, stream)),
            return_exceptions=True,
        )
        for outcome in asked:
            # Both have finished here, so neither is left running unobserved.
            if isinstance(outcome, BaseException):
                raise outcome
        live: dict[str, Any] = asked[0]  # type: ignore[assignment]
        span: tuple[datetime, datetime] | None = asked[1]  # type: ignore[assignment]
        if span is None:
            continue
        oldest, newest = span
        windows = windows_for(
            int(stream_state.total_estimate or 0),
            settings.backfill_partition_size,
            oldest,
            newest,
            at_least=jobs_for(provider.limits(), _MANY),
        )
        async with rt.sessions() as session, session.begin():
            ids = await PartitionRepository(session).plan(
                mailbox_id, stream.key, stream_state.generation, live, windows
            )
            await MailboxRepository(session).fence(lease, settings.lease_seconds)
        planned[stream.key] = len(ids)
        log.info(
            "mailbox %s stream %s: %d messages in %d windows",
            mailbox_id,
            stream.key,
            stream_state.total_estimate,
            len(ids),
        )
    if before_windows is not None:
        await before_windows
    if planned:
        jobs = jobs_for(provider.limits(), sum(planned.values()))
        await enqueue_windows(rt.redis, mailbox_id, jobs, f"plan{lease.fencing_token}")
    return set(active) | set(planned)


async def finish_stream(rt: Runtime, mailbox_id: uuid.UUID, stream_key: str) -> bool:
    """Every window of the stream is done: sweep what no window saw and hand the stream the
    live cursor, in one transaction. Safe to run twice (and by two workers at once: the
    backfill row is locked and gone after the first). True when this call finished it."""
    events = rt.settings.events_enabled
    async with rt.sessions() as session, session.begin():
        partitions = PartitionRepository(session)
        backfill = await partitions.lock_finished_stream(mailbox_id, stream_key)
        if backfill is None:
            return False
        cursors = CursorRepository(session)
        current = {s.stream_key: s for s in await cursors.list(mailbox_id)}.get(stream_key)
        if current is None or current.generation != backfill.generation:
            # The stream went away or was restarted since: this plan is moot.
            await partitions.forget_stream(mailbox_id, stream_key)
            return False
        swept = await MessageRepository(session).sweep_stream(
            mailbox_id, stream_key, backfill.generation
        )
        await cursors.save(
            mailbox_id,
            stream_key,
            cursor=backfill.live_cursor,
            caught_up=False,
            mode=StreamMode.INCREMENTAL,
            total_estimate=None,
        )
        await partitions.forget_stream(mailbox_id, stream_key)
        # The mailbox row last, as every slice takes its locks (stream rows, then the
        # mailbox row, which the outbox takes too): no two transactions wait on each other.
        changes = PageChanges(stream_key)
        changes.deleted(swept)
        payload = changes.payload() if events else None
        if payload is not None:
            await OutboxRepository(session).add(mailbox_id, MESSAGES_CHANGED, payload)
        # Always, swept or not: the mailbox row's lock orders this commit with a slice
        # releasing the mailbox (app/sync/engine.py, waiting for windows).
        await partitions.count_synced(mailbox_id, -len(swept))
    log.info(
        "mailbox %s stream %s: every window done; following the live cursor", mailbox_id, stream_key
    )
    await enqueue_sync(
        rt.redis, mailbox_id, suffix=f"backfilled:{stream_key[-12:]}:{backfill.generation}"
    )
    return True


@dataclasses.dataclass(slots=True)
class WindowRun:
    """What one window job did."""

    pages: int = 0
    claimed: int = 0
    more: bool = False
    delay: float = 0.0
    # This process runs its share of the mailbox's window jobs: another process should.
    handed_off: bool = False


class WindowRunner:
    """Claims the mailbox's free windows one after another until its budget is spent."""

    def __init__(self, rt: Runtime, owner: str) -> None:
        self.rt = rt
        self.owner = owner
        self.settings = rt.settings

    async def run(self, mailbox_id: uuid.UUID, *, handoffs: int = 0) -> WindowRun:
        _RUNNING[mailbox_id] += 1
        try:
            if handoffs < _MAX_HANDOFFS and _RUNNING[mailbox_id] > await self._share(mailbox_id):
                return WindowRun(handed_off=True)
            return await self._run(mailbox_id)
        finally:
            _RUNNING[mailbox_id] -= 1
            if _RUNNING[mailbox_id] <= 0:
                del _RUNNING[mailbox_id]

    async def _share(self, mailbox_id: uuid.UUID) -> int:
        """How many of the mailbox's window jobs one process should run: its jobs spread
        over the live worker processes, so each process's CPU (parsing pages, encoding
        rows) carries part of the backfill."""
        async with self.rt.sessions() as session:
            mailbox = await MailboxRepository(session).get(mailbox_id)
        if mailbox is None:
            return 1
        wanted = jobs_for(self.rt.provider(mailbox.provider).limits(), _MANY)
        return math.ceil(wanted / await live_workers(self.rt.redis))

    async def _run(self, mailbox_id: uuid.UUID) -> WindowRun:
        settings = self.settings
        run = WindowRun()
        deadline = time.monotonic() + settings.sync_slice_seconds
        pages_left = settings.sync_slice_pages
        context: _Context | None = None
        nothing_free = False
        while time.monotonic() < deadline and pages_left > 0:
            async with self.rt.sessions() as session, session.begin():
                lease = await PartitionRepository(session).claim(
                    mailbox_id, self.owner, settings.lease_seconds
                )
            if lease is None:
                lease = await self._steal(mailbox_id)
            if lease is None:
                # Nothing free, nothing worth sharing: the open windows are other jobs'.
                nothing_free = True
                break
            run.claimed += 1
            if context is None:
                context = await self._context(mailbox_id)
                if context is None:
                    await self._release(lease)
                    return run
            try:
                pages, done = await self._run_window(context, lease, deadline, pages_left)
            except PartitionLost as exc:
                log.warning("mailbox %s: %s; stopped without writing", mailbox_id, exc)
                continue
            except ProviderError as exc:
                # The mailbox's own slice classifies errors (auth, permanent) and sets its
                # status; the window waits and is taken again from its checkpoint.
                await self._release(lease)
                log.warning("mailbox %s window %d: %s", mailbox_id, lease.partition_id, exc)
                retry_after = exc.retry_after if isinstance(exc, TransientError) else None
                run.more, run.delay = True, max(retry_after or 0.0, _RETRY_SECONDS)
                await enqueue_sync(self.rt.redis, mailbox_id)
                return run
            run.pages += pages
            pages_left -= pages
            if done:
                await finish_stream(self.rt, mailbox_id, lease.stream_key)
            elif not pages:
                break
        # A stream whose last window was done by a worker that died before finishing it.
        async with self.rt.sessions() as session:
            active = await PartitionRepository(session).active(mailbox_id)
        for key, backfill in active.items():
            if backfill.open_partitions == 0:
                await finish_stream(self.rt, mailbox_id, key)
        # The budget is spent with windows still open: a continuation goes on with them.
        run.more = not nothing_free and any(b.open_partitions for b in active.values())
        return run

    async def _steal(self, mailbox_id: uuid.UUID) -> PartitionLease | None:
        """The second half of what the busiest held window has left, as a window of our
        own: near the end of a backfill, the last windows would otherwise each run their
        pages one after another while request slots and workers idle."""
        async with self.rt.sessions() as session:
            held = await PartitionRepository(session).shared_candidates(mailbox_id)
        limits = self.rt.provider(held[0].provider).limits() if held else ProviderLimits()
        # Worth a request of our own when the holder has a few pages left, not just the
        # one it is already fetching.
        chosen = steal_point(held, _PAGES_WORTH_SHARING * (limits.page_size or _NO_PAGE_SIZE))
        if chosen is None:
            return None
        victim, at = chosen
        async with self.rt.sessions() as session, session.begin():
            lease = await PartitionRepository(session).steal(
                victim, at, self.owner, self.settings.lease_seconds
            )
        if lease is not None:
            log.info(
                "mailbox %s window %d: took over from %s (window %d)",
                mailbox_id,
                victim.partition_id,
                at.isoformat(),
                lease.partition_id,
            )
        return lease

    async def _release(self, lease: PartitionLease) -> None:
        async with self.rt.sessions() as session, session.begin():
            await PartitionRepository(session).release(lease)

    async def _context(self, mailbox_id: uuid.UUID) -> _Context | None:
        async with self.rt.sessions() as session:
            mailbox = await MailboxRepository(session).get(mailbox_id)
            streams = {s.stream_key: s for s in await CursorRepository(session).list(mailbox_id)}
        if mailbox is None:
            return None
        provider, ctx, tokens = bind(self.rt, mailbox)
        return _Context(
            mailbox_id=mailbox_id,
            provider_name=mailbox.provider,
            provider=provider,
            ctx=ctx,
            tokens=tokens,
            streams={k: s.as_stream() for k, s in streams.items()},
            case_mail=CaseMail(mailbox.scope, events=self.settings.events_enabled),
        )

    async def _run_window(
        self, context: _Context, lease: PartitionLease, deadline: float, pages_left: int
    ) -> tuple[int, bool]:
        """Pages of one window until it is done or the budget is spent; (pages, done)."""
        stream = context.streams.get(lease.stream_key)
        provider = context.provider
        if stream is None or not isinstance(provider, WindowedListing):
            # The stream is gone since the plan: its rows and plan went with it.
            await self._release(lease)
            return 0, False
        lost = asyncio.Event()
        # A lease found gone stops the window at its next page: the fence refuses the write
        # anyway, so stopping early saves requests.
        heartbeat = asyncio.create_task(
            renew_while_running(
                self.rt,
                lambda session: PartitionRepository(session).heartbeat(
                    lease, self.settings.lease_seconds
                ),
                what=f"window {lease.partition_id}",
                lost=lost,
            )
        )

        def fetch(window: SearchWindow, after: dict[str, Any] | None) -> asyncio.Task[WindowPage]:
            return asyncio.create_task(
                with_token_retry(
                    context.tokens,
                    partial(provider.list_window, context.ctx, stream, window, after),
                )
            )

        pages = 0
        cursor = lease.checkpoint
        listed = lease.listed
        upcoming: asyncio.Task[WindowPage] | None = None
        try:
            while True:
                window = SearchWindow(lease.window_start, lease.window_end)
                current, upcoming = upcoming or fetch(window, cursor), None
                try:
                    page = await current
                except CursorInvalidError:
                    if cursor is None:
                        raise
                    # A page link the provider no longer knows: the window again from its
                    # start (its pages are idempotent).
                    cursor = None
                    continue
                if lost.is_set():
                    raise PartitionLost(f"partition {lease.partition_id} lost mid-window")
                pages += 1
                done = page.cursor is None
                out_of_budget = pages >= pages_left or time.monotonic() >= deadline
                split_at = self._split_point(lease, listed + len(page.upserts), page)
                if not done and not out_of_budget and split_at is None:
                    upcoming = fetch(window, page.cursor)
                end = await self._commit(context, lease, page, done=done)
                if end.at != lease.window_end:
                    # Another worker took the rest from `end` on: stop there. A page
                    # already on its way may list a few of its messages too (written
                    # twice, stored once).
                    lease = dataclasses.replace(lease, window_end=end.at)
                listed += len(page.upserts)
                cursor = page.cursor
                if split_at is not None and not done:
                    async with self.rt.sessions() as session, session.begin():
                        new_id = await PartitionRepository(session).split(lease, split_at)
                    # None: the window already ends there (another worker took its rest).
                    if new_id is not None:
                        log.info(
                            "mailbox %s window %d: large; split at %s (window %d)",
                            context.mailbox_id,
                            lease.partition_id,
                            split_at.isoformat(),
                            new_id,
                        )
                        lease = dataclasses.replace(lease, window_end=split_at)
                        # Whoever is free takes the new half.
                        await enqueue_windows(
                            self.rt.redis, context.mailbox_id, 1, f"split{new_id}"
                        )
                if done:
                    return pages, True
                if out_of_budget:
                    await self._release(lease)
                    return pages, False
        finally:
            heartbeat.cancel()
            pending: list[asyncio.Task[Any]] = [heartbeat]
            if upcoming is not None:
                upcoming.cancel()
                pending.append(upcoming)
            await asyncio.gather(*pending, return_exceptions=True)

    def _split_point(self, lease: PartitionLease, listed: int, page: WindowPage) -> datetime | None:
        """Halfway through the rest of a window that has listed more than a window's worth
        and has at least a few seconds left; None to go on as it is."""
        if page.cursor is None or page.listed_before is None:
            return None
        if listed < self.settings.backfill_partition_size:
            return None
        end = lease.window_end or datetime.now(UTC)
        position = page.listed_before
        if end - position < timedelta(seconds=4):
            return None
        return (position + (end - position) / 2).replace(microsecond=0)

    async def _commit(
        self, context: _Context, lease: PartitionLease, page: WindowPage, *, done: bool
    ) -> WindowEnd:
        mailbox_id, stream_key = context.mailbox_id, lease.stream_key
        events = self.settings.events_enabled
        async with self.rt.sessions() as session, session.begin():
            partitions = PartitionRepository(session)
            # First: a window whose lease is gone writes nothing (the row lock also keeps a
            # second claimant out until this page commits or rolls back).
            end = await partitions.checkpoint(
                lease,
                self.settings.lease_seconds,
                checkpoint=page.cursor,
                listed=len(page.upserts),
                done=done,
                listed_from=min(filter(None, page.upserts.received_at), default=None),
                listed_before=page.listed_before,
            )
            upserts = await context.case_mail.keep(session, mailbox_id, page.upserts)
            upserted = await MessageRepository(session).upsert_page(
                mailbox_id, stream_key, lease.generation, upserts
            )
            await partitions.count_enumerated(
                mailbox_id, stream_key, lease.generation, len(page.upserts)
            )
            # The mailbox row's lock (the outbox position, the progress) comes last.
            changes = PageChanges(stream_key)
            changes.upserted(upserted, set())
            payload = changes.payload() if events else None
            if payload is not None:
                await OutboxRepository(session).add(mailbox_id, MESSAGES_CHANGED, payload)
            in_cases = await partitions.count_synced(mailbox_id, upserted.inserted)
            unlinked = await context.case_mail.link(
                session, mailbox_id, upserted.written, in_cases=in_cases
            )
            if unlinked:
                await partitions.count_synced(mailbox_id, -len(unlinked))
        PAGES_WRITTEN.labels(context.provider_name).inc()
        self.rt.activity.add(activity.PAGES_WRITTEN)
        if upserted.written:
            MESSAGES_WRITTEN.labels(context.provider_name, "upserted").inc(len(upserted.written))
            self.rt.activity.add(activity.MESSAGES_WRITTEN, len(upserted.written))
        return end


@dataclasses.dataclass(slots=True)
class _Context:
    mailbox_id: uuid.UUID
    provider_name: str
    provider: MailProvider
    ctx: SyncContext
    tokens: TokenSource
    streams: dict[str, StreamInfo]
    case_mail: CaseMail


# -- ARQ functions (registered in app/sync/worker.py) ---------------------------------------


async def run_windows(ctx: dict[str, Any], mailbox_id: str, handoffs: int = 0) -> str:
    """Window job: claim the mailbox's free windows until the slice budget is spent."""
    rt: Runtime = ctx["rt"]
    mid = uuid.UUID(mailbox_id)
    run = await WindowRunner(rt, owner=ctx.get("worker_id", "worker")).run(mid, handoffs=handoffs)
    if run.handed_off:
        # Whichever process polls first takes it: an idle one, usually, not this busy one.
        await enqueue_windows(rt.redis, mid, 1, f"h{uuid.uuid4().hex[:8]}", handoffs=handoffs + 1)
        return "handed off"
    if run.more:
        await enqueue_windows(
            rt.redis, mid, 1, f"c{uuid.uuid4().hex[:8]}", defer_by=run.delay or None
        )
    log.info("windows of %s: %d pages, %d claimed", mailbox_id, run.pages, run.claimed)
    return "more" if run.more else "idle"


async def recover_windows(ctx: dict[str, Any]) -> int:
    """Cron: windows nobody holds (a dead worker's lapsed lease, jobs lost with Redis) get a
    job again; PostgreSQL is the truth, the queue only carries work."""
    rt: Runtime = ctx["rt"]
    async with rt.sessions() as session:
        found = await PartitionRepository(session).mailboxes_with_claimable(
            rt.settings.scheduler_batch
        )
    enqueued = 0
    for mailbox_id, tag in found:
        enqueued += await enqueue_windows(rt.redis, mailbox_id, 1, f"recover{tag}")
    return enqueued
