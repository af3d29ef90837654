"""`mailsync publisher`: the outbox, published to NATS JetStream.

    wake (NOTIFY at commit, or the slow poll) -> claim rows (FOR UPDATE SKIP LOCKED, in one
    transaction) -> expand each into events -> publish each with a reply subject on our ack
    inbox, a bounded window of outstanding acks, `Nats-Msg-Id` = event_id (acks.py) -> mark
    the rows whose every event JetStream acknowledged -> commit

A row is marked only after JetStream acknowledged every event in it, in the transaction
that holds its lock: a publisher that dies between the ack and the mark leaves the row
unmarked and unlocked, the next round publishes it again with the same ids, and JetStream's
duplicate window keeps one copy. Any number of publishers may run: each skips the rows
another holds, and publishes a row only when every earlier unpublished row of its mailbox
is in its own claim (outbox.py), so a mailbox's events leave in commit order.

NATS down, the stream refusing messages (an error ack), an ack that does not come, PostgreSQL
unreachable: nothing is marked that was not acknowledged, the round's rows wait, and the
publisher retries with exponential backoff, saying so in its log and in
`mailsync_events_publish_failures_total` / `mailsync_events_publisher_backoff_seconds`. The
first refusal ends a round's publishing (the rest of its rows wait for the next round); a
stream that has gone (no responders) is created again before the next round.
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
from nats.js import JetStreamContext
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError

from app.config import Settings
from app.db.repositories.messages import MessageRepository
from app.db.repositories.outbox import NOTIFY_CHANNEL, OutboxLag, OutboxRepository, OutboxRow
from app.db.session import make_engine, make_sessionmaker
from app.events import metrics
from app.events.acks import AckedPublisher, AckTimeout, Batch
from app.events.expand import expand
from app.events.stream import ensure_stream
from app.events.wire import WireClient

log = logging.getLogger(__name__)

# Rows per round: a page's row holds up to ~1000 events, so a round is up to ~20k events.
CLAIM_ROWS = 20
# A round waiting for acks fails (and is retried) when none arrives for this long.
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


def backoff_seconds(failures: int) -> float:
    return random.uniform(0.5, min(MAX_BACKOFF_SECONDS, 0.5 * 2 ** max(failures, 1)))


def asyncpg_dsn(database_url: str) -> str:
    return make_url(database_url).set(drivername="postgresql").render_as_string(hide_password=False)


class Publisher:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.engine = make_engine(settings.database_url, pool_size=2)
        self.sessions = make_sessionmaker(self.engine)
        self.nc: WireClient | None = None
        self.js: JetStreamContext | None = None
        self.acks: AckedPublisher | None = None
        self.ack_timeout = ACK_TIMEOUT_SECONDS
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

    async def connect_nats(self) -> AckedPublisher:
        nc, js, acks = self.nc, self.js, self.acks
        if nc is not None and js is not None and acks is not None and not nc.is_closed:
            if not self.stream_ready:
                await ensure_stream(js, self.settings)
                self.stream_ready = True
            return acks

        async def disconnected() -> None:
            if not self.stopping.is_set():
                log.warning("NATS connection lost; unpublished rows wait (reconnecting)")

        async def reconnected() -> None:
            log.info("NATS connection re-established")
            self.wake.set()

        async def error(exc: Exception) -> None:
            log.warning("NATS: %s", exc)

        nc = WireClient()
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
        self.js = nc.jetstream()
        self.acks = AckedPublisher(nc, self.settings.events_publish_window, self.ack_timeout)
        await self.acks.start()
        await ensure_stream(self.js, self.settings)
        self.stream_ready = True
        log.info(
            "publishing to stream %s at %s (subjects %s.>)",
            self.settings.events_stream,
            self.settings.nats_url,
            self.settings.events_subject_prefix,
        )
        return self.acks

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
        acks = await self.connect_nats()
        if not self.nats_connected:
            # Publishing now would only fill the client's buffer until the acks time out.
            raise RoundFailed("nats_unavailable", "NATS is disconnected (reconnecting)")
        result = RoundResult()
        async with self.sessions() as session, session.begin():
            repo = OutboxRepository(session)
            rows = await repo.claim(CLAIM_ROWS)
            self.database_ok = True
            result.claimed = len(rows)
            if not rows:
                return result
            sendable = [row for row in rows if not row.blocked]
            result.blocked = len(sendable) < len(rows)
            acked, failure = await self._publish(acks, sendable, result)
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
        self, acks: AckedPublisher, rows: list[OutboxRow], result: RoundResult
    ) -> tuple[list[OutboxRow], RoundFailed | None]:
        """Publish every event of `rows`; return the rows to mark: per mailbox, the rows up to
        the first one with an event JetStream did not store."""
        prefix = self.settings.events_subject_prefix
        batch = acks.batch()
        # (row, first and end message number in the batch, events by type)
        sent: list[tuple[OutboxRow, int, int, Counter[str]]] = []
        failure: RoundFailed | None = None
        publish = acks.publish
        try:
            for row in rows:
                if batch.refusal is not None:
                    break  # JetStream refuses: the rest waits for the next round
                try:
                    events = expand(row, prefix)
                except Exception:
                    # Our own bug, not a reason to stop the mailbox's events forever.
                    log.exception("outbox row %s (%s) is unreadable; skipped", row.id, row.kind)
                    metrics.ROWS_SKIPPED.inc()
                    events = []
                start = batch.sent
                for event in events:
                    await publish(batch, event.subject, event.data, event.event_id)
                sent.append((row, start, batch.sent, Counter(e.type for e in events)))
            await acks.settle(batch)
        except AckTimeout as exc:
            failure = RoundFailed("ack_timeout", str(exc))
        except Exception as exc:  # the connection refused more (closed, buffer full)
            failure = RoundFailed("nats_unavailable", f"publish refused: {exc!r}")
        if batch.refusal is not None:
            if batch.no_stream:
                self.stream_ready = False  # deleted under us: create it again first
            failure = RoundFailed("stream_error", f"JetStream refused an event: {batch.refusal}")
        return self._acknowledged(batch, sent, result), failure

    @staticmethod
    def _acknowledged(
        batch: Batch, sent: list[tuple[OutboxRow, int, int, Counter[str]]], result: RoundResult
    ) -> list[OutboxRow]:
        acked: list[OutboxRow] = []
        stopped: set[object] = set()
        for row, start, end, types in sent:
            if row.mailbox_id in stopped:
                continue
            if not batch.stored(start, end):
                # Later rows of this mailbox wait too: marks stay a prefix of commit order.
                stopped.add(row.mailbox_id)
                continue
            acked.append(row)
            result.events += end - start
            result.types.update(types)
            duplicates = batch.duplicates(start, end)
            if duplicates:
                metrics.EVENTS_DUPLICATES.inc(duplicates)
        return acked

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
