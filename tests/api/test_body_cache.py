"""The body cache: a second read does not reach the provider; a purge removes it."""

from __future__ import annotations

import uuid

import httpx
from sqlalchemy import text

from app.providers import registry
from app.sync.runtime import Runtime
from tests.conftest import bearer, run_worker
from tests.sync.helpers import connect, seeded

CAL = bearer("cal")


async def _cached(rt: Runtime, mailbox_id: uuid.UUID) -> int:
    async with rt.sessions() as session:
        return int(
            (
                await session.execute(
                    text("SELECT count(*) FROM message_bodies WHERE mailbox_id = :m"),
                    {"m": mailbox_id},
                )
            ).scalar_one()
        )


async def test_bodies_are_cached_then_purged(api: httpx.AsyncClient, rt: Runtime) -> None:
    provider = seeded(10, streams=1)
    registry.override("microsoft", lambda s, h: provider)
    mailbox_id = await connect(rt, provider, user="cal", email="cal@example.com", enqueue=True)
    await run_worker(rt)
    item = (await api.get("/mail/messages", params={"limit": 1}, headers=CAL)).json()["items"][0]
    provider.bodies[item["provider_message_id"]] = "<p>first <script>x()</script></p>"
    first = (await api.get(f"/mail/messages/{item['id']}/body", headers=CAL)).json()
    assert first["content"] == "<p>first </p>"
    assert await _cached(rt, mailbox_id) == 1
    # The provider's copy changes; the cached one is served (and sanitized again).
    provider.bodies[item["provider_message_id"]] = "<p>second</p>"
    again = (await api.get(f"/mail/messages/{item['id']}/body", headers=CAL)).json()
    assert again == first
    # Another format is its own entry.
    text_body = (await api.get(f"/mail/messages/{item['id']}/body?format=text", headers=CAL)).json()
    assert text_body == {"format": "text", "content": "<p>second</p>"}
    assert await _cached(rt, mailbox_id) == 2
    purged = await api.post(
        "/mail/disconnect", json={"mailbox_id": str(mailbox_id), "purge": True}, headers=CAL
    )
    assert purged.status_code == 200
    assert await _cached(rt, mailbox_id) == 0
