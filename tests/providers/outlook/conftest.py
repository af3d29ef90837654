"""Fixtures for driving OutlookProvider against the session simulator."""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from app.config import Settings
from app.providers.base import Account, SyncContext
from app.providers.outlook.provider import OutlookProvider
from app.simulator.server import SimulatorServer
from tests.providers.outlook.support import NotificationReceiver, SemaphoreGate, sim_client


@pytest.fixture(scope="session")
def receiver() -> Iterator[NotificationReceiver]:
    """Stands in for mailsync's public base URL: answers Graph's webhook handshake."""
    server = NotificationReceiver().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def requests_trusts_simulator(simulator: SimulatorServer) -> Iterator[None]:
    # MSAL uses requests, which reads REQUESTS_CA_BUNDLE at request time.
    previous = os.environ.get("REQUESTS_CA_BUNDLE")
    os.environ["REQUESTS_CA_BUNDLE"] = str(simulator.ca_path)
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop("REQUESTS_CA_BUNDLE", None)
        else:
            os.environ["REQUESTS_CA_BUNDLE"] = previous


@pytest.fixture
def outlook_settings(simulator: SimulatorServer, receiver: NotificationReceiver) -> Settings:
    env = simulator.env()
    values: dict[str, Any] = {
        "MAILSYNC_ENV": "test",
        "GRAPH_BASE_URL": env["GRAPH_BASE_URL"],
        "MICROSOFT_AUTHORITY_HOST": env["MICROSOFT_AUTHORITY_HOST"],
        "MICROSOFT_CLIENT_ID": env["MICROSOFT_CLIENT_ID"],
        "MICROSOFT_CLIENT_SECRET": env["MICROSOFT_CLIENT_SECRET"],
        "PUBLIC_BASE_URL": receiver.base_url,
    }
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


@pytest.fixture
async def client(simulator: SimulatorServer) -> AsyncIterator[httpx.AsyncClient]:
    async with sim_client(simulator) as c:
        yield c


@pytest.fixture
def sent_requests() -> list[tuple[float, str]]:
    """(monotonic time, URL) of every request the provider started, in order."""
    return []


@pytest.fixture
async def provider(
    simulator: SimulatorServer,
    outlook_settings: Settings,
    requests_trusts_simulator: None,
    sent_requests: list[tuple[float, str]],
) -> AsyncIterator[OutlookProvider]:
    async def record(request: httpx.Request) -> None:
        sent_requests.append((time.monotonic(), str(request.url)))

    async with httpx.AsyncClient(
        verify=simulator.ssl_context(), timeout=30, event_hooks={"request": [record]}
    ) as http:
        outlook = OutlookProvider(outlook_settings, http)
        try:
            yield outlook
        finally:
            await outlook.aclose()


@dataclass
class Mailbox:
    """A connected mailbox as the engine would hold it: account, tokens, gate."""

    provider: OutlookProvider
    account: Account
    access_token: str
    refresh_token: str | None
    gate: SemaphoreGate = field(default_factory=lambda: SemaphoreGate(4))
    sim: dict[str, Any] = field(default_factory=dict)

    async def token(self) -> str:
        return self.access_token

    async def refresh(self) -> None:
        tokens = await self.provider.refresh_token(self.account, self.refresh_token)
        self.access_token = tokens.access_token
        self.refresh_token = tokens.refresh_token or self.refresh_token

    @property
    def ctx(self) -> SyncContext:
        return SyncContext(account=self.account, access_token=self.token, gate=self.gate)


@pytest.fixture
def connect(provider: OutlookProvider) -> Any:
    def make(sim_account: dict[str, Any], *, app_only: bool = False) -> Mailbox:
        account = Account(
            provider="microsoft",
            mailbox_id=sim_account["user_id"],
            email=sim_account["email"],
            auth_mode="application" if app_only else "delegated",
            tenant_id=sim_account["tenant_id"],
            provider_user_id=sim_account["user_id"] if app_only else None,
        )
        return Mailbox(
            provider=provider,
            account=account,
            access_token="" if app_only else sim_account["access_token"],
            refresh_token=None if app_only else sim_account["refresh_token"],
            sim=sim_account,
        )

    return make
