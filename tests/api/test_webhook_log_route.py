"""GET /admin/webhook-log: operators only, filters, keyset pages; and the repository's
recent notifications of one mailbox (what the dashboard shows)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import httpx
from sqlalchemy import text

from app.db.repositories.dashboard import DashboardRepository
from app.db.repositories.notifications import NotificationRepository
from app.sync.runtime import Runtime
from tests.api.webhook_support import change, graph_mailbox
from tests.conftest import bearer

OPERATOR = bearer("ops", roles=["mailsync.operator"])


async def _traffic(api: httpx.AsyncClient, rt: Runtime) -> tuple[object, object]:
    ada = await graph_mailbox(rt, "ada@contoso.com")
    bob = await graph_mailbox(rt, "bob@contoso.com")
    for i in range(3):
        body = {"value": [change(ada, message_id=f"AAMkAda{i}")]}
        assert (await api.post("/webhooks/microsoft", content=json.dumps(body))).status_code == 202
    body = {"value": [change(bob, message_id="AAMkBob"), change(bob, client_state="x")]}
    assert (await api.post("/webhooks/microsoft", content=json.dumps(body))).status_code == 202
    assert (await api.post("/webhooks/google", content=b"{}")).status_code == 401
    await api.post("/webhooks/microsoft", content=b"nope")
    return ada.mailbox_id, bob.mailbox_id


async def _settled(api: httpx.AsyncClient) -> None:
    # Refusals are written without holding up their answer: wait until they are.
    app = api._transport.app  # type: ignore[attr-defined]
    await app.state.webhook_intake.settle()


async def test_only_operators_read_the_log(api: httpx.AsyncClient) -> None:
    assert (await api.get("/admin/webhook-log")).status_code == 401
    refused = await api.get("/admin/webhook-log", headers=bearer("mallory"))
    assert refused.status_code == 403
    assert refused.json()["error"]["code"] == "forbidden"
    assert (await api.get("/admin/webhook-log", headers=OPERATOR)).status_code == 200


async def test_filters_and_pages(api: httpx.AsyncClient, rt: Runtime) -> None:
    ada, bob = await _traffic(api, rt)
    await _settled(api)
    everything = (await api.get("/admin/webhook-log", headers=OPERATOR)).json()
    assert everything["next_cursor"] is None
    ids = [int(i["id"]) for i in everything["items"]]
    assert len(ids) == 7 and ids == sorted(ids, reverse=True)
    item = next(i for i in everything["items"] if i["outcome"] == "forged_client_state")
    assert item["mailbox_id"] == str(bob) and item["provider"] == "microsoft"
    assert item["notification"]["resource_id"] == "AAMkAGI2"
    assert item["source"] and item["http_status"] == 202 and item["count"] == 1
    assert item["aggregated"] is False

    async def query(**params: str) -> list[dict[str, object]]:
        response = await api.get("/admin/webhook-log", params=params, headers=OPERATOR)
        assert response.status_code == 200, response.text
        return list(response.json()["items"])

    assert len(await query(mailbox_id=str(ada))) == 3
    assert {i["outcome"] for i in await query(mailbox_id=str(bob))} == {
        "accepted",
        "forged_client_state",
    }
    assert [i["outcome"] for i in await query(provider="google")] == ["missing_token"]
    assert [i["outcome"] for i in await query(outcome="malformed")] == ["malformed"]
    assert len(await query(outcome="accepted", provider="microsoft")) == 4
    later = (datetime.now(UTC) + timedelta(minutes=5)).isoformat()
    assert await query(since=later) == []
    assert len(await query(since=(datetime.now(UTC) - timedelta(minutes=5)).isoformat())) == 7

    # Keyset pages: every row exactly once, newest first, whatever arrives meanwhile.
    seen: list[int] = []
    cursor = None
    while True:
        params = {"limit": "2", **({"cursor": cursor} if cursor else {})}
        page = (await api.get("/admin/webhook-log", params=params, headers=OPERATOR)).json()
        seen += [int(i["id"]) for i in page["items"]]
        if not seen[2:] and cursor is None:
            await api.post("/webhooks/microsoft", content=b"[]")  # newer than the first page
            await _settled(api)
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == ids


async def test_bad_queries_are_4xx(api: httpx.AsyncClient) -> None:
    for params in (
        {"outcome": "exploded"},
        {"provider": "yahoo"},
        {"mailbox_id": "not-a-uuid"},
        {"since": "yesterday"},
        {"limit": "0"},
        {"limit": "501"},
    ):
        response = await api.get("/admin/webhook-log", params=params, headers=OPERATOR)
        assert response.status_code == 422, params
        assert set(response.json()["error"]) == {"code", "message"}
    # Not base64; an id past bigint; a negative id; too long.
    for cursor in ("garbage", "dzk5OTk5OTk5OTk5OTk5OTk5OTk5OTk5OTk5OTk5OQ", "dy01", "x" * 65):
        response = await api.get("/admin/webhook-log", params={"cursor": cursor}, headers=OPERATOR)
        assert 400 <= response.status_code < 500, cursor


async def test_recent_notifications_of_one_mailbox(api: httpx.AsyncClient, rt: Runtime) -> None:
    ada, bob = await _traffic(api, rt)
    await _settled(api)
    async with rt.sessions() as session:
        recent = await NotificationRepository(session).recent_for_mailbox(ada, limit=2)
        total = (
            await session.execute(
                text("SELECT count(*) FROM webhook_notifications WHERE mailbox_id = :id"),
                {"id": ada},
            )
        ).scalar_one()
    assert total == 3
    assert [r.outcome for r in recent] == ["accepted", "accepted"]
    assert [r.payload["resource_id"] for r in recent] == ["AAMkAda2", "AAMkAda1"]
    assert all(r.kind == "change:created" and r.received_at for r in recent)
    # What the operator dashboard shows for a mailbox: the outcomes, forged ones included.
    async with rt.sessions() as session:
        shown = await DashboardRepository(session).recent_notifications(bob)
    assert sorted(n.outcome for n in shown) == ["accepted", "forged_client_state"]
