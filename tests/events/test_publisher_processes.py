"""The publisher as a real process: killed between JetStream's ack and its mark, NATS gone
and back, several at once, SIGTERM."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import httpx
import nats
import pytest
from nats.aio.client import Client as NATS
from sqlalchemy import text

from app.config import Settings
from app.events.stream import ensure_stream
from app.providers import registry
from app.sync.engine import Outcome, SyncEngine
from app.sync.runtime import Runtime
from tests.events.support import Consumer, published
from tests.sync.helpers import connect, seeded

NATS_SERVER = shutil.which("nats-server") or "/usr/sbin/nats-server"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _env(settings: Settings, **extra: str) -> dict[str, str]:
    return {
        **os.environ,
        "MAILSYNC_ENV": "test",
        "DATABASE_URL": settings.database_url,
        "REDIS_URL": settings.redis_url,
        "NATS_URL": settings.nats_url,
        "EVENTS_STREAM": settings.events_stream,
        "EVENTS_SUBJECT_PREFIX": settings.events_subject_prefix,
        "EVENTS_POLL_SECONDS": "0.5",
        "LOG_LEVEL": "INFO",
        **extra,
    }


async def _start_publisher(settings: Settings, **extra: str) -> asyncio.subprocess.Process:
    """Started, and serving its health port (so SIGTERM meets its own handler)."""
    port = extra.setdefault("EVENTS_PUBLISHER_PORT", str(_free_port()))
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "app.cli", "publisher", env=_env(settings, **extra)
    )
    async with httpx.AsyncClient() as client, asyncio.timeout(30):
        while True:
            try:
                if (await client.get(f"http://127.0.0.1:{port}/healthz")).status_code == 200:
                    return process
            except httpx.HTTPError:
                await asyncio.sleep(0.05)


async def _sync(rt: Runtime, mailbox_id: uuid.UUID) -> None:
    for _ in range(50):
        if (await SyncEngine(rt, "w").run_slice(mailbox_id)).outcome in (
            Outcome.DONE,
            Outcome.DONE_AGAIN,
        ):
            return
    raise AssertionError("sync did not finish")


async def _seed(rt: Runtime, count: int, user: str = "kim") -> uuid.UUID:
    provider = seeded(count, page_size=25, streams=2)
    registry.override("microsoft", lambda s, h: provider)
    rt._providers.clear()
    mailbox_id = await connect(rt, provider, user=user, email=f"{user}@example.com")
    await _sync(rt, mailbox_id)
    return mailbox_id


async def _unpublished(rt: Runtime) -> int:
    async with rt.sessions() as session:
        return int(
            (
                await session.execute(
                    text("SELECT count(*) FROM outbox_events WHERE published_at IS NULL")
                )
            ).scalar_one()
        )


class CoreTap:
    """A plain NATS subscriber: it sees every publish, duplicates included (JetStream's
    de-duplication only decides what the stream stores)."""

    def __init__(self) -> None:
        self.ids: list[str] = []

    async def start(self, url: str, prefix: str) -> CoreTap:
        async def seen(msg: Any) -> None:
            self.ids.append((msg.headers or {}).get("Nats-Msg-Id", ""))

        self.nc = await nats.connect(url)
        await self.nc.subscribe(f"{prefix}.>", cb=seen)
        return self

    async def close(self) -> None:
        await self.nc.close()


async def test_killed_between_ack_and_mark_republishes_with_the_same_ids(
    ev_rt: Runtime, nc: NATS, events_settings: Settings, consumer: Consumer
) -> None:
    rt = ev_rt
    mailbox_id = await _seed(rt, 60)
    rows = await _unpublished(rt)
    assert rows >= 2
    tap = await CoreTap().start(events_settings.nats_url, events_settings.events_subject_prefix)
    # Claiming (SELECT … FOR UPDATE) goes through; marking (UPDATE) waits for this lock.
    blocker = await rt.engine.connect()
    transaction = await blocker.begin()
    await blocker.execute(text("LOCK TABLE outbox_events IN SHARE MODE"))
    first = await _start_publisher(events_settings)
    try:
        async with asyncio.timeout(30):
            while True:
                # From another connection: pg_stat_activity is a snapshot per transaction.
                async with rt.sessions() as session:
                    marking = (
                        await session.execute(
                            text(
                                "SELECT count(*) FROM pg_stat_activity "
                                "WHERE wait_event_type = 'Lock' "
                                "AND query LIKE 'UPDATE outbox_events SET published_at%'"
                            )
                        )
                    ).scalar_one()
                if marking:
                    break
                await asyncio.sleep(0.05)
        # Acknowledged by JetStream, not yet marked: now it dies.
        acked = len(tap.ids)
        assert acked > 0
        first.send_signal(signal.SIGKILL)
        await first.wait()
    finally:
        if first.returncode is None:
            first.kill()
            await first.wait()
        await transaction.rollback()
        await blocker.close()
    assert await _unpublished(rt) == rows
    second = await _start_publisher(events_settings)
    try:
        await published(rt)
    finally:
        second.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(second.wait(), 15) == 0
    await consumer.drain()
    # Published twice with the same Nats-Msg-Id; stored, and seen, once.
    twice = [i for i, n in Counter(tap.ids).items() if n == 2]
    assert len(twice) == acked
    ids = [r.msg_id for r in consumer.events]
    assert len(ids) == len(set(ids)) == len(set(tap.ids))
    assert len(consumer.messages(mailbox_id)) == 60


@pytest.fixture
async def private_nats() -> AsyncIterator[dict[str, Any]]:
    """A NATS server of our own, which the test may stop and start again."""
    port = _free_port()
    store = tempfile.mkdtemp(prefix="mailsync-nats-")
    state: dict[str, Any] = {"port": port, "url": f"nats://127.0.0.1:{port}"}

    async def start() -> None:
        state["process"] = await asyncio.create_subprocess_exec(
            NATS_SERVER, "-js", "-a", "127.0.0.1", "-p", str(port), "-sd", store,
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
        )  # fmt: skip
        async with asyncio.timeout(10):
            while True:
                try:
                    _, writer = await asyncio.open_connection("127.0.0.1", port)
                    writer.close()
                    return
                except OSError:
                    await asyncio.sleep(0.05)

    async def stop() -> None:
        process = state["process"]
        process.terminate()
        await process.wait()

    state["start"], state["stop"] = start, stop
    await start()
    try:
        yield state
    finally:
        if state["process"].returncode is None:
            await stop()
        shutil.rmtree(store, ignore_errors=True)


async def test_nats_down_then_back_loses_nothing_and_duplicates_nothing(
    ev_rt: Runtime, events_settings: Settings, private_nats: dict[str, Any], publisher_running: Any
) -> None:
    rt = ev_rt
    settings = events_settings.model_copy(update={"nats_url": private_nats["url"]})
    async with publisher_running(settings) as publisher:
        first = await _seed(rt, 50, user="nina")
        await published(rt)
        await private_nats["stop"]()
        # Syncing goes on while NATS is away; its events wait in the outbox.
        second = await _seed(rt, 70, user="omar")
        async with asyncio.timeout(30):
            while publisher.last_error is None:  # noqa: ASYNC110 - the round's acks time out
                await asyncio.sleep(0.1)
        assert await _unpublished(rt) > 0 and not publisher.ready
        await private_nats["start"]()
        await published(rt, within=60)
        assert publisher.ready
    nc = await nats.connect(private_nats["url"])
    try:
        await ensure_stream(nc.jetstream(), settings)
        consumer = await Consumer.start(nc, settings)
        await consumer.drain()
        ids = [r.msg_id for r in consumer.events]
        assert len(ids) == len(set(ids))
        assert len(consumer.messages(first)) == 50 and len(consumer.messages(second)) == 70
        assert consumer.types().count("mailbox.connected") == 2
        await consumer.close()
        await nc.jetstream().delete_stream(settings.events_stream)
    finally:
        await nc.close()


async def test_several_publishers_publish_each_row_once_in_order(
    ev_rt: Runtime, nc: NATS, events_settings: Settings, consumer: Consumer
) -> None:
    rt = ev_rt
    tap = await CoreTap().start(events_settings.nats_url, events_settings.events_subject_prefix)
    publishers = [await _start_publisher(events_settings) for _ in range(3)]
    try:
        mailboxes = [await _seed(rt, 80 + 10 * i, user=f"p{i}") for i in range(3)]
        await published(rt)
    finally:
        for process in publishers:
            process.send_signal(signal.SIGTERM)
        started = time.monotonic()
        codes = [await asyncio.wait_for(p.wait(), 15) for p in publishers]
        stopped_in = time.monotonic() - started
    assert codes == [0, 0, 0] and stopped_in < 10
    await consumer.drain()
    # No row went out twice, not even as a duplicate JetStream dropped.
    assert len(tap.ids) == len(set(tap.ids)) == len(consumer.events)
    for i, mailbox_id in enumerate(mailboxes):
        assert len(consumer.messages(mailbox_id)) == 80 + 10 * i
        versions = [
            r.event["version"] for r in consumer.events if r.event["mailbox_id"] == str(mailbox_id)
            and "version" in r.event
        ]  # fmt: skip
        assert versions == sorted(versions)


async def test_health_reports_lag_and_readiness(ev_rt: Runtime, events_settings: Settings) -> None:
    rt = ev_rt
    port = _free_port()
    await _seed(rt, 30, user="hal")
    # Pointed at a port where nothing listens: not ready, and the lag says what waits.
    dead = events_settings.model_copy(update={"nats_url": f"nats://127.0.0.1:{_free_port()}"})
    process = await _start_publisher(dead, EVENTS_PUBLISHER_PORT=str(port))
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            async with asyncio.timeout(60):
                while True:
                    try:
                        ready = await client.get("/readyz")
                        metrics = (await client.get("/metrics")).text
                        failed = 'publish_failures_total{reason="nats_unavailable"}' in metrics
                        if ready.json()["outbox"]["unpublished_rows"] and failed:
                            break
                    except httpx.HTTPError:
                        pass
                    await asyncio.sleep(0.1)
            assert ready.status_code == 503
            assert ready.json()["checks"]["nats"] == "unavailable"
            assert ready.json()["outbox"]["oldest_unpublished_age_seconds"] > 0
            assert "mailsync_outbox_unpublished_rows" in metrics
            assert "cannot reach NATS" in ready.json()["last_error"]
            assert 'mailsync_events_publish_failures_total{reason="nats_unavailable"}' in metrics
    finally:
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), 15) == 0
