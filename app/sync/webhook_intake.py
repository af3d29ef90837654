"""Webhook notifications are verified, recorded and answered in groups (group commit).

A webhook storm (Graph sends thousands of notifications for a busy tenant) arrives on many
connections at once. Each request hands its notifications to this process's intake and
waits. A few writer tasks, each with a database connection of its own, take everything
that is waiting and write it with one statement (NotificationRepository.record_group):
every request's audit rows and the mailboxes' owed passes, atomic and durable once it
returns. Then one sync job per mailbox is enqueued, and only then are the requests woken to
answer 2xx. What is acknowledged is committed: a 2xx for a change we then lose would be a
missed change. While a group is written, the next ones gather.

Per notification, no more than the invariant needs:

- one round trip to PostgreSQL per group, whatever its size, on connections kept open (no
  pool check-out and ping, no BEGIN/COMMIT: the statement is its own transaction); a
  second one only for Graph subscriptions the process has not seen in the last
  SUBSCRIPTION_TTL_SECONDS (app/sync/webhook_caches.py);
- clientState is checked against a keyed hash (keyed BLAKE2b under a per-process random key)
  of the subscription's secret, computed from one decrypt and cached by the encrypted
  value: no decrypt per request, and no plaintext secret kept in memory;
- a notification equal to one recorded since the mailbox's last pass began (same
  subscription, change, message and etag; the same Pub/Sub message id) is a `duplicate`:
  recorded, but it owes nothing more, so a retry storm writes no mailbox row (the rule is
  in the statement, where it reads the mailbox as it writes);
- a mailbox's sync job is enqueued once, not once per group: while the job this process
  enqueued has not been picked up (no slice of the mailbox has started since), another
  enqueue would be collapsed by ARQ anyway, and is not sent (for ENQUEUED_TTL_SECONDS at
  most);
- requests refused before any lookup (malformed, unsigned, a bad token, the validation
  handshake) are recorded without waiting, and past a rate only counted (see
  app/sync/webhook_log.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from functools import partial
from typing import Any

from sqlalchemy.exc import DBAPIError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection

from app.db.repositories.monitor import MonitorRepository
from app.db.repositories.notifications import LogRow, NotificationRepository, StoreError
from app.metrics import WEBHOOK_NOTIFICATIONS
from app.providers.base import EVERY_STREAM, ChangeHint
from app.sync.queue import enqueue_subscription, enqueue_sync
from app.sync.runtime import Runtime
from app.sync.states import PushState
from app.sync.webhook_caches import ClientStateCheck, EnqueuedJobs, Subscription, SubscriptionCache
from app.sync.webhook_log import CountedRefusals, RefusalCounter, WebhookOutcome

log = logging.getLogger(__name__)

# Requests waiting beyond this are refused with 503 (the provider retries) rather than
# queued without bound.
MAX_WAITING = 20_000
# One group takes at most this many requests.
MAX_GROUP = 1000
# Groups written at once, each on its own connection: while one waits for PostgreSQL,
# another is planned (and a machine busy with other work delays each round trip).
WRITERS = 3
# With nothing arriving, counted refusals of ended minutes are still written this often.
IDLE_FLUSH_SECONDS = 5.0
# Requests wait this long at most for their sync jobs to reach Redis.
ENQUEUE_WAIT_SECONDS = 1.0
# Outcomes that owe the mailbox a pass (when the notification wants one).
_OWING = frozenset({WebhookOutcome.ACCEPTED, WebhookOutcome.LIFECYCLE})


# A wait that timed out: nothing arrived, but counted refusals may be due.
_IDLE = LogRow(provider="", outcome=WebhookOutcome.ACCEPTED, kind="")


class IntakeUnavailable(Exception):
    """Nothing was recorded: answer 503 so the provider delivers again."""


@dataclass(slots=True)
class Notice:
    """One notification, as the intake verifies and records it (provider-neutral)."""

    provider: str
    kind: str
    payload: dict[str, Any]
    # How it names its mailbox: a subscription id (checked with `client_state`) or an
    # address (a push already authenticated by its token).
    subscription_id: str | None = None
    address: str | None = None
    client_state: str | None = None
    # Redeliveries of one notification share it; None: never a duplicate.
    dedup_key: str | None = None
    lifecycle: bool = False
    wants_sync: bool = True
    wants_resubscribe: bool = False
    # A lifecycle event saying push no longer delivers: the mailbox is polled meanwhile.
    push_failing: bool = False
    # What the pass it owes must follow (app/sync/targets.py).
    hint: ChangeHint = EVERY_STREAM


@dataclass(frozen=True, slots=True)
class Received:
    """The request a notice came in: where from, when, and the status it will get."""

    source: str | None
    started: float
    http_status: int

    def elapsed_ms(self) -> float:
        return round((time.perf_counter() - self.started) * 1000, 3)


@dataclass(slots=True)
class _Submission:
    notices: Sequence[Notice]
    received: Received
    done: asyncio.Future[list[WebhookOutcome]]


@dataclass(slots=True)
class _Plan:
    db_now: datetime | None = None
    # One outcome list per submission (one outcome per notice).
    outcomes: list[list[WebhookOutcome]] = field(default_factory=list)
    # Mailboxes owed a pass by this group, with when their latest slice began.
    to_sync: dict[uuid.UUID, datetime | None] = field(default_factory=dict)
    to_resubscribe: set[uuid.UUID] = field(default_factory=set)


class WebhookIntake:
    def __init__(self, rt: Runtime, *, writers: int = WRITERS) -> None:
        self._rt = rt
        self._counter = RefusalCounter(rt.settings.webhook_log_refusals_per_minute)
        self._client_states = ClientStateCheck(rt.cipher)
        self._enqueued = EnqueuedJobs()
        self._subscriptions = SubscriptionCache()
        self._queue: asyncio.Queue[_Submission | LogRow | None] = asyncio.Queue()
        self._writers = writers
        self._tasks: list[asyncio.Task[None]] = []
        self._conns: dict[int, AsyncConnection] = {}
        self._background: set[asyncio.Future[None]] = set()
        self._busy = 0
        self._idle = asyncio.Condition()
        self._closing = False
        # Groups written, and requests they answered (how well requests group).
        self.groups_committed = 0
        self.requests_committed = 0

    @property
    def running(self) -> bool:
        return not self._closing and any(not t.done() for t in self._tasks)

    async def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._run(i), name=f"webhook-intake-{i}")
            for i in range(self._writers)
        ]

    async def stop(self) -> None:
        """Record what is waiting, and the counts of the current minute, then stop."""
        if not self._tasks:
            return
        self._closing = True
        for _ in self._tasks:
            self._queue.put_nowait(None)
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        with contextlib.suppress(Exception):
            await self._flush(0, [], final=True)
        for slot in list(self._conns):
            await self._drop_connection(slot)

    # -- what the routes call ---------------------------------------------------------

    async def submit(self, notices: Sequence[Notice], received: Received) -> list[WebhookOutcome]:
        """Verify and record; returns once the records are durable (one outcome per
        notice). Raises IntakeUnavailable when nothing could be recorded."""
        if not self.running:
            raise IntakeUnavailable("webhook intake is not running")
        if self._queue.qsize() >= MAX_WAITING:
            raise IntakeUnavailable("too many notifications waiting to be recorded")
        if not notices:
            return []
        done: asyncio.Future[list[WebhookOutcome]] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(_Submission(notices, received, done))
        return await done

    async def settle(self) -> None:
        """Return once everything handed in before this call has been written."""
        async with self._idle:
            await self._idle.wait_for(
                lambda: not self.running or (not self._busy and self._queue.empty())
            )

    def note(self, row: LogRow) -> None:
        """Record a request refused (or answered) before any lookup, without waiting for
        it; past the rate it is only counted."""
        if row.outcome is None:
            raise ValueError("a noted request has its outcome")
        _count(row.provider, row.outcome)
        if not self.running:
            return
        if self._counter.admit(row.provider, row.outcome, row.source):
            self._queue.put_nowait(row)

    # -- the group commit -------------------------------------------------------------

    async def _run(self, slot: int) -> None:
        while True:
            group: list[_Submission | LogRow] = []
            stopping = False
            try:
                async with asyncio.timeout(IDLE_FLUSH_SECONDS):
                    entry = await self._queue.get()
            except TimeoutError:
                entry = _IDLE
            while True:
                if entry is None:  # stop(): queued after everything submitted
                    stopping = True
                    break
                if entry is not _IDLE:
                    group.append(entry)
                if len(group) >= MAX_GROUP or self._queue.empty():
                    break
                entry = self._queue.get_nowait()
            self._busy += 1
            try:
                await self._flush(slot, group, final=False)
            except Exception:  # never let a writer die: requests would wait forever
                log.exception("webhook intake failed a group")
                self._fail([e for e in group if isinstance(e, _Submission)])
            finally:
                self._busy -= 1
                async with self._idle:
                    self._idle.notify_all()
            if stopping:
                return

    async def _flush(self, slot: int, group: list[_Submission | LogRow], *, final: bool) -> None:
        submissions = [e for e in group if isinstance(e, _Submission)]
        counted = [self._counted_row(c) for c in self._counter.closed(everything=final)]
        if not (group or counted):
            return
        try:
            plan = await self._write(slot, group, counted)
        except (SQLAlchemyError, StoreError, OSError) as exc:
            if len(submissions) > 1 and _is_data_error(exc):
                # One request's values broke the group: record the others, alone each.
                log.warning(
                    "a webhook group failed (%s); recording it request by request", _brief(exc)
                )
                for submission in submissions:
                    await self._flush_alone(slot, submission)
                return
            log.error("webhook notifications not recorded: %s", _brief(exc))
            self._fail(submissions)
            return
        await self._after_commit(plan)
        for submission, outcomes in zip(submissions, plan.outcomes, strict=True):
            if not submission.done.done():
                submission.done.set_result(outcomes)

    async def _flush_alone(self, slot: int, submission: _Submission) -> None:
        try:
            plan = await self._write(slot, [submission], [])
        except (SQLAlchemyError, StoreError, OSError) as exc:
            log.warning("webhook notification not recorded: %s", _brief(exc))
            self._fail([submission])
            return
        await self._after_commit(plan)
        if not submission.done.done():
            submission.done.set_result(plan.outcomes[0])

    def _fail(self, submissions: list[_Submission]) -> None:
        for submission in submissions:
            if not submission.done.done():
                submission.done.set_exception(
                    IntakeUnavailable("notifications could not be recorded")
                )

    async def _connection(self, slot: int) -> AsyncConnection:
        conn = self._conns.get(slot)
        if conn is None:
            conn = await self._rt.engine.connect()
            # Each statement is its own transaction: the write is one statement.
            await conn.execution_options(isolation_level="AUTOCOMMIT")
            self._conns[slot] = conn
        return conn

    async def _drop_connection(self, slot: int, *, broken: bool = False) -> None:
        conn = self._conns.pop(slot, None)
        if conn is not None:
            with contextlib.suppress(SQLAlchemyError, OSError):
                if broken:
                    # Not back into the pool: the driver connection is gone.
                    await conn.invalidate()
                await conn.close()

    async def _write(
        self, slot: int, group: Sequence[_Submission | LogRow], counted: list[LogRow]
    ) -> _Plan:
        for attempt in (1, 2):
            try:
                conn = await self._connection(slot)
                return await self._write_on(conn, group, counted)
            except (DBAPIError, StoreError) as exc:
                lost = _connection_lost(exc)
                if attempt == 2 or not (lost or _is_retryable(exc)):
                    raise
                if lost:
                    # The kept connection died (PostgreSQL restarted): a new one.
                    await self._drop_connection(slot, broken=True)
        raise AssertionError("unreachable")

    async def _write_on(
        self, conn: AsyncConnection, group: Sequence[_Submission | LogRow], counted: list[LogRow]
    ) -> _Plan:
        submissions = [e for e in group if isinstance(e, _Submission)]
        repo = NotificationRepository(conn)
        subscriptions = await self._look_up_subscriptions(repo, submissions)
        plan = _Plan()
        rows: list[LogRow] = []
        # rows[i] came from notice owner[i] = (submission, notice), or from a noted refusal.
        owner: list[tuple[int, int] | None] = []
        for entry in group:
            if isinstance(entry, LogRow):
                rows.append(entry)
                owner.append(None)
                continue
            outcomes: list[WebhookOutcome] = []
            plan.outcomes.append(outcomes)
            elapsed = entry.received.elapsed_ms()
            for index, notice in enumerate(entry.notices):
                row, refused = self._row(notice, subscriptions, entry.received, elapsed)
                outcomes.append(refused or WebhookOutcome.ACCEPTED)
                if refused is not None:
                    _count(notice.provider, refused)
                    if not self._counter.admit(notice.provider, refused, entry.received.source):
                        continue
                rows.append(row)
                owner.append((len(plan.outcomes) - 1, index))
        rows += counted
        owner += [None] * len(counted)
        if any(n.push_failing for s in submissions for n in s.notices):
            # Rare (lifecycle events): the rows and the push state in one transaction.
            async with self._rt.sessions(bind=conn) as session:
                driver = (await conn.get_raw_connection()).driver_connection
                assert driver is not None
                async with driver.transaction():
                    decided = await repo.record_group(rows)
                    failing = sorted(
                        {
                            d.mailbox_id
                            for d in decided
                            if d.mailbox_id is not None
                            and d.outcome is WebhookOutcome.LIFECYCLE
                            and (source := owner[d.position]) is not None
                            and submissions[source[0]].notices[source[1]].push_failing
                        }
                    )
                    await MonitorRepository(session).set_push_state(
                        failing,
                        PushState.FAILING,
                        poll_within=self._rt.settings.sync_poll_without_push_seconds,
                    )
        else:
            decided = await repo.record_group(rows)
        self.groups_committed += 1
        self.requests_committed += len(submissions)

        by_notice: dict[tuple[int, int], list[WebhookOutcome]] = {}
        for d in decided:
            plan.db_now = d.db_now
            source = owner[d.position]
            if source is None or rows[d.position].outcome is not None:
                continue  # decided before the statement: counted already
            notice = submissions[source[0]].notices[source[1]]
            by_notice.setdefault(source, []).append(d.outcome)
            _count(notice.provider, d.outcome)
            if d.mailbox_id is None or d.outcome not in _OWING:
                continue
            if notice.wants_sync:
                plan.to_sync[d.mailbox_id] = d.sync_started_at
            if notice.wants_resubscribe and d.outcome is WebhookOutcome.LIFECYCLE:
                plan.to_resubscribe.add(d.mailbox_id)
        for (submission, index), outcomes in by_notice.items():
            plan.outcomes[submission][index] = _summary(outcomes)
        return plan

    async def _look_up_subscriptions(
        self, repo: NotificationRepository, submissions: list[_Submission]
    ) -> dict[str, Subscription]:
        """The group's Graph subscriptions: from the cache, and what it lacks in one query.
        The group uses what this returns (an entry that expires while the group is
        planned is still the group's)."""
        wanted = {
            n.subscription_id
            for s in submissions
            for n in s.notices
            if n.subscription_id is not None
        }
        found: dict[str, Subscription] = {}
        missing = []
        for subscription_id in wanted:
            entry = self._subscriptions.get(subscription_id)
            if entry is None:
                missing.append(subscription_id)
            else:
                found[subscription_id] = entry
        if missing:
            found.update(self._subscriptions.put(await repo.subscription_targets(sorted(missing))))
        return found

    def _row(
        self,
        notice: Notice,
        subscriptions: dict[str, Subscription],
        received: Received,
        elapsed: float,
    ) -> tuple[LogRow, WebhookOutcome | None]:
        """The notice's row, and its outcome when the intake decides it (a refusal)."""
        row = LogRow(
            provider=notice.provider,
            outcome=None,
            kind=notice.kind,
            subscription_id=notice.subscription_id,
            source=received.source,
            http_status=received.http_status,
            handling_ms=elapsed,
            dedup_key=notice.dedup_key,
            payload=notice.payload,
            address=notice.address if notice.subscription_id is None else None,
            lifecycle=notice.lifecycle,
            wants_sync=notice.wants_sync,
            hint=notice.hint,
        )
        if notice.subscription_id is None:
            return row, None
        subscription = subscriptions.get(notice.subscription_id)
        refused: WebhookOutcome | None = None
        if subscription is None:
            refused = WebhookOutcome.UNKNOWN_SUBSCRIPTION
        else:
            row.mailbox_id = subscription.mailbox_id
            if not self._client_states.matches(subscription.client_state, notice.client_state):
                refused = WebhookOutcome.FORGED_CLIENT_STATE
        if refused is not None:
            row.outcome, row.dedup_key, row.wants_sync = refused, None, False
        return row, refused

    async def _after_commit(self, plan: _Plan) -> None:
        """Enqueue what the group owes, then let its requests answer; a slow Redis holds
        them up for ENQUEUE_WAIT_SECONDS at most (PostgreSQL already holds the owed passes,
        and the scheduler enqueues them)."""
        now = plan.db_now
        to_enqueue = sorted(
            mid
            for mid, started in plan.to_sync.items()
            if now is None or self._enqueued.needed(mid, started, now)
        )
        if not to_enqueue and not plan.to_resubscribe:
            return
        enqueueing = asyncio.ensure_future(
            self._enqueue(to_enqueue, sorted(plan.to_resubscribe), now)
        )
        try:
            await asyncio.wait_for(asyncio.shield(enqueueing), ENQUEUE_WAIT_SECONDS)
        except TimeoutError:
            log.warning("Redis is slow: answering before the sync jobs are enqueued")
            self._background.add(enqueueing)
            enqueueing.add_done_callback(self._background.discard)

    async def _enqueue(
        self, to_sync: list[uuid.UUID], to_resubscribe: list[uuid.UUID], now: datetime | None
    ) -> None:
        redis = self._rt.redis
        actions = [partial(enqueue_sync, redis, mid) for mid in to_sync]
        actions += [partial(enqueue_subscription, redis, mid) for mid in to_resubscribe]
        results = await asyncio.gather(*(action() for action in actions), return_exceptions=True)
        if now is not None:
            # A job id already taken (None from ARQ) is a job still waiting or running:
            # just as good.
            self._enqueued.record(
                [
                    m
                    for m, r in zip(to_sync, results, strict=False)
                    if not isinstance(r, BaseException)
                ],
                now,
            )
        failed = [r for r in results if isinstance(r, BaseException)]
        if failed:
            # The records are durable and owe the passes (next_sync_at): the scheduler
            # enqueues them.
            log.warning("enqueue after commit failed (%s); the scheduler will retry", failed[0])

    @staticmethod
    def _counted_row(counted: CountedRefusals) -> LogRow:
        return LogRow(
            provider=counted.provider,
            outcome=counted.outcome,
            kind="counted",
            source=counted.source or None,
            count=counted.count,
            aggregated=True,
            received_at=counted.minute,
            detail=f"{counted.count} more in this minute, past the per-minute rate",
        )


_COUNTERS: dict[tuple[str, WebhookOutcome], Any] = {}


def _count(provider: str, outcome: WebhookOutcome) -> None:
    """mailsync_webhook_notifications_total, with the labelled child kept (labels() takes a
    lock and builds its key on every call)."""
    child = _COUNTERS.get((provider, outcome))
    if child is None:
        child = _COUNTERS[(provider, outcome)] = WEBHOOK_NOTIFICATIONS.labels(
            provider, outcome.value
        )
    child.inc()


def _summary(outcomes: list[WebhookOutcome]) -> WebhookOutcome:
    """One notice, several mailboxes (a shared Gmail address): accepted if any accepted."""
    if WebhookOutcome.ACCEPTED in outcomes:
        return WebhookOutcome.ACCEPTED
    return outcomes[0]


def _brief(exc: BaseException) -> str:
    """The error without the statement and its parameters (SQLAlchemy's str() has both)."""
    orig = getattr(exc, "orig", None)
    return f"{type(orig or exc).__name__}: {str(orig or exc).splitlines()[0][:300]}"


def _sqlstate(exc: BaseException) -> str:
    if isinstance(exc, StoreError):
        return exc.sqlstate
    return str(getattr(getattr(exc, "orig", None), "sqlstate", None) or "")


def _connection_lost(exc: BaseException) -> bool:
    if isinstance(exc, StoreError):
        return exc.connection_lost
    return isinstance(exc, DBAPIError) and exc.connection_invalidated


def _is_retryable(exc: BaseException) -> bool:
    """A deadlock or serialization failure: the statement can simply run again."""
    return _sqlstate(exc) in ("40P01", "40001")


def _is_data_error(exc: BaseException) -> bool:
    """A value PostgreSQL refused (bad text, out of range), not a lost connection."""
    return not _connection_lost(exc) and _sqlstate(exc).startswith("22")
