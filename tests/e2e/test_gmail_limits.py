"""Gmail through the whole service with both per-user limits on: quota units and concurrent
requests (the 20,000-message run is `python -m bench.gmail_limits`)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from app.simulator.server import SimulatorServer
from app.sync.queue import enqueue_sync
from app.sync.runtime import Runtime
from tests.conftest import LiveApi, run_worker
from tests.e2e.support import Sim, connect_via_api, sim_session, status_of
from tests.e2e.test_gmail import assert_converged, connect_body, new_account

# Ten times Gmail's real quota on both sides, so the suite stays fast; the concurrency
# limit varies around 40 per batch, so 50-part batches are refused part of the time.
QUOTA = 2500
LIMITS = {
    "gmail_quota_units_per_second": QUOTA,
    "gmail_user_concurrency": 40,
    "gmail_user_concurrency_jitter": 0.5,
    "seed": 3,
}


@pytest.fixture
async def sim(simulator: SimulatorServer) -> AsyncIterator[Sim]:
    async with sim_session(simulator, faults=LIMITS) as client:
        yield client


async def test_full_sync_and_mixed_history_converge_under_both_limits(
    sim: Sim, live_api: LiveApi, sim_rt: Runtime
) -> None:
    sim_rt.settings = sim_rt.settings.model_copy(update={"gmail_quota_units_per_second": QUOTA})
    account = await new_account(sim, 3000)
    email = account["email"]
    counter_key = f"google:{email}"
    await sim.call("POST", "/_sim/counters/reset")
    mailbox_id = await connect_via_api(live_api, "greta", connect_body(account))
    await run_worker(sim_rt, max_seconds=120)

    status = await status_of(live_api, "greta")
    assert status["status"] == "connected", status
    assert status["last_error"] is None
    assert status["progress"]["messages_synced"] == 3000
    await assert_converged(sim, sim_rt, account, mailbox_id)
    counters = await sim.counters(counter_key)
    assert counters["concurrency_refused"] > 0
    assert counters["retry_after_violations"] == 0

    # Changes Gmail writes as single history records with several change types.
    truth = (await sim.call("GET", f"/_sim/google/accounts/{email}/truth", params={"limit": 20}))[
        "messages"
    ]
    await sim.call(
        "POST",
        f"/_sim/google/accounts/{email}/history/record",
        json={
            "operations": [
                {"op": "add", "count": 60, "label_ids": ["INBOX", "UNREAD"]},
                {"op": "modify", "ids": ["new:3", truth[0]["id"]], "add_label_ids": ["STARRED"],
                 "remove_label_ids": ["UNREAD"]},
                {"op": "delete", "ids": ["new:7", truth[1]["id"]]},
            ]
        },
    )  # fmt: skip
    # What a push would do: one more sync of the mailbox.
    assert await enqueue_sync(sim_rt.redis, mailbox_id)
    await run_worker(sim_rt, max_seconds=60)
    await assert_converged(sim, sim_rt, account, mailbox_id)
