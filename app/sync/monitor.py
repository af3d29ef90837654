"""The completion monitor: proves that the store holds what the provider holds, and mends
only what does not match.

    tick (cron, every 15 s, one worker at a time)
      first checks of newly connected mailboxes, each at a random moment of the interval
      due checks ─> verify_mailbox(id)        overdue syncs ─> sync under a fresh job id
      lapsed push channels ─> push failing (the mailbox is polled)
    verify_mailbox(id)
      settled? (no lease, no pass under way, every stream caught up, nothing pending)
      ─> the provider's cheap counts (Graph: per folder; Gmail: the profile and per label)
      ─> the store's counts ─> still settled, nothing ran meanwhile?
      ─> equal: last_verified_at, the next check an interval later
      ─> a difference, seen for the first time: remember it, ask for a pass (it applies any
         change that was in flight), look again after that pass
      ─> the same difference after a completed pass: repair that stream or label only
           restart: the stream is enumerated again under a new generation (the engine's
                    dead-cursor rebuild: phase `resync`, then its sweep)
           list:    the scope's ids are listed and diffed with the store; only missing
                    messages are fetched, extra rows removed, labels set right
      ─> the next settled check records what the repair left (counts after)

A difference that keeps moving (changes keep arriving) is never acted on: it is dropped
after a few rounds and looked at again an interval later. A difference an exact repair
leaves behind (the provider counts something it does not list) is remembered per scope and
not repaired again.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import random
import time
import uuid
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial

from app.db.models import Mailbox
from app.db.repositories.cursors import CursorRepository, StreamState
from app.db.repositories.mailboxes import Lease, LeaseLost, MailboxRepository
from app.db.repositories.messages import MessageRepository
from app.db.repositories.monitor import Counted, MonitorRepository, OpenRepair, Residual
from app.db.repositories.outbox import OutboxRepository
from app.events.changes import MESSAGES_CHANGED, PageChanges
from app.metrics import (
    MONITOR_CHECKS,
    MONITOR_DIFFERENCE,
    MONITOR_REENQUEUED,
    MONITOR_REPAIRED_MESSAGES,
    MONITOR_REPAIRS,
)
from app.providers.base import (
    AuthExpiredError,
    LabelChange,
    MailProvider,
    MessageBatch,
    ProviderCounts,
    ProviderError,
    ScopeCount,
    SyncContext,
)
from app.sync import states
from app.sync.engine import account_of
from app.sync.queue import enqueue_sync, enqueue_verify
from app.sync.ratelimit import RedisRateGate
from app.sync.runtime import Runtime
from app.sync.states import Phase, PushState, RepairState
from app.sync.tokens import TokenSource, with_token_retry

log = logging.getLogger(__name__)

# A suspected difference is looked at again this soon (after the pass it asked for).
RECHECK_SECONDS = 20.0
# Rounds a difference may keep moving before it is left for the next interval.
MAX_SUSPICIONS = 5
# "No progress for several lease periods": a sync that should be running and is not.
STALL_LEASES = 4
# Messages fetched (and written) per request / transaction by a listing repair.
FETCH_CHUNK = 500
# The label a message carries while unread, as the store writes it (is_read follows it).
UNREAD = "UNREAD"


class Outcome(enum.StrEnum):
    SKIPPED = "skipped"  # not connected (failing, parked, first backfill)
    NOT_DUE = "not_due"
    BUSY = "busy"  # something is in flight: looked at again shortly
    MOVING = "moving"  # the mailbox changed while it was counted
    VERIFIED = "verified"
    SUSPECT = "suspect"
    AWAITING_SYNC = "awaiting_sync"  # the pass asked for has not completed yet
    REPAIRING = "repairing"
    UNSETTLED = "unsettled"  # kept moving: left for the next interval
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class Gap:
    """A scope whose stored counts differ from the provider's."""

    scope: ScopeCount
    stored: Counted

    @property
    def key(self) -> str:
        return f"{self.scope.kind}:{self.scope.key}"

    @property
    def delta(self) -> list[int | None]:
        """provider minus stored: total, and unread when the provider counts it."""
        unread = None if self.scope.unread is None else self.scope.unread - self.stored.unread
        return [self.scope.total - self.stored.total, unread]

    @property
    def observed(self) -> list[int | None]:
        """What confirms a difference: the same delta over the same provider counts. Mail
        that keeps arriving moves the provider's count, so it is never taken for a loss."""
        return [*self.delta, self.scope.total, self.scope.unread]


def differences(
    scopes: Iterable[ScopeCount],
    streams: dict[str, Counted],
    labels: dict[str, Counted],
    residuals: dict[tuple[str, str], Residual],
) -> list[Gap]:
    gaps = []
    for scope in scopes:
        stored = (streams if scope.kind == "stream" else labels).get(scope.key, Counted(0, 0))
        gap = Gap(scope, stored)
        total, unread = gap.delta
        if total == 0 and not unread:
            continue
        residual = residuals.get((scope.kind, scope.key))
        if residual is not None and residual.total == total and residual.unread == unread:
            continue
        gaps.append(gap)
    return gaps


@dataclass(slots=True)
class _Bound:
    mailbox: Mailbox
    provider: MailProvider
    ctx: SyncContext
    tokens: TokenSource


@asynccontextmanager
async def _kept(rt: Runtime, lease: Lease) -> AsyncIterator[None]:
    """Renew the lease while a repair runs (its fetches may outlast it); a lost lease is
    found by the next fenced write, which then refuses."""

    async def beat() -> None:
        seconds = rt.settings.lease_seconds
        while True:
            await asyncio.sleep(max(0.5, seconds / 3))
            try:
                async with rt.sessions() as session, session.begin():
                    if not await MailboxRepository(session).heartbeat(lease, seconds):
                        return
            except Exception as exc:
                log.warning("mailbox %s: repair lease heartbeat failed: %s", lease.mailbox_id, exc)

    task = asyncio.create_task(beat())
    try:
        yield
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


class CompletionMonitor:
    def __init__(self, rt: Runtime, owner: str) -> None:
        self.rt = rt
        self.owner = owner
        self.settings = rt.settings

    # -- the cron ---------------------------------------------------------------------

    async def tick(self, *, sweep: bool = True) -> dict[str, int]:
        """Enqueue the checks that came due; with `sweep`, also look for lapsed push channels
        and overdue syncs (each a scan of the mailboxes: the cron does it once a minute)."""
        settings = self.settings
        limit = settings.scheduler_batch
        stall = STALL_LEASES * settings.lease_seconds
        polled = states.pass_interval(
            PushState.NONE,
            interval=settings.sync_interval_seconds,
            without_push=settings.sync_poll_without_push_seconds,
        )
        lapsed: list[uuid.UUID] = []
        overdue: list[uuid.UUID] = []
        async with self.rt.sessions() as session, session.begin():
            repo = MonitorRepository(session)
            scheduled = await repo.schedule_first_checks(settings.verify_interval_seconds)
            due = await repo.due_checks(limit)
            if sweep:
                lapsed = await repo.set_push_state(
                    await repo.push_lapsed(limit), PushState.FAILING, poll_within=polled
                )
                overdue = await repo.overdue(
                    stall_seconds=stall,
                    slow_interval=settings.sync_interval_seconds,
                    fast_interval=polled,
                    polling=sorted(states.POLLED),
                    limit=limit,
                )
        # Job ids: one check per mailbox a minute at most, and a lost job blocks nothing
        # for longer; an overdue sync gets an id no stale job can hold.
        minute = str(int(time.time() // 60))
        for mailbox_id in due:
            await enqueue_verify(self.rt.redis, mailbox_id, suffix=minute)
        window = int(time.time() // stall)
        for mailbox_id in overdue:
            await enqueue_sync(self.rt.redis, mailbox_id, suffix=f"overdue{window}")
            MONITOR_REENQUEUED.inc()
        if overdue:
            log.warning("monitor: %d overdue mailboxes re-enqueued", len(overdue))
        for mailbox_id in lapsed:
            log.warning("mailbox %s: push channel lapsed; polling", mailbox_id)
        return {
            "scheduled": scheduled,
            "due": len(due),
            "overdue": len(overdue),
            "push_lapsed": len(lapsed),
        }

    # -- one check --------------------------------------------------------------------

    async def verify(self, mailbox_id: uuid.UUID) -> Outcome:
        outcome, provider = await self._verify(mailbox_id)
        if provider:
            MONITOR_CHECKS.labels(provider, outcome).inc()
        return outcome

    async def _verify(self, mailbox_id: uuid.UUID) -> tuple[Outcome, str | None]:
        async with self.rt.sessions() as session:
            due = await MonitorRepository(session).is_due(mailbox_id)
            mailbox = await MailboxRepository(session).get(mailbox_id)
            streams = await CursorRepository(session).list(mailbox_id)
        if mailbox is None or not states.verifiable(mailbox.status):
            return Outcome.SKIPPED, None
        provider_name = mailbox.provider
        if not due:
            return Outcome.NOT_DUE, provider_name
        if not self._settled(mailbox, streams):
            await self._postpone(mailbox_id, RECHECK_SECONDS)
            return Outcome.BUSY, provider_name
        bound = self._bind(mailbox)
        try:
            counts = await with_token_retry(
                bound.tokens,
                partial(bound.provider.counts, bound.ctx, [s.as_stream() for s in streams]),
            )
        except AuthExpiredError as exc:
            # The pass meets the same refusal and parks the mailbox with the reason.
            log.warning("mailbox %s: monitor refused by the provider: %s", mailbox_id, exc)
            await self._request_pass(mailbox_id)
            await self._postpone(mailbox_id, self._interval())
            return Outcome.FAILED, provider_name
        except ProviderError as exc:
            log.warning("mailbox %s: monitor could not count: %s", mailbox_id, exc)
            await self._postpone(mailbox_id, RECHECK_SECONDS * 3)
            return Outcome.FAILED, provider_name

        async with self.rt.sessions() as session:
            repo = MonitorRepository(session)
            stored_streams = await repo.stream_counts(mailbox_id)
            stored_labels = (
                await repo.label_counts(mailbox_id)
                if any(s.kind == "label" for s in counts.scopes)
                else {}
            )
            after = await MailboxRepository(session).get(mailbox_id)
            streams_after = await CursorRepository(session).list(mailbox_id)
        if (
            not counts.stable
            or after is None
            or not self._settled(after, streams_after)
            or after.sync_started_at != mailbox.sync_started_at
        ):
            # A change at the provider, or a slice here, while we counted: no judgement.
            await self._postpone(mailbox_id, RECHECK_SECONDS)
            return Outcome.MOVING, provider_name

        async with self.rt.sessions() as session, session.begin():
            repo = MonitorRepository(session)
            await self._close_repairs(
                repo, mailbox, await repo.open_repairs(mailbox_id), counts, stored_streams,
                stored_labels,
            )  # fmt: skip
            residuals = await repo.residuals(mailbox_id)
        gaps = differences(counts.scopes, stored_streams, stored_labels, residuals)
        if not gaps:
            async with self.rt.sessions() as session, session.begin():
                await MonitorRepository(session).mark_verified(mailbox_id, self._interval())
            return Outcome.VERIFIED, provider_name

        suspected = mailbox.verify_suspect or {}
        pass_since = (
            mailbox.verify_suspect_at is not None
            and mailbox.last_synced_at is not None
            and mailbox.last_synced_at > mailbox.verify_suspect_at
        )
        if suspected and not pass_since:
            # The pass asked for has not completed yet: it may still apply the change.
            await self._request_pass(mailbox_id)
            await self._postpone(mailbox_id, RECHECK_SECONDS)
            return Outcome.AWAITING_SYNC, provider_name
        confirmed = [g for g in gaps if suspected.get(g.key) == g.observed]
        moving = [g for g in gaps if suspected.get(g.key) != g.observed]
        if confirmed:
            repaired = await self._repair(mailbox, streams, bound, confirmed)
            if not repaired:
                await self._postpone(mailbox_id, RECHECK_SECONDS)
                return Outcome.BUSY, provider_name
        if moving:
            if not confirmed and mailbox.verify_attempts >= MAX_SUSPICIONS:
                log.info(
                    "mailbox %s: differences kept moving over %d checks (changes arriving); "
                    "next look in an interval: %s",
                    mailbox_id, mailbox.verify_attempts, {g.key: g.delta for g in moving},
                )  # fmt: skip
                async with self.rt.sessions() as session, session.begin():
                    await MonitorRepository(session).clear_suspect(mailbox_id, self._interval())
                return Outcome.UNSETTLED, provider_name
            async with self.rt.sessions() as session, session.begin():
                await MonitorRepository(session).suspect(
                    mailbox_id, {g.key: g.observed for g in moving}, RECHECK_SECONDS
                )
            await enqueue_sync(self.rt.redis, mailbox_id, suffix=f"verify{uuid.uuid4().hex[:8]}")
            log.info(
                "mailbox %s: store differs from %s counts, confirming after a pass: %s",
                mailbox_id, provider_name, {g.key: g.delta for g in moving},
            )  # fmt: skip
            return (Outcome.REPAIRING if confirmed else Outcome.SUSPECT), provider_name
        async with self.rt.sessions() as session, session.begin():
            await MonitorRepository(session).clear_suspect(mailbox_id, RECHECK_SECONDS)
        return Outcome.REPAIRING, provider_name

    # -- repairs ----------------------------------------------------------------------

    async def _repair(
        self, mailbox: Mailbox, streams: list[StreamState], bound: _Bound, gaps: Sequence[Gap]
    ) -> bool:
        """Repair the scopes of `gaps` under the mailbox's lease; False when a sync holds it."""
        settings = self.settings
        async with self.rt.sessions() as session, session.begin():
            lease = await MailboxRepository(session).acquire_lease(
                mailbox.id, self.owner, settings.lease_seconds
            )
        if lease is None:
            return False
        by_stream = {s.stream_key: s for s in streams}
        # Labels after their stream: a stream's listing may already bring what they lack.
        listed = sorted(
            (g for g in gaps if g.scope.repair == "list" and g.scope.stream in by_stream),
            key=lambda g: g.scope.kind != "stream",
        )
        # A stream that vanished meanwhile (a folder deleted) is the engine's to drop.
        restart = [g for g in gaps if g not in listed and g.scope.stream in by_stream]
        restarted = False
        try:
            async with _kept(self.rt, lease):
                if listed:
                    async with self.rt.sessions() as session, session.begin():
                        # From the first moment: the status must not claim the mailbox in sync.
                        await MailboxRepository(session).fence(
                            lease, settings.lease_seconds, phase=Phase.RESYNC
                        )
                    for gap in listed:
                        if gap.scope.kind == "label" and await self._mended(mailbox.id, gap):
                            continue
                        await self._reconcile(lease, bound, gap, by_stream[gap.scope.stream])
                if restart:
                    await self._restart(lease, mailbox, restart)
                    restarted = True
        except LeaseLost:
            log.warning("mailbox %s: lease lost during a repair; it resumes later", mailbox.id)
        except AuthExpiredError as exc:
            # The next pass meets the same refusal and parks the mailbox with the reason.
            log.warning("mailbox %s: repair refused by the provider: %s", mailbox.id, exc)
            restarted = True
        except ProviderError as exc:
            log.warning("mailbox %s: repair failed (looked at again later): %s", mailbox.id, exc)
        finally:
            async with self.rt.sessions() as session, session.begin():
                current = await CursorRepository(session).list(mailbox.id)
                phase = states.phase_of((s.progress() for s in current), running=False)
                await MailboxRepository(session).release(lease, phase=phase)
        if restarted:
            async with self.rt.sessions() as session, session.begin():
                await MonitorRepository(session).request_pass(mailbox.id)
            await enqueue_sync(self.rt.redis, mailbox.id, suffix=f"repair{lease.fencing_token}")
        return True

    async def _mended(self, mailbox_id: uuid.UUID, gap: Gap) -> bool:
        """Did the stream's repair already mend this label (its difference was the messages
        that were missing or foreign)? Then it needs no listing of its own."""
        async with self.rt.sessions() as session:
            stored = (await MonitorRepository(session).label_counts(mailbox_id)).get(
                gap.scope.key, Counted(0, 0)
            )
        return not any(Gap(gap.scope, stored).delta)

    async def _restart(self, lease: Lease, mailbox: Mailbox, gaps: Sequence[Gap]) -> None:
        """Enumerate each stream again under a new generation: the engine rewrites what it
        sees and sweeps the rest, as after a dead cursor."""
        async with self.rt.sessions() as session, session.begin():
            cursors = CursorRepository(session)
            repo = MonitorRepository(session)
            for stream_key in sorted({g.scope.stream for g in gaps}):
                await cursors.restart(mailbox.id, stream_key)
            for gap in gaps:
                await self._open(repo, mailbox.id, mailbox.provider, gap, method="restart")
            await MailboxRepository(session).fence(
                lease, self.settings.lease_seconds, phase=Phase.RESYNC
            )

    async def _reconcile(self, lease: Lease, bound: _Bound, gap: Gap, stream: StreamState) -> None:
        """List the scope's ids at the provider, diff them with the store, fetch only what is
        missing, remove (stream) or relabel (label) the rest: a few list calls, not a
        re-download of the mailbox."""
        mailbox_id = lease.mailbox_id
        scope = gap.scope
        provider = bound.provider
        try:
            listed = await with_token_retry(
                bound.tokens, partial(provider.scope_ids, bound.ctx, scope)
            )
            async with self.rt.sessions() as session:
                repo = MonitorRepository(session)
                if scope.kind == "stream":
                    held = await repo.stream_ids(mailbox_id, scope.key)
                    elsewhere: set[str] = set()
                else:
                    held = await repo.label_ids(mailbox_id, scope.key)
                    elsewhere = await repo.present(mailbox_id, [i for i in listed if i not in held])
            missing = [i for i in listed if i not in held and i not in elsewhere]
            extra = sorted(held - set(listed))
            unread_changes: list[LabelChange] = []
            if scope.kind == "label" and gap.delta[1]:
                # Read state drifted inside the label: its unread members, listed too.
                unread = set(
                    await with_token_retry(
                        bound.tokens,
                        partial(provider.scope_ids, bound.ctx, scope, unread_only=True),
                    )
                )
                kept = [i for i in listed if i in held or i in elsewhere]
                async with self.rt.sessions() as session:
                    stored_unread = await MonitorRepository(session).unread_among(mailbox_id, kept)
                unread_changes = [
                    LabelChange(i, add=(UNREAD,))
                    for i in kept
                    if i in unread and i not in stored_unread
                ]
                unread_changes += [
                    LabelChange(i, remove=(UNREAD,))
                    for i in kept
                    if i in stored_unread and i not in unread
                ]
            fetched = MessageBatch()
            for start in range(0, len(missing), FETCH_CHUNK):
                chunk = missing[start : start + FETCH_CHUNK]
                batch = await with_token_retry(
                    bound.tokens,
                    partial(provider.get_messages, bound.ctx, stream.as_stream(), chunk),
                )
                for message in batch:
                    fetched.append(message)
        except ProviderError as exc:
            async with self.rt.sessions() as session, session.begin():
                repo = MonitorRepository(session)
                repair_id = await self._open(
                    repo, mailbox_id, bound.mailbox.provider, gap, method="list"
                )
                await repo.close_repair(
                    repair_id,
                    state=RepairState.FAILED,
                    provider_total=None,
                    provider_unread=None,
                    stored_total=None,
                    stored_unread=None,
                    detail=f"{exc.__class__.__name__}: {exc}"[:500],
                )
            raise
        if scope.kind == "stream":
            deletes, changes = extra, []
        else:
            deletes = []
            changes = [LabelChange(i, add=(scope.key,)) for i in listed if i in elsewhere]
            changes += [LabelChange(i, remove=(scope.key,)) for i in extra]
            changes += unread_changes
        written, removed, relabelled = await self._write(
            lease, bound.mailbox.provider, stream, fetched, deletes, changes, gap
        )
        provider_name = bound.mailbox.provider
        MONITOR_REPAIRED_MESSAGES.labels(provider_name, "fetched").inc(written)
        MONITOR_REPAIRED_MESSAGES.labels(provider_name, "removed").inc(removed)
        MONITOR_REPAIRED_MESSAGES.labels(provider_name, "relabelled").inc(relabelled)
        log.warning(
            "mailbox %s: %s %s differed (provider %s/%s unread, stored %s/%s); listed %d ids, "
            "fetched %d, removed %d, relabelled %d",
            mailbox_id, scope.kind, scope.key, scope.total, scope.unread, gap.stored.total,
            gap.stored.unread, len(listed), written, removed, relabelled,
        )  # fmt: skip

    async def _write(
        self,
        lease: Lease,
        provider: str,
        stream: StreamState,
        fetched: MessageBatch,
        deletes: list[str],
        changes: list[LabelChange],
        gap: Gap,
    ) -> tuple[int, int, int]:
        """The repair's changes written as pages are (their outbox events, the lease fence,
        progress), the last one with the repair's record."""
        mailbox_id = lease.mailbox_id
        seconds = self.settings.lease_seconds
        events = self.settings.events_enabled
        written = removed = relabelled = 0
        pages = [
            MessageBatch.of(fetched[i] for i in range(start, min(start + 1000, len(fetched))))
            for start in range(0, len(fetched), 1000)
        ] or [MessageBatch()]
        for n, page in enumerate(pages):
            last = n == len(pages) - 1
            async with self.rt.sessions() as session, session.begin():
                messages = MessageRepository(session)
                page_changes = PageChanges(stream.stream_key)
                upserted = await messages.upsert_page(
                    mailbox_id, stream.stream_key, stream.generation, page
                )
                came_back: set[str] = set()
                if events and upserted.inserted_ids:
                    came_back = await messages.returning(mailbox_id, upserted.inserted_ids)
                page_changes.upserted(upserted, came_back)
                written += len(upserted.written)
                deleted: list[str] = []
                if last:
                    relabelled_rows = await messages.apply_label_changes(mailbox_id, changes)
                    page_changes.relabelled(relabelled_rows)
                    relabelled = len(relabelled_rows)
                    deleted = await messages.delete_from_stream(
                        mailbox_id, stream.stream_key, deletes, remember=events
                    )
                    page_changes.deleted(deleted)
                    removed = len(deleted)
                    await self._open(
                        MonitorRepository(session),
                        mailbox_id,
                        provider,
                        gap,
                        method="list",
                        fetched=written,
                        removed=removed,
                        relabelled=relabelled,
                    )
                payload = page_changes.payload() if events else None
                if payload is not None:
                    await OutboxRepository(session).add(mailbox_id, MESSAGES_CHANGED, payload)
                await MailboxRepository(session).fence(
                    lease, seconds, synced_delta=upserted.inserted - len(deleted)
                )
        return written, removed, relabelled

    async def _open(
        self,
        repo: MonitorRepository,
        mailbox_id: uuid.UUID,
        provider: str,
        gap: Gap,
        *,
        method: str,
        fetched: int | None = None,
        removed: int | None = None,
        relabelled: int | None = None,
    ) -> int:
        scope = gap.scope
        MONITOR_REPAIRS.labels(provider, scope.kind, method).inc()
        MONITOR_DIFFERENCE.labels(provider, scope.kind).inc(abs(gap.delta[0] or 0))
        if method == "restart":
            log.warning(
                "mailbox %s: %s %s differs (provider %s/%s unread, stored %s/%s); "
                "enumerating stream %s again",
                mailbox_id, scope.kind, scope.key, scope.total, scope.unread, gap.stored.total,
                gap.stored.unread, scope.stream,
            )  # fmt: skip
        return await repo.open_repair(
            mailbox_id,
            provider=provider,
            scope_kind=scope.kind,
            scope_key=scope.key,
            method=method,
            provider_total=scope.total,
            provider_unread=scope.unread,
            stored_total=gap.stored.total,
            stored_unread=None if scope.unread is None else gap.stored.unread,
            fetched=fetched,
            removed=removed,
            relabelled=relabelled,
        )

    async def _close_repairs(
        self,
        repo: MonitorRepository,
        mailbox: Mailbox,
        repairs: Sequence[OpenRepair],
        counts: ProviderCounts,
        streams: dict[str, Counted],
        labels: dict[str, Counted],
    ) -> None:
        """A settled check after a repair: record what it left."""
        by_scope: dict[tuple[str, str], ScopeCount] = {(s.kind, s.key): s for s in counts.scopes}
        for repair in repairs:
            scope = by_scope.get((repair.scope_kind, repair.scope_key))
            stored = (streams if repair.scope_kind == "stream" else labels).get(
                repair.scope_key, Counted(0, 0)
            )
            provider_total = scope.total if scope is not None else 0
            provider_unread = scope.unread if scope is not None else None
            await repo.close_repair(
                repair.id,
                state=RepairState.DONE,
                provider_total=provider_total,
                provider_unread=provider_unread,
                stored_total=stored.total,
                stored_unread=stored.unread if provider_unread is not None else None,
            )
            left = provider_total - stored.total
            level = logging.WARNING if left else logging.INFO
            log.log(
                level,
                "mailbox %s: repair of %s %s done: stored %d, provider %d%s",
                mailbox.id, repair.scope_kind, repair.scope_key, stored.total, provider_total,
                f" (a difference of {left} remains: the provider counts what it does not list)"
                if left else "",
            )  # fmt: skip

    # -- helpers ----------------------------------------------------------------------

    def _interval(self) -> float:
        """The next regular check: the interval, ±10%, so checks stay spread out."""
        return self.settings.verify_interval_seconds * random.uniform(0.9, 1.1)

    @staticmethod
    def _settled(mailbox: Mailbox, streams: Sequence[StreamState]) -> bool:
        leased = mailbox.lease_owner is not None and (
            mailbox.lease_expires_at is not None and mailbox.lease_expires_at > datetime.now(UTC)
        )
        return states.settled(
            mailbox.status,
            [s.progress() for s in streams],
            leased=leased,
            pass_running=mailbox.pass_started_at is not None,
            owed=mailbox.pending_since is not None,
        )

    async def _postpone(self, mailbox_id: uuid.UUID, seconds: float) -> None:
        async with self.rt.sessions() as session, session.begin():
            await MonitorRepository(session).postpone(mailbox_id, seconds)

    async def _request_pass(self, mailbox_id: uuid.UUID) -> None:
        async with self.rt.sessions() as session, session.begin():
            await MonitorRepository(session).request_pass(mailbox_id)
        await enqueue_sync(self.rt.redis, mailbox_id, suffix=f"verify{uuid.uuid4().hex[:8]}")

    def _bind(self, mailbox: Mailbox) -> _Bound:
        provider = self.rt.provider(mailbox.provider)
        account = account_of(mailbox)
        tokens = TokenSource(self.rt, mailbox.id, account, provider)
        gate = RedisRateGate(
            self.rt.redis,
            str(mailbox.id),
            provider.limits(),
            slot_ttl_seconds=self.settings.lease_seconds,
        )
        return _Bound(mailbox, provider, SyncContext(account, tokens.get, gate), tokens)
