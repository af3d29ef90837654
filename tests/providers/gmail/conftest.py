"""Fixtures for driving GmailProvider against the session's HTTPS simulator."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from app.config import Settings
from app.providers.base import (
    Account,
    NormalizedMessage,
    Page,
    ProviderLimits,
    StreamInfo,
    SyncContext,
)
from app.providers.gmail.client import RetryPolicy
from app.providers.gmail.provider import GmailProvider
from app.simulator.server import SimulatorServer
from tests.providers.gmail.sim import GoogleSim, SimAccount, google_sim

PUSH_AUDIENCE = "https://mailsync.test/webhooks/google"


class BucketGate:
    """A RateGate for one process: a quota bucket of one second's worth, Retry-After pauses.

    Mirrors what the engine's Redis gate promises (app/sync/ratelimit.py), minus Redis.
    """

    def __init__(self, limits: ProviderLimits) -> None:
        self.rate = limits.units_per_second or 0.0
        self.capacity = self.rate
        self._tokens = self.capacity
        self._updated = time.monotonic()
        self._paused_until = 0.0
        self._slots = asyncio.Semaphore(limits.max_concurrency or 1_000_000)
        self._lock = asyncio.Lock()
        self.requests = 0
        self.units = 0
        self.pauses: list[float] = []
        self.refunded = 0

    async def _admit(self, cost: int) -> None:
        async with self._lock:
            while True:
                now = time.monotonic()
                if now < self._paused_until:
                    await asyncio.sleep(self._paused_until - now)
                    continue
                if not self.rate:
                    return
                self._tokens = min(self.capacity, self._tokens + (now - self._updated) * self.rate)
                self._updated = now
                needed = min(cost, self.capacity)
                if self._tokens >= needed:
                    self._tokens -= needed
                    return
                await asyncio.sleep((needed - self._tokens) / self.rate)

    @asynccontextmanager
    async def request(self, cost: int = 1) -> AsyncIterator[None]:
        async with self._slots:
            await self._admit(cost)
            self.requests += 1
            self.units += cost
            yield

    async def pause(self, seconds: float) -> None:
        self.pauses.append(seconds)
        self._paused_until = max(self._paused_until, time.monotonic() + seconds)

    async def tighten(self) -> None:
        """Gmail's gate has no concurrency slots to tighten."""

    async def refund(self, units: int) -> None:
        self.refunded += units
        self._tokens = min(self.capacity, self._tokens + units)


@dataclass
class Harness:
    provider: GmailProvider
    ctx: SyncContext
    gate: BucketGate
    account: SimAccount
    token_calls: list[float] = field(default_factory=list)
    stream: StreamInfo = field(default_factory=lambda: StreamInfo(key="mailbox", name="mailbox"))


@pytest.fixture
async def sim(simulator: SimulatorServer) -> AsyncIterator[GoogleSim]:
    async with google_sim(simulator) as client:
        yield client


@pytest.fixture
def gmail_settings(simulator: SimulatorServer, monkeypatch: pytest.MonkeyPatch) -> Settings:
    for name, value in simulator.env().items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("MAILSYNC_ENV", "test")
    monkeypatch.setenv("GOOGLE_PUSH_AUDIENCE", PUSH_AUDIENCE)
    return Settings(_env_file=None)


@pytest.fixture
async def http(simulator: SimulatorServer) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(verify=simulator.ssl_context(), timeout=30.0) as client:
        yield client


# Short backoffs: tests wait for what the simulator asks, not for production defaults.
FAST_RETRY = RetryPolicy(max_attempts=6, backoff_base=0.05, backoff_cap=1.0)


@pytest.fixture
def provider(gmail_settings: Settings, http: httpx.AsyncClient) -> GmailProvider:
    return GmailProvider(gmail_settings, http, retry=FAST_RETRY)


MakeHarness = Callable[..., Awaitable[Harness]]


@pytest.fixture
def harness(sim: GoogleSim, provider: GmailProvider) -> MakeHarness:
    async def make(
        *,
        messages: int = 60,
        account: SimAccount | None = None,
        quota: bool = True,
        **extra: Any,
    ) -> Harness:
        """A fresh simulated mailbox and a context for it; quota=False for a gate without
        a quota bucket (tests that also switch the simulator's quota off)."""
        account = account or await sim.create_account(messages=messages, **extra)
        gate = BucketGate(provider.limits() if quota else ProviderLimits())
        calls: list[float] = []

        async def access_token() -> str:
            calls.append(time.monotonic())
            return account.access_token

        ctx = SyncContext(
            account=Account(provider="google", mailbox_id=str(uuid.uuid4()), email=account.email),
            access_token=access_token,
            gate=gate,
        )
        return Harness(provider, ctx, gate, account, calls)

    return make


class Store:
    """What the engine would hold for the stream: pages applied as it applies them."""

    def __init__(self) -> None:
        self.messages: dict[str, NormalizedMessage] = {}
        self._seen: set[str] = set()

    def apply(self, page: Page) -> None:
        for message in page.upserts:
            self.messages[message.provider_message_id] = message
            self._seen.add(message.provider_message_id)
        for message_id in page.deletes:
            self.messages.pop(message_id, None)
        for change in page.label_changes:
            target = self.messages.get(change.provider_message_id)
            if target is None:
                continue
            labels = [x for x in target.labels if x not in change.remove]
            labels += [x for x in change.add if x not in labels]
            target.labels = labels
            target.is_read = "UNREAD" not in labels
        if page.full_sync_complete:
            for message_id in set(self.messages) - self._seen:
                del self.messages[message_id]
            self._seen.clear()
