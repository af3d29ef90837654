"""Per-user quota (units per second, moving average) and the shared random 429/503 faults."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest

from app.simulator.server import SimulatorServer
from tests.providers.gmail.sim import GoogleSim, google_sim

LIST = "/gmail/v1/users/me/messages"


@pytest.fixture
async def sim(simulator: SimulatorServer) -> AsyncIterator[GoogleSim]:
    async with google_sim(simulator) as client:
        yield client


async def test_over_quota_names_the_instant_in_the_message_only(sim: GoogleSim) -> None:
    account = await sim.create_account(messages=20)
    # 10 units/s: a burst of two messages.list (5 units each), then a 0.5 s wait.
    async with sim.faults(gmail_quota_units_per_second=10):
        for _ in range(2):
            assert (await sim.http.get(LIST, headers=account.auth)).status_code == 200
        refused = await sim.http.get(LIST, headers=account.auth)
        assert refused.status_code == 429
        # What Gmail sends: no Retry-After header, the instant only in the message text.
        assert "retry-after" not in refused.headers
        error = refused.json()["error"]
        assert error["code"] == 429 and error["status"] == "RESOURCE_EXHAUSTED"
        assert error["errors"][0]["reason"] == "rateLimitExceeded"
        assert error["errors"][0]["domain"] == "usageLimits"
        match = re.fullmatch(r"User-rate limit exceeded\.  Retry after (\S+)", error["message"])
        assert match is not None
        moment = datetime.fromisoformat(match.group(1).replace("Z", "+00:00"))
        assert moment.tzinfo is not None
        assert 0 < (moment - datetime.now(UTC)).total_seconds() <= 1.0
        counters = await sim.counters(account.email)
        assert counters["throttled"] == 1
        assert counters["quota_units"] == 10
        assert counters["retry_after_violations"] == 0
        # Coming back well before the named instant is a violation (requests already in
        # flight when the 429 left, within 100 ms, are not).
        await asyncio.sleep(0.2)
        again = await sim.http.get(LIST, headers=account.auth)
        assert again.status_code == 429
        assert (await sim.counters(account.email))["retry_after_violations"] == 1


@pytest.mark.parametrize("reason", ["userRateLimitExceeded", "rateLimitExceeded"])
async def test_over_quota_as_403_with_either_reason(sim: GoogleSim, reason: str) -> None:
    account = await sim.create_account(messages=20)
    async with sim.faults(
        gmail_quota_units_per_second=5, gmail_quota_status=403, gmail_quota_reason=reason
    ):
        assert (await sim.http.get(LIST, headers=account.auth)).status_code == 200
        refused = await sim.http.get(LIST, headers=account.auth)
    assert refused.status_code == 403
    assert "retry-after" not in refused.headers
    error = refused.json()["error"]
    assert error["code"] == 403 and error["status"] == "PERMISSION_DENIED"
    assert error["errors"][0]["reason"] == reason
    assert error["message"].startswith("User-rate limit exceeded.  Retry after ")


async def test_retry_after_header_can_be_switched_on(sim: GoogleSim) -> None:
    account = await sim.create_account(messages=20)
    async with sim.faults(gmail_quota_units_per_second=5, gmail_quota_retry_after_header=True):
        assert (await sim.http.get(LIST, headers=account.auth)).status_code == 200
        refused = await sim.http.get(LIST, headers=account.auth)
    assert refused.status_code == 429
    assert int(refused.headers["retry-after"]) >= 1


async def test_quota_is_per_user_and_costs_follow_the_method(sim: GoogleSim) -> None:
    alice = await sim.create_account(messages=5)
    bob = await sim.create_account(messages=5)
    async with sim.faults(gmail_quota_units_per_second=10):
        for _ in range(2):
            assert (await sim.http.get(LIST, headers=alice.auth)).status_code == 200
        assert (await sim.http.get(LIST, headers=bob.auth)).status_code == 200
        # getProfile costs 1 unit, history.list 2: bob still has 5 units.
        profile = await sim.http.get("/gmail/v1/users/me/profile", headers=bob.auth)
        assert profile.status_code == 200
        history = await sim.http.get(
            "/gmail/v1/users/me/history",
            params={"startHistoryId": bob.history_id},
            headers=bob.auth,
        )
        assert history.status_code == 200
    assert (await sim.counters(bob.email))["quota_units"] == 5 + 1 + 2


async def test_quota_off_allows_anything(sim: GoogleSim) -> None:
    account = await sim.create_account(messages=5)
    async with sim.faults(gmail_quota_units_per_second=0):
        for _ in range(60):  # 300 units, more than a second's worth at 250/s
            assert (await sim.http.get(LIST, headers=account.auth)).status_code == 200


async def test_random_throttling_and_unavailability(sim: GoogleSim) -> None:
    account = await sim.create_account(messages=5)
    async with sim.faults(throttle_rate=1.0, retry_after_seconds=2):
        throttled = await sim.http.get(LIST, headers=account.auth)
    assert throttled.status_code == 429
    assert throttled.headers["retry-after"] == "2"
    assert throttled.json()["error"]["errors"][0]["reason"] == "rateLimitExceeded"
    async with sim.faults(unavailable_rate=1.0, retry_after_seconds=1):
        unavailable = await sim.http.get(LIST, headers=account.auth)
    assert unavailable.status_code == 503
    assert unavailable.json()["error"]["errors"][0]["reason"] == "backendError"
    assert unavailable.json()["error"]["status"] == "UNAVAILABLE"
