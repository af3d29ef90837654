"""The worker's ARQ configuration does what the engine relies on."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from typing import Any

from arq.connections import RedisSettings, create_pool
from arq.worker import Worker

from app.providers import registry
from app.sync.queue import enqueue_sync
from app.sync.runtime import Runtime
from app.sync.worker import WorkerSettings
from tests.sync.helpers import connect, mailbox_row, seeded, stored_ids


def test_job_settings_avoid_the_arq_traps() -> None:
    functions = {f.name: f for f in WorkerSettings.functions}
    for function in functions.values():
        # A kept result would make enqueue_job return None for the next sync of the mailbox.
        assert function.keep_result_s == 0
    longest = max(f.timeout_s or 0 for f in functions.values())
    # A killed worker's job is re-run only after the longest timeout: keep it short, and
    # longer than a slice so a healthy slice never times out.
    assert WorkerSettings.job_completion_wait < longest <= 300


async def test_finished_job_does_not_block_the_next_enqueue(rt: Runtime) -> None:
    provider = seeded(10)
    registry.override("microsoft", lambda s, h: provider)
    mailbox_id = await connect(rt, provider)
    from tests.conftest import run_worker

    assert await enqueue_sync(rt.redis, mailbox_id) is True
    assert await enqueue_sync(rt.redis, mailbox_id) is False  # coalesced while pending
    await run_worker(rt)
    assert await enqueue_sync(rt.redis, mailbox_id) is True  # not blocked by the finished one


async def test_sigterm_lets_the_running_slice_finish(rt: Runtime) -> None:
    provider = seeded(300, page_size=10)
    provider.faults.stall_seconds = 0.03
    registry.override("microsoft", lambda s, h: provider)
    mailbox_id = await connect(rt, provider)
    await enqueue_sync(rt.redis, mailbox_id)

    async def startup(ctx: dict[str, Any]) -> None:
        ctx["rt"] = rt
        ctx["worker_id"] = "graceful"

    worker = Worker(
        functions=WorkerSettings.functions,
        redis_pool=await create_pool(RedisSettings.from_dsn(rt.settings.redis_url)),
        on_startup=startup,
        handle_signals=False,
        poll_delay=0.02,
        job_completion_wait=WorkerSettings.job_completion_wait,
    )
    mid_sync = asyncio.Event()
    provider.faults.before_page = lambda stream, cursor: (
        provider.pages_served >= 3 and mid_sync.set()
    )
    running = asyncio.create_task(worker.async_run())
    await asyncio.wait_for(mid_sync.wait(), timeout=30)
    worker.handle_sig_wait_for_completion(signal.SIGTERM)
    with contextlib.suppress(asyncio.CancelledError):
        await asyncio.wait_for(running, timeout=60)
    await worker.close()

    row = await mailbox_row(rt, mailbox_id)
    assert row["lease_owner"] is None, "the slice was cut off while holding its lease"
    assert row["status"] == "connected"
    assert len(await stored_ids(rt, mailbox_id)) == 300
