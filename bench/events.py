"""Events out: the publisher against the raw JetStream ceiling, and push latency.

    python -m bench.events [--events 100000]

In one run, on NATS JetStream at NATS_URL (default nats://127.0.0.1:4222), each part with
a scratch stream deleted afterwards:
- ceilings: nats-py JetStream `publish_async` of N messages of the events' size, acks
  awaited with the same window as the publisher (the issue's ceiling); and the way the
  publisher sends them (app/events/acks.py: core publishes, acks on one inbox, the same
  window), the same N messages and nothing else: no outbox, no JSON to build;
- the publisher draining a pre-filled outbox of N message events (pages of 1000, as a
  backfill writes them): events/s, the ratios to both ceilings, and the CPU per 1000 events
  of the publisher (this process), NATS and PostgreSQL (this benchmark's database);
- a single change committed while the publisher idles on LISTEN: commit -> delivery to a
  subscriber, p50/p95/max over 50 changes.
The commit -> ack lag of a real backfill is printed by `bench.provider_sync --events`.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import secrets
import statistics
import time
import uuid

import nats
from sqlalchemy import text

from app.config import Settings
from app.db.repositories.messages import UpsertResult, stored_labels
from app.db.repositories.outbox import OutboxRepository
from app.db.session import make_engine, make_sessionmaker
from app.events.acks import AckedPublisher
from app.events.changes import MESSAGES_CHANGED, PageChanges
from app.events.expand import expand
from app.events.publisher import Publisher
from app.events.wire import WireClient
from app.providers.base import MessageBatch
from app.providers.memory import make_message
from bench.common import scratch_database
from bench.cpu import CpuSample, foreign_backends

NATS_URL = os.environ.get("NATS_URL", "nats://127.0.0.1:4222")


def _settings(url: str) -> Settings:
    tag = secrets.token_hex(3)
    return Settings(
        _env_file=None,  # type: ignore[call-arg]
        MAILSYNC_ENV="development",
        DATABASE_URL=url,
        NATS_URL=NATS_URL,
        EVENTS_STREAM=f"BENCH_EVENTS_{tag}",
        EVENTS_SUBJECT_PREFIX=f"bench{tag}",
        EVENTS_PUBLISHER_PORT="0",
    )


def _page(start: int, size: int) -> dict:
    batch = MessageBatch.of(make_message(i) for i in range(start, start + size))
    result = UpsertResult(batch, stored_labels(batch), list(batch.provider_message_id), [])
    changes = PageChanges("inbox")
    changes.upserted(result)
    payload = changes.payload()
    assert payload is not None
    return payload


async def _ceilings(settings: Settings, size: int, count: int) -> tuple[float, float]:
    """Events/s: nats-py publish_async, then core publishes with acks on one inbox."""
    nc = await nats.connect(settings.nats_url)
    js = nc.jetstream(publish_async_max_pending=settings.events_publish_window)
    stream = settings.events_stream + "_RAW"
    await js.add_stream(name=stream, subjects=[f"{settings.events_subject_prefix}raw.>"])
    payload = b"x" * size
    subject = f"{settings.events_subject_prefix}raw.user.bench.email.received"
    try:
        started = time.perf_counter()
        futures = [
            await js.publish_async(subject, payload, headers={"Nats-Msg-Id": f"raw-{i}"})
            for i in range(count)
        ]
        await asyncio.gather(*futures)
        publish_async = count / (time.perf_counter() - started)

        wire = WireClient()
        await wire.connect(settings.nats_url)
        acks = AckedPublisher(wire, settings.events_publish_window, timeout=30)
        await acks.start()
        started = time.perf_counter()
        batch = acks.batch()
        for i in range(count):
            await acks.publish(batch, subject, payload, f"inbox-{i}")
        await acks.settle(batch)
        inbox = count / (time.perf_counter() - started)
        assert batch.stored(0, count)
        await acks.stop()
        await wire.close()
        return publish_async, inbox
    finally:
        await js.delete_stream(stream)
        await nc.close()


async def main(total: int) -> None:
    async with scratch_database() as url:
        settings = _settings(url)
        engine = make_engine(url)
        sessions = make_sessionmaker(engine)
        mailbox_id = uuid.uuid4()
        async with engine.begin() as conn:
            await conn.execute(
                text(
                    "INSERT INTO mailboxes (id, user_id, provider, account_key, auth_mode, status) "
                    "VALUES (:id, 'bench', 'microsoft', 'bench@example.com', 'delegated', 'syncing')"
                ),
                {"id": mailbox_id},
            )
        for start in range(0, total, 1000):
            async with sessions() as session, session.begin():
                await OutboxRepository(session).add(
                    mailbox_id, MESSAGES_CHANGED, _page(start, min(1000, total - start))
                )
        # The events' size, for the ceiling's payload.
        async with sessions() as session, session.begin():
            [row] = await OutboxRepository(session).claim(1)
        size = round(statistics.mean(len(e.data) for e in expand(row, "x")[:100]))

        publish_async, inbox = await _ceilings(settings, size, total)
        publisher = Publisher(settings)
        await publisher.connect_nats()
        # As `mailsync publisher` runs (app/events/service.py).
        gc.collect()
        gc.freeze()
        gc.set_threshold(10_000, 10, 100)
        before = CpuSample.take({"publisher": os.getpid()})
        started = time.perf_counter()
        published = 0
        while True:
            result = await publisher.publish_round()
            published += result.events
            if not result.claimed:
                break
        drained = published / (time.perf_counter() - started)
        cpu = CpuSample.take({"publisher": os.getpid()}).since(before, await foreign_backends(url))
        per = 1000 * 1000 / published
        print(f"event size                  {size} bytes")
        print(f"ceiling, publish_async      {publish_async:>10,.0f} events/s (nats-py, acks)")
        print(f"ceiling, acks on one inbox  {inbox:>10,.0f} events/s (the publisher's way)")
        print(f"publisher, pre-filled outbox{drained:>10,.0f} events/s ({published:,} events)")
        print(f"ratio to publish_async      {drained / publish_async:.3f}")
        print(f"ratio to acks on one inbox  {drained / inbox:.3f}")
        print(
            f"CPU per 1000 events         publisher {cpu['publisher'] * per:.1f} ms, "
            f"NATS {cpu['nats'] * per:.1f} ms, PostgreSQL {cpu['postgres'] * per:.1f} ms "
            f"(machine {100 * cpu['utilization']:.0f}% busy, {os.cpu_count()} cores)"
        )

        # One change at a time, the publisher idle on LISTEN.
        nc = await nats.connect(settings.nats_url)
        arrived: asyncio.Queue[float] = asyncio.Queue()

        async def seen(_msg: object) -> None:
            arrived.put_nowait(time.perf_counter())

        await nc.subscribe(f"{settings.events_subject_prefix}.>", cb=seen)
        task = asyncio.create_task(publisher.run())
        await asyncio.sleep(1.0)
        lags = []
        for i in range(50):
            async with sessions() as session, session.begin():
                await OutboxRepository(session).add(
                    mailbox_id, MESSAGES_CHANGED, _page(10_000_000 + i, 1)
                )
            committed = time.perf_counter()
            lags.append(await asyncio.wait_for(arrived.get(), 10) - committed)
            await asyncio.sleep(0.05)
        publisher.stopping.set()
        await task
        lags.sort()
        print(
            "single change, commit -> delivered: "
            f"p50 {1000 * lags[len(lags) // 2]:.1f} ms, p95 {1000 * lags[int(len(lags) * 0.95)]:.1f} ms, "
            f"max {1000 * lags[-1]:.1f} ms"
        )
        await nc.close()
        js = publisher.js
        assert js is not None
        await js.delete_stream(settings.events_stream)
        await publisher.close()
        await engine.dispose()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=100_000)
    asyncio.run(main(parser.parse_args().events))
