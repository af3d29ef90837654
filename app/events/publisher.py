"""`mailsync publisher`: the outbox, published to NATS JetStream.

    wake (NOTIFY at commit, or the slow poll) -> claim rows (FOR UPDATE SKIP LOCKED, in one
    transaction) -> expand each into events -> JetStream async publish, a bounded window of
    outstanding acks, `Nats-Msg-Id` = event_id -> mark the acknowledged rows -> commit

A row is marked only after JetStream acknowledged every event in it, in the transaction
that holds its lock: a publisher that dies between the ack and the mark leaves the row
unmarked and unlocked, the next round publishes it again with the same ids, and JetStream's
duplicate window keeps one copy. Any number of publishers may run: each skips the rows
another holds, and publishes a row only when every earlier unpublished row of its mailbox
is in its own claim (outbox.py), so a mailbox's events leave in commit order.

NATS down, the stream refusing messages, PostgreSQL unreachable: nothing is marked that
was not acknowledged, the round's rows wait, and the publisher retries with exponential
backoff, saying so in its log and in `mailsync_events_publish_failures_total` /
`mailsync_events_publisher_backoff_seconds`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import signal
import time
from collections import Counter
from dataclasses import dataclass, field

import asyncpg
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from nats.js.api import PubAck
from nats.js.errors import APIError
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError

from app.config import Settings
from app.db.repositories.messages import MessageRepository
from app.db.repositories.outbox import NOTIFY_CHANNEL, OutboxLag, OutboxRepository, OutboxRow
from app.db.session import make_engine, make_sessionmaker
from app.events import metrics
from app.events.expand import Outgoing, expand
from app.events.stream import ensure_stream

log = logging.getLogger(__name__)

# Rows per round: a page's row holds up to ~1000 events, so a round is up to ~20k events.
CLAIM_ROWS = 20
# Every ack of a round must arrive within this long, or the round fails and is retried.
ACK_TIMEOUT_SECONDS = 5.0
CONNECT_TIMEOUT_SECONDS = 5.0
PRUNE_EVERY_SECONDS = 60.0
PRUNE_BATCH = 5000
LAG_EVERY_SECONDS = 2.0
# How long a removed message is remembered (app/db/repositories/messages.py, `returning`).
TOMBSTONE_HOURS = 24.0
MAX_BACKOFF_SECONDS = 30.0


class RoundFailed(Exception):
    """Some rows of a round were not acknowledged; they wait for the next round."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass
class RoundResult:
    claimed: int = 0
    published_rows: int = 0
    events: int = 0
    blocked: bool = False
    types: Counter[str] = field(default_factory=Counter)

    @property
    def more(self) -> bool:
        """Worth another round at once (a full claim, or rows another publisher held)."""
        return self.claimed >= CLAIM_ROWS or self.blocked


def _first_error(futures: list[asyncio.Future[PubAck]]) -> BaseException | None:
    for future in futures:
        if not future.done() or future.cancelled():
            return TimeoutError("no ack from JetStream")
        if future.exception() is not None:
            return future.exception()
    return None


def backoff_seconds(failures: int) -> float:
    return random.uniform(0.5, min(MAX_BACKOFF_SECONDS, 0.5 * 2 ** max(failures, 1)))


def asyncpg_dsn(database_url: str) -> str:
    return make_url(database_url).set(drivername="postgresql").render_as_string(hide_password=False)


class Publisher:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.engine = make_engine(settings.database_url, pool_size=2)
        self.sessions = make_sessionmaker(self.engine)
        self.nc: NATS | None = None
        self.js: JetStreamContext | None = None
        self.stream_ready = False
        self.database_ok = False
        self.lag: OutboxLag | None = None
        self.wake = asyncio.Event()
        self.stopping = asyncio.Event()
        self.failures = 0
        self.last_error: str | None = None
        self._listener: asyncpg.Connection | None = None

    # -- connections ------------------------------------------------------------------

    @property
    def nats_connected(self) -> bool:
        return self.nc is not None and self.nc.is_connected

    @property
    def ready(self) -> bool:
        return self.database_ok and self.nats_connected and self.stream_ready

    async def connect_nats(self) -> JetStreamContext:
        if self.js is not None and self.nc is not None and not self.nc.is_closed:
            if not self.stream_ready:
                await ensure_stream(self.js, self.settings)
                self.stream_ready = True
            return self.js

        async def disconnected() -> None:
            if not self.stopping.is_set():
                log.warning("NATS connection lost; unpublished rows wait (reconnecting)")

        async def reconnected() -> None:
            log.info("NATS connection re-established")
            self.wake.set()

        async def error(exc: Exception) -> None:
            log.warning("NATS: %s", exc)

        nc = NATS()
        # nats-py retries a first connect forever with unlimited reconnects: bound it, so a
        # NATS that is down is a failed round (backoff, logged, counted) like any other.
        connecting = nc.connect(
            servers=[self.settings.nats_url],
            name="mailsync-publisher",
            connect_timeout=2,
            allow_reconnect=True,
            max_reconnect_attempts=-1,
            reconnect_time_wait=1,
            disconnected_cb=disconnected,
            reconnected_cb=reconnected,
            error_cb=error,
        )
        try:
            await asyncio.wait_for(connecting, timeout=CONNECT_TIMEOUT_SECONDS)
        except BaseException as exc:
            with contextlib.suppress(Exception):
                await nc.close()
            if isinstance(exc, TimeoutError):
                raise ConnectionError(f"cannot reach NATS at {self.settings.nats_url}") from exc
            raise
        self.nc = nc
        self.js = self.nc.jetstream(publish_async_max_pending=self.settings.events_publish_window)
        await ensure_stream(self.js, self.settings)
        self.stream_ready = True
        log.info(
            "publishing to stream %s at %s (subjects %s.>)",
            self.settings.events_stream,
            self.settings.nats_url,
            self.settings.events_subject_prefix,
        )
        return self.js

    async def close(self) -> None:
        if self.nc is not None and not self.nc.is_closed:
            with contextlib.suppress(Exception):
                await self.nc.close()
        if self._listener is not None:
            with contextlib.suppress(Exception):
                await self._listener.close()
        await self.engine.dispose()

    # -- one round --------------------------------------------------------------------

    async def publish_round(self) -> RoundResult:
        """Claim, publish and mark one batch of rows. Raises RoundFailed (after marking
        what was acknowledged) when some rows must wait."""
        js = await self.connect_nats()
        result = RoundResult()
        failure: RoundFailed | None = None
        async with self.sessions() as session, session.begin():
            repo = OutboxRepository(session)
            rows = await repo.claim(CLAIM_ROWS)
            self.database_ok = True
            result.claimed = len(rows)
            if not rows:
                return result
            sendable = [row for row in rows if not row.blocked]
            result.blocked = len(sendable) < len(rows)
            acked, failure = await self._publish(js, sendable, result)
            await repo.mark_published([row.id for row in acked])
        now = time.time()
        for row in acked:
            metrics.COMMIT_TO_ACK.observe(max(0.0, now - row.created_at.timestamp()))
        result.published_rows = len(acked)
        metrics.ROWS_PUBLISHED.inc(len(acked))
        for event_type, n in result.types.items():
            metrics.EVENTS_PUBLISHED.labels(event_type).inc(n)
        if failure is not None:
            raise failure
        return result

    async def _publish(
        self, js: JetStreamContext, rows: list[OutboxRow], result: RoundResult
    ) -> tuple[list[OutboxRow], RoundFailed | None]:
        """Publish every event of `rows`; return the rows to mark: per mailbox, the rows up to
        the first one with an event JetStream did not acknowledge."""
        prefix = self.settings.events_subject_prefix
        sent: list[tuple[OutboxRow, list[Outgoing], list[asyncio.Future[PubAck]]]] = []
        failure: RoundFailed | None = None
        try:
            for row in rows:
                try:
                    events = expand(row, prefix)
                except Exception:
                    # Our own bug, not a reason to stop the mailbox's events forever.
                    log.exception("outbox row %s (%s) is unreadable; skipped", row.id, row.kind)
                    metrics.ROWS_SKIPPED.inc()
                    events = []
                futures = [
                    await js.publish_async(
                        event.subject, event.data, headers={"Nats-Msg-Id": event.event_id}
                    )
                    for event in events
                ]
                sent.append((row, events, futures))
        except Exception as exc:  # the connection refused more (closed, buffer full)
            failure = RoundFailed("nats_unavailable", f"publish refused: {exc!r}")
        pending = [f for _, _, futures in sent for f in futures]
        if pending:
            _, not_done = await asyncio.wait(pending, timeout=ACK_TIMEOUT_SECONDS)
            if not_done:
                failure = failure or RoundFailed(
                    "ack_timeout", f"{len(not_done)} of {len(pending)} acks missing after "
                    f"{ACK_TIMEOUT_SECONDS:.0f} s",
                )  # fmt: skip
                for future in not_done:
                    future.cancel()
        acked: list[OutboxRow] = []
        stopped: set[object] = set()
        for row, events, futures in sent:
            if row.mailbox_id in stopped:
                continue
            error = _first_error(futures)
            if error is not None:
                # Later rows of this mailbox wait too: marks stay a prefix of commit order.
                stopped.add(row.mailbox_id)
                if failure is None:
                    reason = "stream_error" if isinstance(error, APIError) else "nats_unavailable"
                    failure = RoundFailed(reason, f"JetStream refused an event: {error!r}")
                continue
            acked.append(row)
            result.events += len(events)
            result.types.update(event.type for event in events)
            duplicates = sum(1 for f in futures if f.result().duplicate)
            if duplicates:
                metrics.EVENTS_DUPLICATES.inc(duplicates)
        return acked, failure

    # -- the loop ---------------------------------------------------------------------

    async def run(self) -> None:
        """Publish until `stopping` is set; then finish the round in flight and return."""
        tasks = [
            asyncio.create_task(self._listen(), name="outbox-listen"),
            asyncio.create_task(self._prune_forever(), name="outbox-prune"),
            asyncio.create_task(self._sample_lag_forever(), name="outbox-lag"),
        ]
        try:
            while not self.stopping.is_set():
                self.wake.clear()
                try:
                    round_ = await self.publish_round()
                except Exception as exc:
                    await self._failed(exc)
                    continue
                if self.failures:
                    log.info("publishing again after %d failed rounds", self.failures)
                self.failures = 0
                self.last_error = None
                metrics.BACKOFF.set(0)
                if round_.blocked and round_.claimed and not round_.published_rows:
                    # Another publisher holds this mailbox's earlier rows: let it finish.
                    await self._sleep(0.05)
                elif not round_.more:
                    await self._wait_for_work(self.settings.events_poll_seconds)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _failed(self, exc: Exception) -> None:
        self.failures += 1
        if isinstance(exc, RoundFailed):
            reason = exc.reason
        elif isinstance(exc, SQLAlchemyError | asyncpg.PostgresError):
            reason = "database"
            self.database_ok = False
        else:
            reason = "nats_unavailable"
            self.stream_ready = False
        delay = backoff_seconds(self.failures)
        self.last_error = f"{reason}: {exc}"
        metrics.PUBLISH_FAILURES.labels(reason).inc()
        metrics.BACKOFF.set(delay)
        waiting = self.lag.unpublished if self.lag else "?"
        log.warning(
            "publish failed (%s: %s); %s rows wait; retrying in %.1f s (failure %d)",
            reason,
            exc,
            waiting,
            delay,
            self.failures,
        )
        await self._sleep(delay)

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.stopping.wait(), timeout=seconds)

    async def _wait_for_work(self, seconds: float) -> None:
        stop = asyncio.ensure_future(self.stopping.wait())
        wake = asyncio.ensure_future(self.wake.wait())
        try:
            await asyncio.wait({stop, wake}, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.cancel()
            wake.cancel()

    async def _listen(self) -> None:
        """LISTEN for commits that wrote outbox rows; reconnect when the connection drops."""
        dsn = asyncpg_dsn(self.settings.database_url)
        while True:
            try:
                conn = await asyncpg.connect(dsn, timeout=5)
                self._listener = conn
                lost = asyncio.Event()
                conn.add_termination_listener(lambda _c, lost=lost: lost.set())
                await conn.add_listener(NOTIFY_CHANNEL, lambda *_args: self.wake.set())
                # Whatever committed while nobody listened.
                self.wake.set()
                await lost.wait()
                log.warning("LISTEN connection lost; polling until it is back")
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("cannot LISTEN for outbox commits (%s); polling meanwhile", exc)
            await asyncio.sleep(2.0)

    async def _prune_forever(self) -> None:
        while True:
            try:
                async with self.sessions() as session, session.begin():
                    pruned = await OutboxRepository(session).prune(
                        self.settings.outbox_retention_hours, PRUNE_BATCH
                    )
                    await MessageRepository(session).prune_tombstones(TOMBSTONE_HOURS)
                if pruned:
                    metrics.ROWS_PRUNED.inc(pruned)
                    log.info("pruned %d published outbox rows", pruned)
                    if pruned == PRUNE_BATCH:
                        continue
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("outbox prune failed: %s", exc)
            await asyncio.sleep(PRUNE_EVERY_SECONDS)

    async def sample_lag(self) -> OutboxLag:
        async with self.sessions() as session:
            lag = await OutboxRepository(session).lag()
        self.database_ok = True
        self.lag = lag
        metrics.OUTBOX_UNPUBLISHED.set(lag.unpublished)
        oldest = lag.oldest_unpublished_at
        metrics.OUTBOX_OLDEST_AGE.set(max(0.0, time.time() - oldest.timestamp()) if oldest else 0)
        return lag

    async def _sample_lag_forever(self) -> None:
        while True:
            try:
                await self.sample_lag()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.database_ok = False
                log.warning("outbox lag not sampled: %s", exc)
            await asyncio.sleep(LAG_EVERY_SECONDS)


def install_signal_handlers(publisher: Publisher, extra: list[object] | None = None) -> None:
    """SIGTERM/SIGINT: stop claiming, finish the round in flight, exit."""
    loop = asyncio.get_running_loop()

    def stop() -> None:
        log.info("stopping: finishing the round in flight")
        publisher.stopping.set()
        for server in extra or ():
            server.should_exit = True  # type: ignore[attr-defined]

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop)
