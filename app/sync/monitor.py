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
         (app/sync/repairs.py: enumerated again, or its ids listed and diffed)
      ─> the next settled check records what the repair left (counts after)

A difference that keeps moving (changes keep arriving) is never acted on: it is dropped
after a few rounds and looked at again an interval later. A difference an exact repair
leaves behind (the provider counts something it does not list) is remembered per scope and
not repaired again.
"""

from __future__ import annotations

import enum
import logging
import random
import time
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from functools import partial

from app.db.models import Mailbox
from app.db.repositories.cursors import CursorRepository, StreamState
from app.db.repositories.mailboxes import MailboxRepository
from app.db.repositories.monitor import Counted, MonitorRepository, OpenRepair
from app.metrics import MONITOR_CHECKS, MONITOR_REENQUEUED
from app.providers.base import (
    AuthExpiredError,
    ProviderCounts,
    ProviderError,
    ScopeCount,
)
from app.sync import states
from app.sync.binding import bind
from app.sync.gaps import differences
from app.sync.queue import enqueue_sync, enqueue_verify, sync_job_id
from app.sync.repairs import Bound, Repairer
from app.sync.runtime import Runtime
from app.sync.states import PushState, RepairState
from app.sync.tokens import with_token_retry

log = logging.getLogger(__name__)

# A suspected difference is looked at again this soon (after the pass it asked for).
RECHECK_SECONDS = 20.0
# Rounds a difference may keep moving before it is left for the next interval.
MAX_SUSPICIONS = 5
# "No progress for several lease periods": a sync that should be running and is not.
STALL_LEASES = 4


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
        overdue: list[tuple[uuid.UUID, str | None]] = []
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
        overdue = await self._not_waiting(overdue)
        for mailbox_id, _ in overdue:
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

    async def _not_waiting(
        self, overdue: list[tuple[uuid.UUID, str | None]]
    ) -> list[tuple[uuid.UUID, str | None]]:
        """Leave out first syncs whose connect's job is still queued: behind a burst of
        connects it waits its turn, and a second job would only run a second pass."""
        waiting = [(mid, connect) for mid, connect in overdue if connect]
        if not waiting:
            return overdue
        async with self.rt.redis.pipeline(transaction=False) as pipe:
            for mid, connect in waiting:
                pipe.zscore(self.rt.redis.default_queue_name, sync_job_id(mid, connect))
            scores = await pipe.execute()
        queued = {mid for (mid, _), score in zip(waiting, scores, strict=True) if score is not None}
        return [(mid, connect) for mid, connect in overdue if mid not in queued]

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
            repaired = await Repairer(self.rt, self.owner).repair(
                mailbox, streams, bound, confirmed
            )
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

    # -- after a repair ---------------------------------------------------------------

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

    def _bind(self, mailbox: Mailbox) -> Bound:
        provider, ctx, tokens = bind(self.rt, mailbox)
        return Bound(mailbox, provider, ctx, tokens)
