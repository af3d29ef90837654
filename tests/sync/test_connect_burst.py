"""A burst of connects: first syncs waiting in the queue are not queued a second time.

Connect stores its job's id with the mailbox. The scheduler (every 5 s) and the completion
monitor (stalled mailboxes) re-enqueue a due first sync under that very id: ARQ collapses
it with the connect's job while that job waits its turn, and makes it again if Redis lost
it. Before, each tick queued a second job for every mailbox still waiting, and each of
those ran a whole second pass.
"""

from __future__ import annotations

import uuid

from sqlalchemy import text

from app.providers import registry
from app.sync import jobs
from app.sync.queue import is_connect_job, sync_job_id
from app.sync.runtime import Runtime
from tests.conftest import run_worker
from tests.sync.helpers import connect, mailbox_row, seeded, stored_ids


async def _queued(rt: Runtime) -> list[str]:
    return sorted(j.decode() for j in await rt.redis.zrange("arq:queue", 0, -1))


async def _stall(rt: Runtime, ids: list[uuid.UUID]) -> None:
    """As if the connects were made minutes ago and nothing moved since."""
    async with rt.sessions() as session, session.begin():
        await session.execute(
            text(
                "UPDATE mailboxes SET updated_at = now() - interval '10 minutes', "
                "next_sync_at = now() - interval '10 minutes' WHERE id = ANY(:ids)"
            ),
            {"ids": ids},
        )


async def test_waiting_first_syncs_are_queued_once_and_made_again_when_lost(
    rt: Runtime,
) -> None:
    provider = seeded(12, streams=2)
    registry.override("microsoft", lambda s, h: provider)
    # What one first sync asks the provider for, alone.
    await connect(rt, provider, user="control", email="control@example.com", enqueue=True)
    await run_worker(rt)
    one_pass = provider.pages_served
    assert one_pass > 0
    ids = [
        await connect(rt, provider, user=f"u{n}", email=f"u{n}@example.com", enqueue=True)
        for n in range(5)
    ]
    connect_jobs = await _queued(rt)
    assert len(connect_jobs) == 5 and all(is_connect_job(j) for j in connect_jobs)
    stored = {sync_job_id(mid, (await mailbox_row(rt, mid))["connect_job"]) for mid in ids}
    assert stored == set(connect_jobs)

    # The workers are behind: every first sync is due, and stalled, while its job waits.
    await _stall(rt, ids)
    assert await jobs.schedule({"rt": rt}) == {"due": 5, "lapsed": 0, "enqueued": 0, "spread": 0}
    assert (await jobs.monitor({"rt": rt}, sweep=True))["overdue"] == 0
    assert await _queued(rt) == connect_jobs

    # Redis lost the queue: the scheduler makes the same connect jobs again.
    await rt.redis.flushdb()
    assert (await jobs.schedule({"rt": rt}))["enqueued"] == 5
    assert await _queued(rt) == connect_jobs

    await run_worker(rt)
    for mid in ids:
        row = await mailbox_row(rt, mid)
        assert row["status"] == "connected" and row["connect_job"] is None
        assert len(await stored_ids(rt, mid)) == 12
    # One pass each, as when a mailbox is connected alone.
    assert provider.pages_served == 6 * one_pass


async def test_a_lost_first_sync_is_rescued_by_the_monitor_under_a_fresh_id(rt: Runtime) -> None:
    provider = seeded(12, streams=2)
    registry.override("microsoft", lambda s, h: provider)
    mid = await connect(rt, provider, enqueue=False)  # its job never reached Redis
    connect_job = (await mailbox_row(rt, mid))["connect_job"]
    # Its id is held (a worker took it and died before the lease), and nothing is queued.
    await rt.redis.set(f"arq:job:{sync_job_id(mid, connect_job)}", b"held")
    await _stall(rt, [mid])
    assert (await jobs.schedule({"rt": rt}))["enqueued"] == 0  # the held id swallows it
    assert (await jobs.monitor({"rt": rt}, sweep=True))["overdue"] == 1
    queued = await _queued(rt)
    assert len(queued) == 1 and queued[0].startswith(f"sync:{mid}:overdue")
    await run_worker(rt)
    row = await mailbox_row(rt, mid)
    assert row["status"] == "connected" and row["connect_job"] is None
