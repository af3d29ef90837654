"""End-to-end plumbing: the simulator's control API, the live API, the database's view."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import httpx
from sqlalchemy import text

from app.simulator.server import SimulatorServer
from app.sync.runtime import Runtime
from tests.conftest import PUSH_AUDIENCE, LiveApi, bearer


def unique_email(prefix: str, domain: str = "contoso.com") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}@{domain}"


class Sim:
    def __init__(self, server: SimulatorServer) -> None:
        self.client = httpx.AsyncClient(
            base_url=server.base_url, verify=server.ssl_context(), timeout=60
        )

    async def call(self, method: str, path: str, **kwargs: Any) -> Any:
        response = await self.client.request(method, path, **kwargs)
        assert response.status_code < 300, (path, response.status_code, response.text)
        return response.json()

    async def counters(self, account: str | None = None) -> dict[str, Any]:
        snapshot = await self.call("GET", "/_sim/counters")
        if account is None:
            return snapshot["totals"]
        return snapshot["accounts"].get(account, {})

    async def close(self) -> None:
        await self.client.aclose()


@asynccontextmanager
async def sim_session(
    server: SimulatorServer,
    faults: dict[str, Any] | None = None,
    push: dict[str, Any] | None = None,
) -> AsyncIterator[Sim]:
    """The simulator's control client with `faults` (and Gmail's push endpoint) set for one
    test, and cleared after it whatever the test did."""
    client = Sim(server)
    await client.call("PUT", "/_sim/faults", json=faults or {})
    if push is not None:
        await client.call("PUT", "/_sim/google/push", json=push)
    try:
        yield client
    finally:
        await client.call("PUT", "/_sim/faults", json={})
        await client.call("PUT", "/_sim/google/push", json={})
        await client.close()


def gmail_sim_session(
    server: SimulatorServer, live_api: LiveApi
) -> AbstractAsyncContextManager[Sim]:
    """Gmail with its quota off (bench/ measures it) and its pushes sent to the live API."""
    return sim_session(
        server,
        faults={"gmail_quota_units_per_second": 0},
        push={
            "endpoint": f"{live_api.base_url}/webhooks/google",
            "audience": PUSH_AUDIENCE,
            "max_notifications_per_second": 0,
        },
    )


async def connect_via_api(live_api: LiveApi, user: str, body: dict[str, Any], **claims: Any) -> str:
    async with httpx.AsyncClient(base_url=live_api.base_url) as client:
        response = await client.post("/mail/connect", json=body, headers=bearer(user, **claims))
    assert response.status_code == 202, response.text
    return str(response.json()["mailbox_id"])


async def status_of(live_api: LiveApi, user: str) -> dict[str, Any]:
    async with httpx.AsyncClient(base_url=live_api.base_url) as client:
        response = await client.get("/mail/status", headers=bearer(user))
    [mailbox] = response.json()["mailboxes"]
    return dict(mailbox)


async def stored_messages(rt: Runtime, mailbox_id: str) -> dict[str, dict[str, Any]]:
    async with rt.sessions() as session:
        rows = await session.execute(
            text(
                "SELECT provider_message_id, thread_id, internet_message_id, subject, from_address, "
                "labels, is_read, has_attachments, received_at, stream_key "
                "FROM messages WHERE mailbox_id = :id"
            ),
            {"id": uuid.UUID(mailbox_id)},
        )
        return {row[0]: dict(row._mapping) for row in rows.all()}


async def message_count(rt: Runtime, mailbox_id: str) -> int:
    async with rt.sessions() as session:
        return int(
            (
                await session.execute(
                    text("SELECT count(*) FROM messages WHERE mailbox_id = :id"),
                    {"id": uuid.UUID(mailbox_id)},
                )
            ).scalar_one()
        )


async def wait_for_notifications(
    rt: Runtime, mailbox_id: str, kind: str, *, within: float = 15.0
) -> int:
    """Wait (up to `within` seconds) until a provider's push for the mailbox was recorded,
    then until the webhook's sync job is queued (it is enqueued just after the record
    commits)."""
    async with asyncio.timeout(within):
        received = await _recorded(rt, mailbox_id, kind)
        await _queued(rt, f"arq:job:sync:{mailbox_id}")
        return received


async def _queued(rt: Runtime, job_key: str) -> None:
    # Polling Redis is the only way to observe another process's enqueue.
    while not await rt.redis.exists(job_key):  # noqa: ASYNC110
        await asyncio.sleep(0.02)


async def _recorded(rt: Runtime, mailbox_id: str, kind: str) -> int:
    while True:
        async with rt.sessions() as session:
            received = int(
                (
                    await session.execute(
                        text(
                            "SELECT count(*) FROM webhook_notifications "
                            "WHERE mailbox_id = :id AND kind LIKE :kind"
                        ),
                        {"id": uuid.UUID(mailbox_id), "kind": kind},
                    )
                ).scalar_one()
            )
        if received:
            return received
        await asyncio.sleep(0.05)
