"""Events tests: real NATS JetStream on 127.0.0.1:4222, each test with its own stream and
subject prefix (deleted afterwards), publishers in-process or as real subprocesses."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator
from typing import Any

import nats
import pytest
from nats.aio.client import Client as NATS
from nats.js.errors import NotFoundError

from app.config import Settings
from app.events.publisher import Publisher
from app.sync.runtime import Runtime
from tests.events.support import Consumer

NATS_URL = "nats://127.0.0.1:4222"


@pytest.fixture
async def events_settings(settings: Settings) -> AsyncIterator[Settings]:
    tag = secrets.token_hex(4)
    configured = settings.model_copy(
        update={
            "nats_url": NATS_URL,
            "events_stream": f"TEST_EVENTS_{tag}",
            "events_subject_prefix": f"t{tag}",
            "events_publisher_port": 0,
            "events_poll_seconds": 0.5,
        }
    )
    try:
        yield configured
    finally:
        nc = await nats.connect(NATS_URL)
        try:
            await nc.jetstream().delete_stream(configured.events_stream)
        except NotFoundError:
            pass
        finally:
            await nc.close()


@pytest.fixture
async def ev_rt(rt: Runtime, events_settings: Settings) -> Runtime:
    rt.settings = events_settings
    return rt


@pytest.fixture
async def nc() -> AsyncIterator[NATS]:
    client = await nats.connect(NATS_URL)
    try:
        yield client
    finally:
        await client.close()


class RunningPublisher:
    """A publisher running in this event loop until stopped."""

    def __init__(self, settings: Settings) -> None:
        self.publisher = Publisher(settings)
        self.task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Publisher:
        self.task = asyncio.create_task(self.publisher.run())
        return self.publisher

    async def __aexit__(self, *exc: Any) -> None:
        self.publisher.stopping.set()
        assert self.task is not None
        await asyncio.wait_for(self.task, timeout=15)
        await self.publisher.close()


@pytest.fixture
def publisher_running(events_settings: Settings) -> Any:
    def make(settings: Settings | None = None) -> RunningPublisher:
        return RunningPublisher(settings or events_settings)

    return make


@pytest.fixture
async def consumer(nc: NATS, events_settings: Settings) -> AsyncIterator[Consumer]:
    """Subscribed before anything is published: sees the stream from its first message."""
    from app.events.stream import ensure_stream

    await ensure_stream(nc.jetstream(), events_settings)
    c = await Consumer.start(nc, events_settings)
    try:
        yield c
    finally:
        await c.close()
