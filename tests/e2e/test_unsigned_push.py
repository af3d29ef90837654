"""A Pub/Sub push subscription without authentication, as the simulator sends it: every
push is refused (401), recorded as `missing_token`, and the log says what to configure
once, not once per push."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

import pytest
from sqlalchemy import text

from app.simulator.server import SimulatorServer
from app.sync.runtime import Runtime
from tests.conftest import PUSH_AUDIENCE, LiveApi, run_worker
from tests.e2e.support import Sim, connect_via_api, sim_session, unique_email


@pytest.fixture
async def sim(simulator: SimulatorServer, live_api: LiveApi) -> AsyncIterator[Sim]:
    async with sim_session(simulator, faults={"gmail_quota_units_per_second": 0}) as client:
        yield client


async def _refused(rt: Runtime) -> list[tuple[str, int]]:
    async with rt.sessions() as session:
        rows = await session.execute(
            text(
                "SELECT outcome, http_status FROM webhook_notifications "
                "WHERE provider = 'google' ORDER BY id"
            )
        )
        return [(r[0], r[1]) for r in rows.all()]


async def test_unsigned_pushes_are_refused_and_explained_once(
    sim: Sim, live_api: LiveApi, sim_rt: Runtime, caplog: pytest.LogCaptureFixture
) -> None:
    email = unique_email("unsigned", "example.com")
    account = await sim.call(
        "POST", "/_sim/google/accounts", json={"email": email, "messages": 10, "seed": 3}
    )
    await connect_via_api(
        live_api,
        "una",
        {
            "provider": "google",
            "access_token": account["access_token"],
            "refresh_token": account["refresh_token"],
            "expires_in": account["expires_in"],
            "email": email,
        },
    )
    await run_worker(sim_rt)  # the first sync, and the watch
    await sim.call(
        "PUT",
        "/_sim/google/push",
        json={
            "endpoint": f"{live_api.base_url}/webhooks/google",
            "audience": PUSH_AUDIENCE,
            "authenticated": False,
            "max_notifications_per_second": 0,
            "max_attempts": 1,
        },
    )
    caplog.set_level(logging.WARNING, logger="app.api.routes.webhooks")
    for _ in range(3):
        await sim.call("POST", f"/_sim/google/accounts/{email}/messages", json={"count": 1})
    async with asyncio.timeout(15):
        while len(await _refused(sim_rt)) < 3:  # noqa: ASYNC110 - another thread's writes
            await asyncio.sleep(0.05)
    assert await _refused(sim_rt) == [("missing_token", 401)] * 3
    deliveries = await sim.call("GET", "/_sim/google/push/deliveries", params={"email": email})
    unsigned = [d for d in deliveries["deliveries"] if d["authorization"] is None]
    assert len(unsigned) >= 3
    advice = [
        r.getMessage() for r in caplog.records if "--push-auth-service-account" in r.getMessage()
    ]
    assert len(advice) == 1, advice
    assert f"--push-auth-token-audience={PUSH_AUDIENCE}" in advice[0]
    # Nothing was acted on: no sync owed by a push nobody could authenticate.
    assert await sim_rt.redis.zcard("arq:queue") == 0
