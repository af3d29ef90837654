"""Webhook notifications are verified, recorded and answered in groups (group commit).

A webhook storm (Graph sends thousands of notifications for a busy tenant) arrives on many
connections at once. Each request hands its notifications to this process's intake and
waits; one task takes everything that is waiting, resolves the subscriptions and addresses
in one query, writes every request's audit rows and the mailboxes' owed passes in one
transaction, commits once, enqueues one sync job per mailbox, and only then wakes the
requests, which answer 2xx. What is acknowledged is committed: a 2xx for a change we then
lose would be a missed change. While one group commits, the next one gathers.

Per notification, no more than the invariant needs:

- clientState is checked against a keyed hash (HMAC-SHA256 under a per-process random key)
  of the subscription's secret, computed from one decrypt and cached by the encrypted
  value: no decrypt per request, and no plaintext secret kept in memory;
- a notification equal to one recorded since the mailbox's last pass began (same
  subscription, change, message and etag; the same Pub/Sub message id) is a `duplicate`:
  recorded, but it owes nothing more, so a retry storm writes no mailbox row;
- requests refused before any lookup (malformed, unsigned, a bad token, the validation
  handshake) are recorded without waiting, and past a rate only counted (see
  app/sync/webhook_log.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import os
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from functools import partial
from typing import Any

from redis.exceptions import RedisError
from sqlalchemy.exc import DBAPIError, SQLAlchemyError

from app.crypto import SecretDecryptionError, TokenCipher
from app.db.repositories.mailboxes import MailboxRepository
from app.db.repositories.notifications import LogRow, NotificationRepository, Target
from app.metrics import WEBHOOK_NOTIFICATIONS
from app.sync.queue import enqueue_subscription, enqueue_sync
from app.sync.runtime import Runtime
from app.sync.states import MailboxStatus
from app.sync.webhook_log import CountedRefusals, RefusalCounter, WebhookOutcome

log = logging.getLogger(__name__)

# Requests waiting beyond this are refused with 503 (the provider retries) rather than
# queued without bound.
MAX_WAITING = 20_000
# One transaction takes at most this many requests.
MAX_GROUP = 1000
# With nothing arriving, counted refusals of ended minutes are still written this often.
IDLE_FLUSH_SECONDS = 5.0
# Subscriptions whose clientState hash is cached.
CLIENT_STATE_CACHE = 50_000


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
    # Each submission's rows, in submission order.
    rows: list[list[LogRow]] = field(default_factory=list)
    outcomes: list[list[WebhookOutcome]] = field(default_factory=list)
    to_sync: set[uuid.UUID] = field(default_factory=set)
    to_resubscribe: set[uuid.UUID] = field(default_factory=set)


class ClientStateCheck:
    def __init__(self, cipher: TokenCipher) -> None:
        self._cipher = cipher
        self._key = os.urandom(32)
        self._digests: dict[bytes, bytes] = {}

    def _digest(self, value: str) -> bytes:
        return hmac.new(self._key, value.encode(), hashlib.sha256).digest()

    def matches(self, encrypted: bytes | None, presented: str | None) -> bool:
        """Constant-time; a subscription without a clientState never matches."""
        if not encrypted or presented is None:
            return False
        expected = self._digests.get(encrypted)
        if expected is None:
            try:
                secret = self._cipher.decrypt(encrypted)
            except SecretDecryptionError:
                log.error(
                    "a subscription's clientState cannot be decrypted with the configured keys"
                )
                return False
            if not secret:
                return False
            expected = self._digest(secret)
            if len(self._digests) >= CLIENT_STATE_CACHE:
                # Evict the oldest entry (dicts keep insertion order).
                self._digests.pop(next(iter(self._digests)))
            self._digests[encrypted] = expected
        return hmac.compare_digest(expected, self._digest(presented))


def _still_owed(target: Target, accepted_at: datetime) -> bool:
    """An accepted notification is still owed when no pass has started since it was
    recorded: the mailbox has been pending since then or earlier, and any running pass
    began before it (and will be followed by the one it earned)."""
    if target.pending_since is None or target.pending_since > accepted_at:
        return False
    return target.pass_started_at is None or target.pass_started_at < accepted_at


class WebhookIntake:
    def __init__(self, rt: Runtime) -> None:
        self._rt = rt
        self._counter = RefusalCounter(rt.settings.webhook_log_refusals_per_minute)
        self._client_states = ClientStateCheck(rt.cipher)
        self._queue: asyncio.Queue[_Submission | LogRow | None] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        # Transactions committed, and requests they answered (how well requests group).
        self.groups_committed = 0
        self.requests_committed = 0

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="webhook-intake")

    async def stop(self) -> None:
        """Record what is waiting, and the counts of the current minute, then stop."""
        if self._task is None:
            return
        self._closing = True
        self._queue.put_nowait(None)
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._task = None

    # -- what the routes call ---------------------------------------------------------

    async def submit(self, notices: Sequence[Notice], received: Received) -> list[WebhookOutcome]:
        """Verify and record; returns once the records have committed (one outcome per
        notice). Raises IntakeUnavailable when nothing could be recorded."""
        if self._closing or self._task is None or self._task.done():
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
        if self._closing or self._task is None or self._task.done():
            return
        done: asyncio.Future[list[WebhookOutcome]] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(_Submission((), Received(None, time.perf_counter(), 0), done))
        await done

    def note(self, row: LogRow) -> None:
        """Record a request refused (or answered) before any lookup, without waiting for
        it; past the rate it is only counted."""
        WEBHOOK_NOTIFICATIONS.labels(row.provider, row.outcome.value).inc()
        if self._closing or self._task is None or self._task.done():
            return
        if self._counter.admit(row.provider, row.outcome, row.source):
            self._queue.put_nowait(row)

    # -- the group commit -------------------------------------------------------------

    async def _run(self) -> None:
        stopping = False
        while not stopping:
            group: list[_Submission | LogRow] = []
            try:
                async with asyncio.timeout(IDLE_FLUSH_SECONDS):
                    entry = await self._queue.get()
            except TimeoutError:
                entry = _IDLE
            while True:
                if entry is None:  # stop(): it is queued after everything submitted
                    stopping = True
                    break
                if entry is not _IDLE:
                    group.append(entry)
                if len(group) >= MAX_GROUP or self._queue.empty():
                    break
                entry = self._queue.get_nowait()
            try:
                await self._flush(group, final=stopping)
            except Exception:  # never let the intake die: requests would wait forever
                log.exception("webhook intake failed a group")
                self._fail([e for e in group if isinstance(e, _Submission)])

    async def _flush(self, group: list[_Submission | LogRow], *, final: bool) -> None:
        submissions = [e for e in group if isinstance(e, _Submission)]
        counted = [self._counted_row(c) for c in self._counter.closed(everything=final)]
        if not (group or counted):
            return
        try:
            plan = await self._commit(group, counted)
        except SQLAlchemyError as exc:
            if len(submissions) > 1 and _is_data_error(exc):
                # One request's values broke the group: record the others, alone each.
                log.warning("a webhook group failed (%s); recording its requests one by one", exc)
                for submission in submissions:
                    await self._flush_alone(submission)
                return
            log.error("webhook notifications not recorded: %s", exc)
            self._fail(submissions)
            return
        await self._after_commit(plan)
        for submission, outcomes in zip(submissions, plan.outcomes, strict=True):
            if not submission.done.done():
                submission.done.set_result(outcomes)

    async def _flush_alone(self, submission: _Submission) -> None:
        try:
            plan = await self._commit([submission], [])
        except SQLAlchemyError as exc:
            log.warning("webhook notification not recorded: %s", exc)
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

    async def _commit(self, group: Sequence[_Submission | LogRow], counted: list[LogRow]) -> _Plan:
        submissions = [e for e in group if isinstance(e, _Submission)]
        async with self._rt.sessions() as session:
            repo = NotificationRepository(session)
            plan = await self._plan(repo, submissions)
            # Rows in the order the requests arrived.
            planned = iter(plan.rows)
            rows: list[LogRow] = []
            for entry in group:
                rows.extend(next(planned) if isinstance(entry, _Submission) else [entry])
            await repo.insert(rows + counted)
            if plan.to_sync:
                await MailboxRepository(session).request_sync(sorted(plan.to_sync))
            await session.commit()
        self.groups_committed += 1
        self.requests_committed += len(submissions)
        return plan

    async def _after_commit(self, plan: _Plan) -> None:
        # One job per mailbox per group; ARQ collapses it further with any job still queued.
        redis = self._rt.redis
        actions = [partial(enqueue_sync, redis, mid) for mid in sorted(plan.to_sync)]
        actions += [
            partial(enqueue_subscription, redis, mid) for mid in sorted(plan.to_resubscribe)
        ]
        if not actions:
            return
        results = await asyncio.gather(*(action() for action in actions), return_exceptions=True)
        failed = [r for r in results if isinstance(r, BaseException)]
        if failed:
            if not all(isinstance(r, RedisError | OSError) for r in failed):
                raise failed[0]
            # PostgreSQL holds the owed passes (next_sync_at); the scheduler enqueues them.
            log.warning("enqueue after commit failed (%s); the scheduler will retry", failed[0])

    async def _plan(self, repo: NotificationRepository, submissions: list[_Submission]) -> _Plan:
        plan = _Plan()
        notices = [n for s in submissions for n in s.notices]
        by_subscription = await repo.targets_by_subscription(
            sorted({n.subscription_id for n in notices if n.subscription_id is not None})
        )
        addresses: dict[str, set[str]] = {}
        for n in notices:
            if n.subscription_id is None and n.address is not None:
                addresses.setdefault(n.provider, set()).add(n.address.lower())
        by_address: dict[tuple[str, str], list[Target]] = {}
        for provider, wanted in addresses.items():
            found = await repo.targets_by_address(provider, sorted(wanted))
            by_address.update({(provider, a): t for a, t in found.items()})

        # Verify each notice and find its mailboxes.
        resolved: list[list[tuple[Notice, list[Target], WebhookOutcome | None]]] = []
        for submission in submissions:
            per_request = []
            for n in submission.notices:
                targets: list[Target] = []
                outcome: WebhookOutcome | None = None
                if n.subscription_id is not None:
                    target = by_subscription.get(n.subscription_id)
                    if target is None or target.status == MailboxStatus.DISCONNECTED:
                        outcome = WebhookOutcome.UNKNOWN_SUBSCRIPTION
                    elif not self._client_states.matches(target.client_state, n.client_state):
                        outcome = WebhookOutcome.FORGED_CLIENT_STATE
                        targets = [target]
                    else:
                        targets = [target]
                else:
                    targets = by_address.get((n.provider, (n.address or "").lower()), [])
                    if not targets:
                        outcome = WebhookOutcome.UNKNOWN_SUBSCRIPTION
                if outcome is None and n.lifecycle:
                    outcome = WebhookOutcome.LIFECYCLE
                per_request.append((n, targets, outcome))
            resolved.append(per_request)

        keys = [
            (t.mailbox_id, n.dedup_key)
            for per_request in resolved
            for n, targets, outcome in per_request
            if outcome is None and n.dedup_key is not None
            for t in targets
        ]
        accepted_at = await repo.latest_accepted(keys)
        accepted_now: set[tuple[uuid.UUID, str]] = set()

        for submission, per_request in zip(submissions, resolved, strict=True):
            received = submission.received
            elapsed = received.elapsed_ms()
            outcomes: list[WebhookOutcome] = []
            rows: list[LogRow] = []
            for n, targets, decided in per_request:
                row_outcomes: list[tuple[Target | None, WebhookOutcome]] = []
                if decided is not None:
                    row_outcomes = [(t, decided) for t in targets] or [(None, decided)]
                    if decided is WebhookOutcome.LIFECYCLE:
                        for t in targets:
                            if n.wants_sync:
                                plan.to_sync.add(t.mailbox_id)
                            if n.wants_resubscribe:
                                plan.to_resubscribe.add(t.mailbox_id)
                else:
                    for t in targets:
                        key = (t.mailbox_id, n.dedup_key or "")
                        at = accepted_at.get(key)
                        duplicate = n.dedup_key is not None and (
                            key in accepted_now or (at is not None and _still_owed(t, at))
                        )
                        if duplicate:
                            row_outcomes.append((t, WebhookOutcome.DUPLICATE))
                        else:
                            row_outcomes.append((t, WebhookOutcome.ACCEPTED))
                            if n.dedup_key is not None:
                                accepted_now.add(key)
                            if n.wants_sync:
                                plan.to_sync.add(t.mailbox_id)
                            if n.wants_resubscribe:
                                plan.to_resubscribe.add(t.mailbox_id)
                for target, outcome in row_outcomes:
                    WEBHOOK_NOTIFICATIONS.labels(n.provider, outcome.value).inc()
                    if not self._counter.admit(n.provider, outcome, received.source):
                        continue
                    verified = outcome in (WebhookOutcome.ACCEPTED, WebhookOutcome.DUPLICATE)
                    rows.append(
                        LogRow(
                            provider=n.provider,
                            outcome=outcome,
                            kind=n.kind,
                            mailbox_id=target.mailbox_id if target else None,
                            subscription_id=n.subscription_id,
                            source=received.source,
                            http_status=received.http_status,
                            handling_ms=elapsed,
                            dedup_key=n.dedup_key if verified else None,
                            payload=n.payload,
                        )
                    )
                outcomes.append(_summary([o for _, o in row_outcomes]))
            plan.outcomes.append(outcomes)
            plan.rows.append(rows)
        return plan

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


def _summary(outcomes: list[WebhookOutcome]) -> WebhookOutcome:
    """One notice, several mailboxes (a shared Gmail address): accepted if any accepted."""
    if WebhookOutcome.ACCEPTED in outcomes:
        return WebhookOutcome.ACCEPTED
    return outcomes[0]


def _is_data_error(exc: SQLAlchemyError) -> bool:
    """A value PostgreSQL refused (bad text, out of range), not a lost connection."""
    if isinstance(exc, DBAPIError) and exc.connection_invalidated:
        return False
    sqlstate = getattr(getattr(exc, "orig", None), "sqlstate", None) or ""
    return str(sqlstate).startswith("22")
