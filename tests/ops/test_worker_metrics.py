"""A worker process serves its own Prometheus metrics: after a sync, what it wrote."""

from __future__ import annotations

import asyncio
import signal
import uuid

import httpx
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import text

from app.simulator.server import SimulatorServer
from app.sync.runtime import Runtime
from tests.conftest import LiveApi
from tests.e2e.support import Sim, connect_via_api, unique_email
from tests.ops.support import MAILSYNC, ROOT, free_port, process_env


def samples(exposition: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    found = {}
    for family in text_string_to_metric_families(exposition):
        for sample in family.samples:
            found[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return found


def value(
    found: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str
) -> float:
    return found.get((name, frozenset(labels.items())), 0.0)


async def test_worker_metrics_show_the_pages_and_messages_it_wrote(
    simulator: SimulatorServer, live_api: LiveApi, rt: Runtime
) -> None:
    sim = Sim(simulator)
    account = await sim.call(
        "POST",
        "/_sim/microsoft/accounts",
        json={"email": unique_email("metrics"), "message_count": 2500},
    )
    port = free_port()
    env = process_env(live_api.settings, WORKER_METRICS_PORT=str(port), METRICS_HOST="127.0.0.1")
    worker = await asyncio.create_subprocess_exec(
        *MAILSYNC,
        "worker",
        cwd=ROOT,
        env=env,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        mailbox_id = await connect_via_api(
            live_api,
            "mia",
            {
                "provider": "microsoft",
                "access_token": account["access_token"],
                "refresh_token": account["refresh_token"],
                "expires_in": account["expires_in"],
                "email": account["email"],
            },
        )
        async with asyncio.timeout(60):
            while await status(rt, mailbox_id) != "connected":
                assert worker.returncode is None, "the worker died"
                await asyncio.sleep(0.1)
        async with rt.sessions() as session:
            streams = int(
                await session.scalar(
                    text("SELECT count(*) FROM sync_cursors WHERE mailbox_id = :id"),
                    {"id": uuid.UUID(mailbox_id)},
                )
                or 0
            )
        async with httpx.AsyncClient() as client:
            response = await client.get(f"http://127.0.0.1:{port}/metrics")
        assert response.status_code == 200
        found = samples(response.text)
    finally:
        worker.send_signal(signal.SIGTERM)
        await asyncio.wait_for(worker.wait(), timeout=60)
        await sim.close()

    # Every message was written by a page (the newest-first head start is rewritten by its
    # folder's enumeration, which counts it).
    assert (
        value(found, "mailsync_messages_written_total", provider="microsoft", change="upserted")
        == 2500
    )
    pages = value(found, "mailsync_pages_written_total", provider="microsoft")
    # At least a page per folder; no more than the Graph requests that answered 200.
    assert (
        streams
        <= pages
        <= value(found, "mailsync_provider_requests_total", provider="microsoft", status="200")
    )
    done = value(
        found, "mailsync_sync_slice_duration_seconds_count", provider="microsoft", outcome="done"
    )
    assert done >= 1
    assert value(found, "mailsync_sync_lag_seconds_count", provider="microsoft") >= 1
    assert ("mailsync_queue_depth", frozenset({("state", "ready")})) in found


async def status(rt: Runtime, mailbox_id: str) -> str | None:
    async with rt.sessions() as session:
        result = await session.scalar(
            text("SELECT status FROM mailboxes WHERE id = :id"), {"id": uuid.UUID(mailbox_id)}
        )
    return None if result is None else str(result)
