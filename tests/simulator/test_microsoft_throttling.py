"""Graph's per-mailbox concurrency limit, random throttling and Retry-After bookkeeping."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import httpx
import pytest

from app.simulator.core import RETRY_AFTER_GRACE
from app.simulator.server import SimulatorServer
from tests.providers.outlook.support import (
    counters,
    create_account,
    eventually,
    faults,
    sim_client,
)


@pytest.fixture
async def client(simulator: SimulatorServer) -> AsyncIterator[httpx.AsyncClient]:
    async with sim_client(simulator) as c:
        yield c


async def test_fifth_concurrent_request_gets_429_with_retry_after(
    client: httpx.AsyncClient, simulator: SimulatorServer
) -> None:
    account = await create_account(client, message_count=20)
    hdrs = {"Authorization": f"Bearer {account['access_token']}"}
    # Latency keeps the first four in flight while the fifth arrives, even on a machine
    # so busy that the fifth takes a second to be sent.
    async with faults(
        client, latency_ms=2000, retry_after_seconds=2, graph_concurrency_retry_after=True
    ):
        first_four = [
            asyncio.create_task(client.get("/v1.0/me/mailFolders/inbox", headers=hdrs))
            for _ in range(4)
        ]

        await eventually(
            lambda: counters(simulator, account["counter_key"]).get("in_flight") == 4,
            interval=0.005,
        )
        fifth = await client.get("/v1.0/me/mailFolders/inbox", headers=hdrs)
        results = await asyncio.gather(*first_four)
    assert [r.status_code for r in results] == [200] * 4
    assert fifth.status_code == 429
    assert fifth.headers["retry-after"] == "2"
    assert fifth.json()["error"]["code"] == "ApplicationThrottled"
    seen = counters(simulator, account["counter_key"])
    assert seen["concurrency_peak"] == 4
    assert seen["throttled"] == 1


async def test_coming_back_before_retry_after_is_counted_as_a_violation(
    client: httpx.AsyncClient, simulator: SimulatorServer
) -> None:
    account = await create_account(client, message_count=20)
    hdrs = {"Authorization": f"Bearer {account['access_token']}"}

    def violations() -> int:
        return int(counters(simulator, account["counter_key"])["retry_after_violations"])

    async with faults(client, throttle_rate=1.0, retry_after_seconds=1.0, seed=1):
        throttled = await client.get("/v1.0/me/messages", headers=hdrs)
        assert throttled.status_code == 429
        assert throttled.json()["error"]["code"] == "TooManyRequests"
        assert throttled.headers["retry-after"] == "1"
        # Right behind the 429: could have been in flight already, so not counted.
        assert (await client.get("/v1.0/me/messages", headers=hdrs)).status_code == 429
        assert violations() == 0
        # A client that read the Retry-After and came back anyway is counted.
        await asyncio.sleep(RETRY_AFTER_GRACE * 2)
        assert (await client.get("/v1.0/me/messages", headers=hdrs)).status_code == 429
        assert violations() == 1

    await asyncio.sleep(float(throttled.headers["retry-after"]) + RETRY_AFTER_GRACE)
    polite = await client.get("/v1.0/me/messages", headers=hdrs)
    assert polite.status_code == 200
    assert violations() == 1


async def test_unavailable_is_503_with_retry_after(client: httpx.AsyncClient) -> None:
    account = await create_account(client, message_count=5)
    hdrs = {"Authorization": f"Bearer {account['access_token']}"}
    async with faults(client, unavailable_rate=1.0, retry_after_seconds=1):
        response = await client.get("/v1.0/me/mailFolders", headers=hdrs)
    assert response.status_code == 503
    assert response.headers["retry-after"] == "1"
    assert response.json()["error"]["code"] == "ServiceUnavailable"


async def test_mailbox_concurrency_429_comes_without_retry_after_by_default(
    client: httpx.AsyncClient, simulator: SimulatorServer
) -> None:
    account = await create_account(client, message_count=20)
    hdrs = {"Authorization": f"Bearer {account['access_token']}"}
    async with faults(client, latency_ms=400):
        first_four = [
            asyncio.create_task(client.get("/v1.0/me/mailFolders/inbox", headers=hdrs))
            for _ in range(4)
        ]
        await eventually(
            lambda: counters(simulator, account["counter_key"]).get("in_flight") == 4,
            interval=0.005,
        )
        fifth = await client.get("/v1.0/me/mailFolders/inbox", headers=hdrs)
        await asyncio.gather(*first_four)
    assert fifth.status_code == 429
    assert "retry-after" not in fifth.headers
    assert "MailboxConcurrency" in fifth.json()["error"]["message"]
    # Nothing to violate: no wait was named.
    assert counters(simulator, account["counter_key"])["retry_after_violations"] == 0


async def test_an_abandoned_request_stays_in_flight_until_it_would_have_ended(
    client: httpx.AsyncClient, simulator: SimulatorServer
) -> None:
    account = await create_account(client, message_count=20)
    hdrs = {"Authorization": f"Bearer {account['access_token']}"}
    key = account["counter_key"]
    async with faults(client, latency_ms=600):
        abandoned = [
            asyncio.create_task(client.get("/v1.0/me/mailFolders/inbox", headers=hdrs))
            for _ in range(4)
        ]
        await eventually(lambda: counters(simulator, key).get("in_flight") == 4, interval=0.005)
        # The client gives up on all four (a slice ends, a worker stops) ...
        for task in abandoned:
            task.cancel()
        await asyncio.gather(*abandoned, return_exceptions=True)
        # ... but Exchange is still working on them: a fifth request is one too many.
        refused = await client.get("/v1.0/me/mailFolders/inbox", headers=hdrs)
        assert refused.status_code == 429
        await eventually(lambda: counters(simulator, key).get("in_flight") == 0, interval=0.02)
        assert (await client.get("/v1.0/me/mailFolders/inbox", headers=hdrs)).status_code == 200
