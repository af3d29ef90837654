"""Many small mailboxes at once: a burst of connects converges exactly, within every
provider limit, and their periodic passes are spread over the interval."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime
from typing import Any

import httpx
from sqlalchemy import text

from app.sync import jobs
from app.sync.runtime import Runtime
from app.sync.spread import phase_of
from tests.conftest import LiveApi, bearer, run_worker
from tests.e2e.support import Sim
from tests.e2e.test_outlook import assert_converged, connect_body, new_account

MAILBOXES = 200
BUCKETS = 10


async def _connect_all(live_api: LiveApi, accounts: list[dict[str, Any]]) -> list[str]:
    async with httpx.AsyncClient(base_url=live_api.base_url, timeout=60) as client:

        async def one(i: int, account: dict[str, Any]) -> str:
            response = await client.post(
                "/mail/connect", json=connect_body(account), headers=bearer(f"burst-{i}")
            )
            assert response.status_code == 202, response.text
            return str(response.json()["mailbox_id"])

        return list(await asyncio.gather(*(one(i, a) for i, a in enumerate(accounts))))


async def test_two_hundred_mailboxes_connected_in_a_burst_converge_and_spread(
    sim: Sim, live_api: LiveApi, sim_rt: Runtime
) -> None:
    interval = sim_rt.settings.sync_interval_seconds
    # Push or not, the periodic interval is the same here: one interval to spread over.
    sim_rt.settings = sim_rt.settings.model_copy(
        update={"sync_poll_without_push_seconds": interval}
    )
    accounts = list(await asyncio.gather(*(new_account(sim, 20) for _ in range(MAILBOXES))))
    await sim.call("POST", "/_sim/counters/reset")
    mailbox_ids = await _connect_all(live_api, accounts)
    assert len(set(mailbox_ids)) == MAILBOXES
    # A scheduler tick while the connect jobs wait finds every first sync due: it queues
    # nothing more (each would be a second pass).
    ticked = await jobs.schedule({"rt": sim_rt})
    assert ticked["due"] == MAILBOXES and ticked["enqueued"] == 0, ticked

    await run_worker(sim_rt, max_seconds=280)

    for account, mailbox_id in zip(accounts, mailbox_ids, strict=True):
        await assert_converged(sim, sim_rt, account["email"], mailbox_id)
    async with sim_rt.sessions() as session:
        rows = (
            await session.execute(
                text(
                    "SELECT id, status, pending_since, full_pass_at, next_sync_at "
                    "FROM mailboxes WHERE id = ANY(CAST(:ids AS uuid[]))"
                ),
                {"ids": [uuid.UUID(m) for m in mailbox_ids]},
            )
        ).all()
    assert {r.status for r in rows} == {"connected"}
    assert all(r.pending_since is None for r in rows)
    totals = await sim.counters()
    # One pass each: one delta request per folder of every mailbox.
    async with sim_rt.sessions() as session:
        streams = (
            await session.execute(
                text(
                    "SELECT count(*) FROM sync_cursors WHERE mailbox_id = ANY(CAST(:ids AS uuid[]))"
                ),
                {"ids": [uuid.UUID(m) for m in mailbox_ids]},
            )
        ).scalar_one()
    assert totals["methods"]["messages.delta"] == streams, totals
    assert totals["retry_after_violations"] == 0, totals
    assert totals["throttled"] == 0, totals
    assert totals["concurrency_peak"] <= sim_rt.settings.graph_max_concurrency, totals
    subscriptions = await sim.call("GET", "/_sim/microsoft/subscriptions")
    users = {a["user_id"] for a in accounts}
    assert len({s["userId"] for s in subscriptions if s["userId"] in users}) == MAILBOXES

    # Connected together, due apart: each mailbox's next pass at its own phase.
    now = datetime.now(UTC)
    buckets = [0] * BUCKETS
    for row in rows:
        assert row.next_sync_at == row.full_pass_at
        left = (row.full_pass_at - now).total_seconds()
        assert 0.5 * interval - 300 <= left <= 1.5 * interval, left
        phase = row.full_pass_at.timestamp() % interval
        assert abs(phase - phase_of(row.id, interval)) < 0.01 or interval - phase < 0.01
        buckets[int(phase / interval * BUCKETS) % BUCKETS] += 1
    share = MAILBOXES / BUCKETS
    # Random ids: every tenth of the interval holds some, none holds a herd.
    assert min(buckets) >= 1 and max(buckets) <= 2.5 * share, buckets
