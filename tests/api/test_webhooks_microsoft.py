"""POST /webhooks/microsoft: handshake, clientState, recording, coalescing, lifecycle."""

from __future__ import annotations

import json
import uuid
from typing import Any

import httpx
from sqlalchemy import text

from app.db.repositories.subscriptions import SubscriptionRepository
from app.providers import registry
from app.sync.runtime import Runtime
from tests.conftest import run_worker
from tests.sync.helpers import connect, seeded


async def _subscribed(rt: Runtime) -> tuple[uuid.UUID, Any]:
    provider = seeded(20)
    registry.override("microsoft", lambda s, h: provider)
    mailbox_id = await connect(rt, provider, enqueue=True)
    await run_worker(rt)
    async with rt.sessions() as session:
        stored = await SubscriptionRepository(session, rt.cipher).active_for(mailbox_id)
    assert stored is not None and stored.client_state
    return mailbox_id, stored


def _notification(
    sub: Any, *, client_state: str | None = None, lifecycle: str | None = None
) -> dict:
    item: dict[str, Any] = {
        "subscriptionId": sub.subscription_id,
        "clientState": sub.client_state if client_state is None else client_state,
        "tenantId": "tenant",
        "subscriptionExpirationDateTime": "2030-01-01T00:00:00Z",
    }
    if lifecycle:
        item["lifecycleEvent"] = lifecycle
    else:
        item.update(
            changeType="created",
            resource="Users/u/Messages/AAMk",
            resourceData={
                "@odata.type": "#Microsoft.Graph.Message",
                "@odata.id": "Users/u/Messages/AAMk",
                "id": "AAMk",
            },
        )
    return item


async def _queued(rt: Runtime) -> list[str]:
    return [j.decode() for j in await rt.redis.zrange("arq:queue", 0, -1)]


async def _notifications(
    rt: Runtime,
    mailbox_id: uuid.UUID,
    outcomes: tuple[str, ...] = ("accepted", "duplicate", "lifecycle"),
) -> list[str]:
    async with rt.sessions() as session:
        rows = await session.execute(
            text(
                "SELECT kind FROM webhook_notifications WHERE mailbox_id = :id "
                "AND outcome = ANY(:outcomes) ORDER BY id"
            ),
            {"id": mailbox_id, "outcomes": list(outcomes)},
        )
        return [r[0] for r in rows.all()]


async def test_validation_handshake_echoes_token(api: httpx.AsyncClient) -> None:
    token = "Validation: Testing client application reachability for subscription Request-Id: 1 <&>"
    response = await api.post("/webhooks/microsoft", params={"validationToken": token})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    assert response.text == token


async def test_burst_of_notifications_collapses_into_one_job(
    api: httpx.AsyncClient, rt: Runtime
) -> None:
    mailbox_id, sub = await _subscribed(rt)
    for _ in range(25):
        body = {"value": [_notification(sub), _notification(sub)]}
        response = await api.post("/webhooks/microsoft", content=json.dumps(body))
        assert response.status_code == 202
    assert await _queued(rt) == [f"sync:{mailbox_id}"]
    assert len(await _notifications(rt, mailbox_id)) == 50


async def test_forged_client_state_is_ignored(api: httpx.AsyncClient, rt: Runtime) -> None:
    mailbox_id, sub = await _subscribed(rt)
    body = {
        "value": [
            _notification(sub, client_state="forged"),
            {**_notification(sub), "subscriptionId": "unknown"},
        ]
    }
    response = await api.post("/webhooks/microsoft", content=json.dumps(body))
    assert response.status_code == 202
    assert await _queued(rt) == []
    # Recorded for the operator, but nothing is owed for them.
    assert await _notifications(rt, mailbox_id) == []
    assert await _notifications(rt, mailbox_id, ("forged_client_state",)) == ["change:created"]


async def test_lifecycle_events(api: httpx.AsyncClient, rt: Runtime) -> None:
    mailbox_id, sub = await _subscribed(rt)
    response = await api.post(
        "/webhooks/microsoft",
        content=json.dumps({"value": [_notification(sub, lifecycle="reauthorizationRequired")]}),
    )
    assert response.status_code == 202
    assert await _queued(rt) == [f"subscribe:{mailbox_id}"]
    response = await api.post(
        "/webhooks/microsoft",
        content=json.dumps({"value": [_notification(sub, lifecycle="missed")]}),
    )
    assert response.status_code == 202
    assert sorted(await _queued(rt)) == sorted([f"subscribe:{mailbox_id}", f"sync:{mailbox_id}"])
    assert await _notifications(rt, mailbox_id) == [
        "lifecycle:reauthorizationRequired",
        "lifecycle:missed",
    ]


async def test_subscription_removed_is_recreated_then_synced(
    api: httpx.AsyncClient, rt: Runtime
) -> None:
    mailbox_id, sub = await _subscribed(rt)
    provider = registry._overrides["microsoft"](rt.settings, rt.http)
    provider.subscriptions.clear()  # the provider dropped it
    response = await api.post(
        "/webhooks/microsoft",
        content=json.dumps({"value": [_notification(sub, lifecycle="subscriptionRemoved")]}),
    )
    assert response.status_code == 202
    await run_worker(rt)
    async with rt.sessions() as session:
        fresh = await SubscriptionRepository(session, rt.cipher).active_for(mailbox_id)
        old = await SubscriptionRepository(session, rt.cipher).find(sub.subscription_id)
    assert fresh is not None and fresh.subscription_id != sub.subscription_id
    assert fresh.subscription_id in provider.subscriptions
    # Late notifications for the replaced subscription still map to the mailbox for a while.
    assert old is not None and old.mailbox_id == mailbox_id


async def test_malformed_bodies_are_4xx(api: httpx.AsyncClient) -> None:
    for body in (b"", b"[]", b"{}", b'{"value": 3}', b'{"value": [{"nope": 1}]}', b"\xff\xfe"):
        response = await api.post("/webhooks/microsoft", content=body)
        assert 400 <= response.status_code < 500, body


async def _pending_streams(rt: Runtime, mailbox_id: uuid.UUID) -> list[tuple[str, str, bool]]:
    async with rt.sessions() as session:
        rows = await session.execute(
            text(
                "SELECT stream_key, message_id, locate FROM pending_streams "
                "WHERE mailbox_id = :id ORDER BY 1, 2, 3"
            ),
            {"id": mailbox_id},
        )
        return [(r[0], r[1], bool(r[2])) for r in rows.all()]


async def test_notifications_record_what_they_point_to_once(
    api: httpx.AsyncClient, rt: Runtime
) -> None:
    mailbox_id, sub = await _subscribed(rt)
    created = _notification(sub)
    updated = {
        **created,
        "changeType": "updated",
        "resourceData": {**created["resourceData"], "@odata.etag": 'W/"2"'},
    }
    deleted = {**created, "changeType": "deleted", "resourceData": {"id": "gone"}}
    for body in ({"value": [created, updated]}, {"value": [created]}, {"value": [deleted]}):
        assert (await api.post("/webhooks/microsoft", content=json.dumps(body))).status_code == 202
    # The message to locate (new or changed: recorded once), the deleted one from the store.
    assert await _pending_streams(rt, mailbox_id) == [("", "AAMk", True), ("", "gone", False)]
    missed = {"value": [_notification(sub, lifecycle="missed")]}
    assert (await api.post("/webhooks/microsoft", content=json.dumps(missed))).status_code == 202
    # A notification that names nothing: every stream.
    assert ("", "", False) in await _pending_streams(rt, mailbox_id)
