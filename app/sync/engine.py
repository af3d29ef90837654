"""The provider-agnostic sync engine: one bounded slice of work for one mailbox.

    take lease -> streams -> per stream: fetch page -> ONE transaction (messages, deletes,
    label changes, sweep after a full enumeration, cursor, progress, outbox, lease check)
    -> until caught up or the slice budget is spent -> release the lease with a status.

A slice never runs long: when its budget is spent it says so and the job enqueues the
continuation. Every write is fenced by the lease, so a worker whose lease lapsed (paused,
partitioned, killed and revived) cannot write anything.
"""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import logging
import random
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any

from app.db.models import Mailbox
from app.db.repositories.credentials import CredentialRepository, StoredCredential
from app.db.repositories.cursors import CursorRepository, StreamState
from app.db.repositories.mailboxes import Lease, LeaseLost, MailboxRepository
from app.db.repositories.messages import MessageRepository
from app.db.repositories.outbox import OutboxRepository
from app.db.repositories.partitions import PartitionRepository
from app.db.repositories.pending_streams import PendingHint, PendingStreamRepository
from app.db.repositories.stream_catalogs import StreamCatalogRepository
from app.db.session import AsyncSession
from app.events.changes import MESSAGES_CHANGED, PageChanges
from app.metrics import (
    LEASES_LOST,
    MESSAGES_WRITTEN,
    PAGES_WRITTEN,
    SLICE_SECONDS,
    SYNC_ERRORS,
    SYNC_LAG,
)
from app.providers.base import (
    AuthExpiredError,
    CatalogedStreams,
    ChangeHint,
    Cursor,
    CursorInvalidError,
    LiveCursor,
    MailProvider,
    Page,
    PermanentError,
    StreamGoneError,
    StreamInfo,
    SyncContext,
    TransientError,
)
from app.sync import activity, states
from app.sync.binding import bind
from app.sync.cases.mail import CaseMail
from app.sync.cases.states import MailboxScope
from app.sync.heartbeat import renew_while_running
from app.sync.partitions import backfilling, plan_backfills
from app.sync.runtime import Runtime
from app.sync.spread import next_periodic_pass
from app.sync.states import MailboxStatus, Phase, StreamMode
from app.sync.targets import (
    HINTS_AT_MOST,
    PassPlan,
    may_target,
    moved_away,
    plan_pass,
    stored_plan,
)
from app.sync.tokens import TokenSource, with_token_retry

log = logging.getLogger(__name__)


class Outcome(enum.StrEnum):
    BUSY = "busy"  # another live worker holds the lease, or the mailbox is parked
    CONTINUE = "continue"  # budget spent, more to do now
    DONE = "done"  # every stream caught up
    DONE_AGAIN = "done_again"  # caught up, but a change arrived meanwhile: another pass
    RETRY_LATER = "retry_later"  # transient trouble; `delay` says when
    AUTH_EXPIRED = "auth_expired"
    ERROR = "error"
    LEASE_LOST = "lease_lost"
    # Every stream this slice may follow is caught up; windows of a partitioned backfill
    # still run on other jobs, and the one that finishes the last wakes the mailbox.
    WAITING = "waiting"


@dataclass(slots=True)
class SliceResult:
    outcome: Outcome
    delay: float = 0.0
    pages: int = 0
    fencing_token: int | None = None
    message: str | None = None
    # Whether the mailbox belongs to a case (True when the slice did not find out).
    in_cases: bool = True


@dataclass(slots=True)
class _Budget:
    deadline: float
    pages_left: int
    pages: int = 0

    def __post_init__(self) -> None:
        self.pages = self.pages_left

    def spent(self) -> bool:
        # However long the set-up took (slow requests), a slice that holds the lease
        # fetches at least one page: every slice moves its mailbox forward.
        started = self.pages_left < self.pages
        return self.pages_left <= 0 or (started and time.monotonic() >= self.deadline)


@dataclass(slots=True)
class _SliceState:
    lease: Lease
    provider: str = "unknown"
    totals: dict[str, int | None] = field(default_factory=dict)
    pages: int = 0
    incomplete: bool = False
    status: MailboxStatus = MailboxStatus.SYNCING
    heartbeat: asyncio.Task[None] | None = None
    # Changed messages a targeted pass follows in their stored stream, unlocated
    # (targets.py), and those of them this slice's pages removed from it (moved out).
    trusted: frozenset[str] = frozenset()
    left: set[str] = field(default_factory=set)
    # A cases-only mailbox keeps only its owner's case mail; every page links what it wrote.
    case_mail: CaseMail = field(default_factory=lambda: CaseMail(MailboxScope.FULL))

    def removed(self, ids: Sequence[str]) -> None:
        if self.trusted and ids:
            self.left.update(self.trusted.intersection(ids))

    async def stop_heartbeat(self) -> None:
        """Before the slice releases its lease: a heartbeat that found the lease released
        must not mistake that for a lost lease and cancel the slice's last write."""
        if self.heartbeat is not None:
            self.heartbeat.cancel()
            await asyncio.gather(self.heartbeat, return_exceptions=True)
            self.heartbeat = None


@dataclass(frozen=True, slots=True)
class _Start:
    """What a slice read in its lease's transaction."""

    mailbox: Mailbox
    stored: list[StreamState]
    resuming: bool
    # Hints noted since the last pass began; None when this slice cannot target them.
    pending: list[PendingHint] | None
    credential: StoredCredential | None
    # A targeted pass the store alone could plan, begun in the lease's transaction.
    begun: _Begun | None = None


@dataclass(frozen=True, slots=True)
class _Begun:
    """A pass begun: its plan, its streams as committed, the slice's status."""

    plan: PassPlan
    streams: list[StreamState]
    status: MailboxStatus


@dataclass(frozen=True, slots=True)
class _Listing:
    streams: Sequence[StreamInfo]
    # What to keep for the provider's next listing (CatalogedStreams); None: nothing.
    state: dict[str, Any] | None


def _smaller_than(streams: list[StreamState], messages: int) -> bool:
    """Whether the streams' counts are all known and hold `messages` or fewer together."""
    counts = [s.total_estimate for s in streams]
    return None not in counts and sum(c or 0 for c in counts) <= messages


def _known_sum(estimates: Iterable[int | None]) -> int | None:
    """The sum of the estimates known; None when none is."""
    known = [e for e in estimates if e is not None]
    return sum(known) if known else None


def backoff_seconds(failures: int, *, base: float = 2.0, cap: float = 900.0) -> float:
    """Exponential backoff with full jitter."""
    return random.uniform(base / 2, min(cap, base * (2 ** max(failures, 0))))


async def _phase_now(session: AsyncSession, mailbox_id: uuid.UUID, *, running: bool) -> Phase:
    """The phase as the streams' committed state says, read when it is written."""
    streams = await CursorRepository(session).list(mailbox_id)
    return states.phase_of((s.progress() for s in streams), running=running)


# A mailbox waiting for its windows is looked at again after this long even if the job
# that finishes the last window never enqueues its pass (Redis lost it).
WINDOWS_SAFETY_NET_SECONDS = 60

# A stream's pages arrive one after another (each carries the link to the next), so the
# largest folder is a backfill's critical path. Up to this many of its pages write at once,
# each in its own transaction, committing strictly in order (see `_commit_page`).
PAGES_IN_FLIGHT = 3


@dataclass(slots=True)
class _Writing:
    """A page whose transaction is still open, and the rows it writes or deletes."""

    task: asyncio.Task[None]
    # None when the page ends an enumeration: its sweep may touch any row of the stream.
    touched: set[str] | None

    @classmethod
    def start(cls, page: Page, task: asyncio.Task[None]) -> _Writing:
        if page.full_sync_complete:
            return cls(task, None)
        touched = set(page.upserts.provider_message_id)
        touched.update(page.deletes)
        touched.update(change.provider_message_id for change in page.label_changes)
        return cls(task, touched)

    def allows(self, later: Page) -> bool:
        """May `later` write its messages while this page is still committing?

        Only if it touches none of this page's rows, and this page does not sweep:
        otherwise one transaction would wait on a row lock the other holds while that one
        waits, in the engine, for the first to commit.
        """
        return (
            self.touched is not None
            and bool(later.upserts)
            and self.touched.isdisjoint(later.upserts.provider_message_id)
        )


class SyncEngine:
    def __init__(self, rt: Runtime, owner: str) -> None:
        self.rt = rt
        self.owner = owner
        self.settings = rt.settings

    # -- entry point ------------------------------------------------------------------

    async def run_slice(self, mailbox_id: uuid.UUID) -> SliceResult:
        settings = self.settings
        async with self.rt.sessions() as session, session.begin():
            mailboxes = MailboxRepository(session)
            lease = await mailboxes.acquire_lease(mailbox_id, self.owner, settings.lease_seconds)
            # What the slice starts from, read under the lease just taken in its transaction:
            # a short pass is a handful of statements, and each transaction of its own costs
            # as much as one of them.
            start = None if lease is None else await self._read_start(session, lease)
        if lease is None:
            return SliceResult(Outcome.BUSY)
        assert start is not None
        mailbox = start.mailbox
        started = time.monotonic()
        result = await self._run_leased(start, lease)
        SLICE_SECONDS.labels(mailbox.provider, result.outcome.value).observe(
            time.monotonic() - started
        )
        if result.outcome in (Outcome.DONE, Outcome.DONE_AGAIN) and mailbox.pending_since:
            # From the oldest change known (webhook, connect, sync now) to caught up.
            lag = (datetime.now(UTC) - mailbox.pending_since).total_seconds()
            SYNC_LAG.labels(mailbox.provider).observe(max(lag, 0.0))
        return result

    async def _read_start(self, session: AsyncSession, lease: Lease) -> _Start:
        mailbox_id = lease.mailbox_id
        mailbox = await MailboxRepository(session).get(mailbox_id)
        assert mailbox is not None  # the lease was just taken on it
        stored = await CursorRepository(session).list(mailbox_id)
        # A slice that continues a pass follows the streams as the pass found them (a
        # stream deleted since is dropped when its fetch says so); one that begins a pass
        # may target what notifications pointed to.
        resuming = mailbox.pass_started_at is not None and not all(s.caught_up for s in stored)
        pending = None
        if not resuming and may_target(mailbox, stored):
            pending = await PendingStreamRepository(session).read(mailbox_id, HINTS_AT_MOST)
        credential = await CredentialRepository(session, self.rt.cipher).get(mailbox_id)
        begun = None
        plan = stored_plan({s.stream_key for s in stored}, pending)
        if plan is not None and mailbox.email is not None:
            # Nothing to ask the provider before the pass begins: it begins here, and
            # `pass_started_at` is durable before the first request all the same.
            streams, status = await self._begin_pass(session, mailbox, lease, plan)
            begun = _Begun(plan, streams, status)
        return _Start(mailbox, stored, resuming, pending, credential, begun)

    async def _begin_pass(
        self,
        session: AsyncSession,
        mailbox: Mailbox,
        lease: Lease,
        plan: PassPlan | None,
        *,
        removed: int = 0,
    ) -> tuple[list[StreamState], MailboxStatus]:
        """Mark the streams the pass follows (a plan: a pass begins) and move the mailbox's
        progress, under its lease; the streams as now committed and the slice's status."""
        cursors = CursorRepository(session)
        if plan is not None:
            hints = PendingStreamRepository(session)
            if plan.full:
                # Every stream is polled once from its cursor: every hint is covered.
                await cursors.start_pass(mailbox.id)
                await hints.take_all(mailbox.id)
            else:
                await cursors.start_pass(mailbox.id, only=sorted(plan.streams))
                await hints.take(mailbox.id, plan.taken)
        streams_now = await cursors.list(mailbox.id)
        status = states.during_slice(mailbox.status)
        await MailboxRepository(session).fence(
            lease,
            self.settings.lease_seconds,
            synced_delta=-removed,
            total_estimate=_known_sum(s.total_estimate for s in streams_now),
            status=status if status != mailbox.status else None,
            phase=states.phase_of((s.progress() for s in streams_now), running=True),
            begin_pass=plan is not None,
            full_pass=plan is not None and plan.full,
        )
        return streams_now, status

    async def _run_leased(self, start: _Start, lease: Lease) -> SliceResult:
        settings = self.settings
        mailbox = start.mailbox
        mailbox_id = mailbox.id
        provider, ctx, tokens = bind(self.rt, mailbox, credential=start.credential)
        state = _SliceState(
            lease=lease,
            provider=mailbox.provider,
            case_mail=CaseMail(mailbox.scope, events=settings.events_enabled),
        )
        lost = asyncio.Event()
        state.heartbeat = asyncio.create_task(
            renew_while_running(
                self.rt,
                lambda session: MailboxRepository(session).heartbeat(
                    lease, self.settings.lease_seconds
                ),
                what=f"mailbox {lease.mailbox_id}",
                lost=lost,
                task=asyncio.current_task(),
            )
        )
        try:
            return await self._settle(start, provider, ctx, tokens, state)
        except asyncio.CancelledError:
            if not lost.is_set():
                raise
            # Our own heartbeat stopped us: the lease is gone, and with it every write.
            current = asyncio.current_task()
            if current is not None:
                current.uncancel()
            log.warning("mailbox %s: lease lost mid-slice; stopped", mailbox_id)
            LEASES_LOST.labels(mailbox.provider).inc()
            return SliceResult(Outcome.LEASE_LOST, pages=state.pages)
        finally:
            await state.stop_heartbeat()

    async def _settle(
        self,
        start: _Start,
        provider: MailProvider,
        ctx: SyncContext,
        tokens: TokenSource,
        state: _SliceState,
    ) -> SliceResult:
        try:
            return await self._sync(start, provider, ctx, tokens, state)
        except BaseException as exc:
            await state.stop_heartbeat()
            return await self._after_failure(start.mailbox, state, exc)

    async def _after_failure(
        self, mailbox: Mailbox, state: _SliceState, exc: BaseException
    ) -> SliceResult:
        """Turn what went wrong into the mailbox's next state (and re-raise what is not ours:
        a cancelled job, a dying process)."""
        lease = state.lease
        if isinstance(exc, LeaseLost):
            log.warning("mailbox %s: %s; stopping without writing", mailbox.id, exc)
            LEASES_LOST.labels(mailbox.provider).inc()
            return SliceResult(Outcome.LEASE_LOST, pages=state.pages)
        if isinstance(exc, AuthExpiredError):
            message = str(exc) or exc.__class__.__name__
            log.warning("mailbox %s: authorization expired: %s", mailbox.id, message)
            await self._record_error(mailbox, exc, message)
            await self._guarded(lambda repo: repo.park_auth_expired(lease, message))
            return SliceResult(Outcome.AUTH_EXPIRED, pages=state.pages, message=message)
        if isinstance(exc, TransientError):  # ThrottledError included
            return await self._retry_later(mailbox, state, exc, exc.retry_after)
        if isinstance(exc, PermanentError):
            message = f"{exc.__class__.__name__}: {exc}"
            error_class = exc.__class__.__name__
            log.error("mailbox %s: permanent provider error: %s", mailbox.id, message)
            await self._record_error(mailbox, exc, message)
            next_at = datetime.now(UTC) + timedelta(seconds=self.settings.sync_interval_seconds)
            await self._guarded(
                lambda repo: repo.finish(
                    lease,
                    status=MailboxStatus.ERROR,
                    phase=None,
                    next_sync_at=next_at,
                    last_error=message,
                    failure=True,
                    error_class=error_class,
                )
            )
            return SliceResult(Outcome.ERROR, pages=state.pages, message=message)
        if isinstance(exc, Exception):
            # An engine bug or an unclassified failure: never leave the mailbox "syncing".
            log.error("mailbox %s: unexpected failure", mailbox.id, exc_info=exc)
            return await self._retry_later(mailbox, state, exc, None)
        raise exc

    async def _record_error(self, mailbox: Mailbox, exc: BaseException, message: str) -> None:
        kind = exc.__class__.__name__
        SYNC_ERRORS.labels(mailbox.provider, kind).inc()
        await self.rt.activity.record_error(mailbox.id, kind, message)

    # -- the slice --------------------------------------------------------------------

    async def _sync(
        self,
        start: _Start,
        provider: MailProvider,
        ctx: SyncContext,
        tokens: TokenSource,
        state: _SliceState,
    ) -> SliceResult:
        settings = self.settings
        mailbox = start.mailbox
        lease = state.lease
        budget = _Budget(time.monotonic() + settings.sync_slice_seconds, settings.sync_slice_pages)
        first_pass = mailbox.last_synced_at is None

        if mailbox.email is None:
            address = await with_token_retry(tokens, partial(provider.account_address, ctx))
            if address:
                async with self.rt.sessions() as session, session.begin():
                    await MailboxRepository(session).learn_email(mailbox.id, address)
                mailbox.email = address
                ctx.account = dataclasses.replace(ctx.account, email=address)
        stored = start.stored
        plan = None
        if start.begun is not None:
            plan = start.begun.plan
        elif not start.resuming:
            plan = await plan_pass(
                mailbox, provider, ctx, tokens, {s.stream_key for s in stored}, start.pending
            )
        if plan is not None:
            state.trusted = frozenset(p.hint.message for p in plan.trusted)
        listing = None
        if plan is not None and (plan.full or plan.discover):
            listing = await self._list_streams(provider, ctx, tokens, mailbox)
        if start.begun is not None:
            streams_now, state.status = start.begun.streams, start.begun.status
        else:
            streams_now, state.status = await self._begin(mailbox, lease, stored, plan, listing)
        state.totals = {s.stream_key: s.total_estimate for s in streams_now}

        recent: asyncio.Task[None] | None = None
        if (
            first_pass
            and settings.sync_recent_first
            and not state.case_mail.cases_only
            and all(s.cursor is None for s in streams_now)
            # A mailbox no larger than the newest page gains nothing from it: its first
            # pages are all of it.
            and not _smaller_than(streams_now, settings.sync_recent_first)
            # Windows write at the stream's generation: provisional rows one below it would
            # undo them (and the last window's sweep would take them).
            and not await backfilling(self.rt, mailbox.id)
        ):
            # Beside the windows' planning (their requests are independent); its rows are
            # committed before any window job is enqueued.
            recent = asyncio.create_task(
                self._show_recent_first(provider, ctx, tokens, mailbox, streams_now, state)
            )

        # Large streams never enumerated run as windows on every worker (app/sync/partitions.py);
        # this slice leaves them alone until their live cursor is theirs to follow.
        try:
            partitioned = await plan_backfills(
                self.rt,
                provider,
                ctx,
                partial(with_token_retry, tokens),
                lease,
                streams_now,
                cases_only=state.case_mail.cases_only,
                before_windows=recent,
            )
        finally:
            if recent is not None and not recent.done():
                # Planning failed before it waited for the newest messages: so do they.
                recent.cancel()
                await asyncio.gather(recent, return_exceptions=True)
        if recent is not None:
            # Planned nothing (no large stream): the newest messages are still owed first.
            await recent
        # Largest first: a folder's pages come one after another, so the biggest folder is
        # the critical path of a backfill and must not start behind the small ones.
        pending = sorted(
            (s for s in streams_now if not s.caught_up and s.stream_key not in partitioned),
            key=lambda s: s.total_estimate or 0,
            reverse=True,
        )
        queue: asyncio.Queue[StreamState] = asyncio.Queue()
        for s in pending:
            queue.put_nowait(s)
        limits = provider.limits()
        workers = max(1, min(limits.max_concurrency or 1, len(pending)))

        async def drain() -> None:
            while not queue.empty() and not budget.spent():
                stream_state = queue.get_nowait()
                await self._follow_stream(
                    provider, ctx, tokens, mailbox, stream_state, state, budget
                )

        # Streams (folders) in parallel up to the provider's concurrency; the first failure
        # cancels the rest (an interrupted page rolls back and is simply fetched again).
        tasks = [asyncio.create_task(drain()) for _ in range(workers)]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        for task in done:
            if not task.cancelled() and task.exception() is not None:
                raise task.exception()  # type: ignore[misc]
        if not queue.empty():
            state.incomplete = True
        follow_up: list[ChangeHint] = []
        if plan is not None and plan.trusted and not state.incomplete:
            follow_up = await moved_away(plan, state.left, provider, ctx, tokens)

        await state.stop_heartbeat()
        if partitioned and not state.incomplete:
            return await self._wait_for_windows(mailbox, state)
        if state.incomplete:
            async with self.rt.sessions() as session, session.begin():
                await MailboxRepository(session).finish(
                    lease,
                    status=state.status,
                    phase=await _phase_now(session, mailbox.id, running=True),
                    # If the continuation job is lost (Redis flushed), the scheduler resumes soon.
                    next_sync_at=datetime.now(UTC) + timedelta(seconds=5),
                )
            return SliceResult(
                Outcome.CONTINUE, pages=state.pages, fencing_token=lease.fencing_token
            )

        # Push working: the periodic pass is a slow safety net. Without it, poll.
        interval = states.pass_interval(
            mailbox.push_state,
            interval=settings.sync_interval_seconds,
            without_push=settings.sync_poll_without_push_seconds,
        )
        # At the mailbox's own phase of the interval: passes of mailboxes connected
        # together do not come due together (app/sync/spread.py).
        next_at = next_periodic_pass(mailbox.id, interval)
        async with self.rt.sessions() as session, session.begin():
            if plan is not None and plan.trusted:
                # Before the end's check for hints: what is noted here owes the next pass.
                hints = PendingStreamRepository(session)
                await hints.take(mailbox.id, plan.trusted)
                await hints.note(mailbox.id, follow_up)
            # Pages keep the counter exact; after an enumeration, recount as a safety net.
            recount = first_pass or any(s.mode == StreamMode.FULL for s in streams_now)
            count = await MessageRepository(session).count(mailbox.id) if recount else None
            mailboxes = MailboxRepository(session)
            finished = await mailboxes.finish(
                lease,
                status=MailboxStatus.CONNECTED,
                phase=Phase.IDLE,
                next_sync_at=next_at,
                pass_completed=True,
                messages_synced=count,
            )
            # Hints noted after this pass took its own point to streams it may not have
            # followed: they owe the next pass (the status is not told otherwise).
            if finished.hinted:
                await mailboxes.request_sync([mailbox.id], full=False)
        outcome = Outcome.DONE_AGAIN if finished.owed or finished.hinted else Outcome.DONE
        return SliceResult(
            outcome,
            pages=state.pages,
            fencing_token=lease.fencing_token,
            in_cases=finished.in_cases,
        )

    async def _begin(
        self,
        mailbox: Mailbox,
        lease: Lease,
        stored: list[StreamState],
        plan: PassPlan | None,
        listing: _Listing | None,
    ) -> tuple[list[StreamState], MailboxStatus]:
        """The slice's first transaction after its lease's: the streams as listed now (a
        folder gone takes its rows with it), and the pass begun (`_begin_pass`)."""
        async with self.rt.sessions() as session, session.begin():
            removed: list[str] = []
            if listing is not None:
                streams = listing.streams
                labels_before = {s.stream_key: s.labels for s in stored}
                await CursorRepository(session).sync_streams(mailbox.id, list(streams))
                removed = await MessageRepository(session).delete_streams_except(
                    mailbox.id, [s.key for s in streams]
                )
                if removed and self.settings.events_enabled:
                    gone = PageChanges(None)
                    gone.deleted(removed)
                    await OutboxRepository(session).add(
                        mailbox.id, MESSAGES_CHANGED, gone.payload() or {}
                    )
                await self._relabel_renamed_streams(session, mailbox.id, labels_before, streams)
                if listing.state is not None:
                    await StreamCatalogRepository(session).save(mailbox.id, listing.state)
            return await self._begin_pass(session, mailbox, lease, plan, removed=len(removed))

    async def _list_streams(
        self, provider: MailProvider, ctx: SyncContext, tokens: TokenSource, mailbox: Mailbox
    ) -> _Listing:
        """The mailbox's streams; a provider whose discovery is worth keeping continues
        from what the store kept of it (whichever worker made it)."""
        if isinstance(provider, CatalogedStreams):
            async with self.rt.sessions() as session:
                known = await StreamCatalogRepository(session).get(mailbox.id)
            found = await with_token_retry(tokens, partial(provider.list_streams_after, ctx, known))
            return _Listing(found.streams, found.state)
        streams = await with_token_retry(tokens, partial(provider.list_streams, ctx))
        return _Listing(streams, None)

    async def _wait_for_windows(self, mailbox: Mailbox, state: _SliceState) -> SliceResult:
        """Release the mailbox while windows run elsewhere: still syncing, never connected.

        The windows are read again after the release, in its transaction: a stream whose
        last window finished meanwhile (its commit orders with ours on the mailbox row)
        has a live cursor to follow now, and the slice continues instead of waiting."""
        async with self.rt.sessions() as session, session.begin():
            await MailboxRepository(session).finish(
                state.lease,
                status=state.status,
                phase=await _phase_now(session, mailbox.id, running=True),
                # A safety net: the job that finishes the last window enqueues the pass.
                next_sync_at=datetime.now(UTC) + timedelta(seconds=WINDOWS_SAFETY_NET_SECONDS),
            )
            still = await PartitionRepository(session).active(mailbox.id)
        token = state.lease.fencing_token
        if not still:
            return SliceResult(Outcome.CONTINUE, pages=state.pages, fencing_token=token)
        return SliceResult(Outcome.WAITING, pages=state.pages, fencing_token=token)

    async def _show_recent_first(
        self,
        provider: MailProvider,
        ctx: SyncContext,
        tokens: TokenSource,
        mailbox: Mailbox,
        streams: list[StreamState],
        state: _SliceState,
    ) -> None:
        """Store the newest messages before any enumeration starts: the first screen a user
        sees is their latest mail, not whatever a folder enumeration happens to start with.

        The rows are provisional: written one generation below their stream's enumeration,
        which rewrites every message it sees at its own generation and sweeps the rest, so
        a message deleted meanwhile does not outlive the backfill and none is counted twice.
        """
        try:
            recent = await with_token_retry(
                tokens,
                partial(
                    provider.recent,
                    ctx,
                    [s.as_stream() for s in streams],
                    self.settings.sync_recent_first,
                ),
            )
        except PermanentError as exc:
            # Only a head start: the enumerations bring every message anyway.
            log.warning("mailbox %s: newest-first listing refused, skipped: %s", mailbox.id, exc)
            return
        generations = {s.stream_key: s.generation for s in streams}
        async with self.rt.sessions() as session, session.begin():
            messages = MessageRepository(session)
            inserted = upserted = 0
            changes = PageChanges(None)
            for key, batch in recent.items():
                if key in generations and batch:
                    written = await messages.upsert_page(
                        mailbox.id, key, generations[key] - 1, batch
                    )
                    inserted += written.inserted
                    upserted += len(written.written)
                    changes.upserted(written)
            payload = changes.payload() if self.settings.events_enabled else None
            if payload is not None:
                await OutboxRepository(session).add(
                    mailbox.id, MESSAGES_CHANGED, {**payload, "recent": True}
                )
            await MailboxRepository(session).fence(
                state.lease,
                self.settings.lease_seconds,
                synced_delta=inserted,
                total_estimate=self._total(state),
            )
        self._count_written(state.provider, upserted=upserted)

    async def _follow_stream(
        self,
        provider: MailProvider,
        ctx: SyncContext,
        tokens: TokenSource,
        mailbox: Mailbox,
        stream_state: StreamState,
        state: _SliceState,
        budget: _Budget,
    ) -> None:
        stream: StreamInfo = stream_state.as_stream()
        cursor = stream_state.cursor
        generation = stream_state.generation
        mode = StreamMode(stream_state.mode)
        # A cases-only mailbox's history comes from its case searches: its first pass follows
        # the stream from now on, when the provider can, instead of enumerating it.
        if (
            cursor is None
            and generation == 1
            and state.case_mail.cases_only
            and isinstance(provider, LiveCursor)
        ):
            live = await with_token_retry(tokens, partial(provider.live_cursor, ctx, stream))
            if live is not None:
                cursor, mode = live, StreamMode.INCREMENTAL

        def fetch(after: Cursor | None) -> asyncio.Task[Page]:
            return asyncio.create_task(
                with_token_retry(tokens, partial(provider.fetch_page, ctx, stream, after))
            )

        # While pages are written, the next one is already on its way: a provider hands out
        # the next cursor with the page.
        upcoming: asyncio.Task[Page] | None = None
        # Pages of this stream whose transactions are open, oldest first.
        writing: deque[_Writing] = deque()
        try:
            while True:
                if budget.spent():
                    state.incomplete = True
                    break
                budget.pages_left -= 1
                current, upcoming = upcoming or fetch(cursor), None
                try:
                    page = await current
                except StreamGoneError as exc:
                    log.info(
                        "mailbox %s stream %s: gone at the provider (%s); dropping it",
                        mailbox.id,
                        stream.key,
                        exc,
                    )
                    while writing:
                        await writing.popleft().task
                    await self._drop_stream(mailbox.id, stream.key, state)
                    return
                except CursorInvalidError as exc:
                    if cursor is None:
                        # Refusing a fresh enumeration is not a dead cursor; do not loop on it.
                        raise TransientError(
                            f"stream {stream.key}: fresh cursor refused: {exc}"
                        ) from exc
                    log.warning(
                        "mailbox %s stream %s: cursor invalid (%s); full resync of the stream",
                        mailbox.id,
                        stream.key,
                        exc,
                    )
                    while writing:
                        await writing.popleft().task
                    async with self.rt.sessions() as session, session.begin():
                        generation = await CursorRepository(session).restart(mailbox.id, stream.key)
                        # From the first moment: the status must not claim a mailbox whose
                        # folder is being rebuilt is merely following its cursors.
                        await MailboxRepository(session).fence(
                            state.lease, self.settings.lease_seconds, phase=Phase.RESYNC
                        )
                    cursor, mode = None, StreamMode.FULL
                    continue
                if cursor is None:
                    mode = StreamMode.FULL
                if not page.caught_up and budget.pages_left > 0:
                    upcoming = fetch(page.cursor)
                # A failed commit stops the stream here: the pages after it fail too (each
                # waits for its predecessor) and roll back.
                while writing and (
                    len(writing) >= PAGES_IN_FLIGHT or not all(w.allows(page) for w in writing)
                ):
                    await writing.popleft().task
                after = writing[-1].task if writing else None
                task = asyncio.create_task(
                    self._commit_page(mailbox.id, stream, generation, mode, page, state, after)
                )
                writing.append(_Writing.start(page, task))
                cursor = page.cursor
                if page.full_sync_complete:
                    mode = StreamMode.INCREMENTAL
                if page.caught_up:
                    break
            while writing:
                await writing.popleft().task
        finally:
            pending: list[asyncio.Task[Any]] = [w.task for w in writing]
            if upcoming is not None:
                upcoming.cancel()
                pending.append(upcoming)
            # A commit already under way is not cancelled: it lands or fails on its own.
            await asyncio.gather(*pending, return_exceptions=True)

    async def _commit_page(
        self,
        mailbox_id: uuid.UUID,
        stream: StreamInfo,
        generation: int,
        mode: StreamMode,
        page: Page,
        state: _SliceState,
        after: asyncio.Task[None] | None = None,
    ) -> None:
        if page.total_estimate is not None:
            state.totals[stream.key] = page.total_estimate
        new_mode = StreamMode.INCREMENTAL if page.full_sync_complete else mode
        async with self.rt.sessions() as session, session.begin():
            messages = MessageRepository(session)
            changes = PageChanges(stream.key)
            upserts = await state.case_mail.keep(session, mailbox_id, page.upserts)
            upserted = await messages.upsert_page(mailbox_id, stream.key, generation, upserts)
            events = self.settings.events_enabled
            came_back: set[str] = set()
            if events and mode is StreamMode.INCREMENTAL and upserted.inserted_ids:
                came_back = await messages.returning(mailbox_id, upserted.inserted_ids)
            changes.upserted(upserted, came_back)
            if after is not None:
                # Pages of a stream commit in order: this page's cursor must never be stored
                # before the previous page is, or a crash between them would skip messages.
                await after
            deleted = await messages.delete_from_stream(
                mailbox_id, stream.key, page.deletes, remember=events
            )
            changes.deleted(deleted)
            state.removed(deleted)
            relabelled = await messages.apply_label_changes(mailbox_id, page.label_changes)
            changes.relabelled(relabelled)
            swept: list[str] = []
            if page.full_sync_complete:
                swept = await messages.sweep_stream(mailbox_id, stream.key, generation)
                changes.deleted(swept)
                state.removed(swept)
            await CursorRepository(session).save(
                mailbox_id,
                stream.key,
                cursor=page.cursor,
                caught_up=page.caught_up,
                mode=new_mode,
                total_estimate=page.total_estimate,
                enumerated=len(page.upserts) if mode is StreamMode.FULL else 0,
            )
            # Only what changed: a page replayed as it was stored is no event at all. Late
            # in the transaction: the row takes the mailbox's next position under the
            # mailbox row's lock, held until commit (app/db/repositories/outbox.py).
            payload = changes.payload() if events else None
            if payload is not None:
                await OutboxRepository(session).add(mailbox_id, MESSAGES_CHANGED, payload)
            # Last, so the lease check and the progress move commit with the page or not at all.
            in_cases = await MailboxRepository(session).fence(
                state.lease,
                self.settings.lease_seconds,
                synced_delta=upserted.inserted - len(deleted) - len(swept),
                total_estimate=self._total(state),
            )
            # After the fence, which holds the mailbox row: see app/sync/cases/mail.py.
            unlinked = await state.case_mail.link(
                session, mailbox_id, upserted.written, in_cases=in_cases
            )
            if unlinked:
                await MailboxRepository(session).fence(
                    state.lease, self.settings.lease_seconds, synced_delta=-len(unlinked)
                )
        state.pages += 1
        PAGES_WRITTEN.labels(state.provider).inc()
        self.rt.activity.add(activity.PAGES_WRITTEN)
        self._count_written(
            state.provider,
            upserted=len(upserted.written),
            deleted=len(deleted),
            relabelled=len(relabelled),
            swept=len(swept),
        )

    def _count_written(self, provider: str, **counts: int) -> None:
        """Messages a committed transaction wrote, by kind of change (metrics, dashboard)."""
        written = 0
        for change, count in counts.items():
            if count:
                MESSAGES_WRITTEN.labels(provider, change).inc(count)
                written += count
        self.rt.activity.add(activity.MESSAGES_WRITTEN, written)

    # -- streams that changed shape ---------------------------------------------------

    async def _relabel_renamed_streams(
        self,
        session: AsyncSession,
        mailbox_id: uuid.UUID,
        labels_before: dict[str, tuple[str, ...]],
        streams: Sequence[StreamInfo],
    ) -> None:
        """A folder renamed or moved since the last slice: the messages it holds (and no
        page will rewrite until they change) carry its new label from this commit on."""
        messages = MessageRepository(session)
        for stream in streams:
            before = labels_before.get(stream.key)
            if before is None or before == stream.labels:
                continue
            changes = PageChanges(stream.key)
            changes.relabelled(
                await messages.replace_stream_labels(mailbox_id, stream.key, before, stream.labels)
            )
            payload = changes.payload() if self.settings.events_enabled else None
            if payload is not None:
                await OutboxRepository(session).add(mailbox_id, MESSAGES_CHANGED, payload)

    async def _drop_stream(
        self, mailbox_id: uuid.UUID, stream_key: str, state: _SliceState
    ) -> None:
        """The stream is gone at the provider: its rows and cursor go, in one commit."""
        async with self.rt.sessions() as session, session.begin():
            swept = await MessageRepository(session).delete_stream(mailbox_id, stream_key)
            await CursorRepository(session).drop(mailbox_id, stream_key)
            changes = PageChanges(stream_key)
            changes.deleted(swept)
            payload = changes.payload() if self.settings.events_enabled else None
            if payload is not None:
                await OutboxRepository(session).add(mailbox_id, MESSAGES_CHANGED, payload)
            state.totals.pop(stream_key, None)
            await MailboxRepository(session).fence(
                state.lease,
                self.settings.lease_seconds,
                synced_delta=-len(swept),
                total_estimate=self._total(state),
            )

    # -- helpers ----------------------------------------------------------------------

    @staticmethod
    def _total(state: _SliceState) -> int | None:
        return _known_sum(state.totals.values())

    async def _guarded(self, action: Callable[[MailboxRepository], Awaitable[object]]) -> None:
        try:
            async with self.rt.sessions() as session, session.begin():
                await action(MailboxRepository(session))
        except LeaseLost:
            log.info("lease lost before the final status could be written")

    async def _retry_later(
        self, mailbox: Mailbox, state: _SliceState, exc: BaseException, retry_after: float | None
    ) -> SliceResult:
        failures = mailbox.consecutive_failures + 1
        delay = max(retry_after or 0.0, backoff_seconds(failures))
        message = f"{exc.__class__.__name__}: {exc}"[:500]
        await self._record_error(mailbox, exc, message)
        status = states.after_transient_failure(
            mailbox.status, failures, self.settings.max_transient_retries
        )
        log.warning(
            "mailbox %s: %s; retrying in %.1fs (failure %d)", mailbox.id, message, delay, failures
        )
        next_at = datetime.now(UTC) + timedelta(seconds=delay)

        async def release(repo: MailboxRepository) -> None:
            await repo.finish(
                state.lease,
                status=status,
                phase=await _phase_now(repo.session, mailbox.id, running=False),
                next_sync_at=next_at,
                last_error=message,
                failure=True,
                error_class=exc.__class__.__name__,
            )

        await self._guarded(release)
        return SliceResult(Outcome.RETRY_LATER, delay=delay, pages=state.pages, message=message)
