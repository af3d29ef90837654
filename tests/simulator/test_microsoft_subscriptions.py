"""Graph subscriptions: validation handshake, lifetime limit, notifications, lifecycle events."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from app.simulator.server import SimulatorServer
from tests.providers.outlook.support import (
    NotificationReceiver,
    create_account,
    eventually,
    sim_client,
)


@pytest.fixture
async def client(simulator: SimulatorServer) -> AsyncIterator[httpx.AsyncClient]:
    async with sim_client(simulator) as c:
        yield c


@pytest.fixture(scope="module")
def receiver() -> Iterator[NotificationReceiver]:
    server = NotificationReceiver().start()
    try:
        yield server
    finally:
        server.stop()


def expiry(minutes: float) -> str:
    return (datetime.now(UTC) + timedelta(minutes=minutes)).isoformat().replace("+00:00", "Z")


async def subscribe(
    client: httpx.AsyncClient,
    account: dict[str, Any],
    url: str,
    *,
    minutes: float = 60,
    resource: str = "me/messages",
    prefer: str | None = None,
) -> httpx.Response:
    headers = {"Authorization": f"Bearer {account['access_token']}"}
    if prefer:
        headers["Prefer"] = prefer
    return await client.post(
        "/v1.0/subscriptions",
        headers=headers,
        json={
            "changeType": "created,updated,deleted",
            "notificationUrl": url,
            "lifecycleNotificationUrl": url,
            "resource": resource,
            "expirationDateTime": expiry(minutes),
            "clientState": "s3cret-state",
        },
    )


async def test_creation_validates_the_endpoint_first(
    client: httpx.AsyncClient, receiver: NotificationReceiver
) -> None:
    account = await create_account(client, message_count=5)
    validations_before = len(receiver.validations)
    response = await subscribe(client, account, receiver.url)
    assert response.status_code == 201, response.text
    subscription = response.json()
    assert subscription["clientState"] == "s3cret-state"
    assert subscription["resource"] == "me/messages"
    # One handshake per distinct URL, with a token that needs URL-decoding to echo.
    assert len(receiver.validations) == validations_before + 1
    assert receiver.validations[-1].startswith("Validation: Testing client application")
    recorded = await client.get(
        "/_sim/microsoft/deliveries",
        params={"subscription_id": subscription["id"], "kind": "validation"},
    )
    assert [d["status"] for d in recorded.json()] == [200]


async def test_endpoint_that_fails_validation_gets_no_subscription(
    client: httpx.AsyncClient,
) -> None:
    account = await create_account(client, message_count=5)
    failing = NotificationReceiver(echo_validation=False).start()
    try:
        response = await subscribe(client, account, failing.url)
    finally:
        failing.stop()
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "ValidationError"
    listed = await client.get(
        "/v1.0/subscriptions", headers={"Authorization": f"Bearer {account['access_token']}"}
    )
    assert listed.json()["value"] == []


async def test_mail_subscriptions_live_at_most_10080_minutes(
    client: httpx.AsyncClient, receiver: NotificationReceiver
) -> None:
    account = await create_account(client, message_count=5)
    too_long = await subscribe(client, account, receiver.url, minutes=10_080 + 5)
    assert too_long.status_code == 400
    assert "10080 minutes" in too_long.json()["error"]["message"]
    ok = await subscribe(client, account, receiver.url, minutes=10_079)
    assert ok.status_code == 201
    renew = await client.patch(
        f"/v1.0/subscriptions/{ok.json()['id']}",
        headers={"Authorization": f"Bearer {account['access_token']}"},
        json={"expirationDateTime": expiry(10_081)},
    )
    assert renew.status_code == 400


async def test_renew_get_delete(client: httpx.AsyncClient, receiver: NotificationReceiver) -> None:
    account = await create_account(client, message_count=5)
    hdrs = {"Authorization": f"Bearer {account['access_token']}"}
    created = (await subscribe(client, account, receiver.url, minutes=30)).json()
    later = expiry(3 * 24 * 60)
    renewed = await client.patch(
        f"/v1.0/subscriptions/{created['id']}", headers=hdrs, json={"expirationDateTime": later}
    )
    assert renewed.status_code == 200
    assert renewed.json()["expirationDateTime"] > created["expirationDateTime"]
    fetched = await client.get(f"/v1.0/subscriptions/{created['id']}", headers=hdrs)
    assert fetched.json()["expirationDateTime"] == renewed.json()["expirationDateTime"]

    other = await create_account(client, message_count=1)
    hidden = await client.get(
        f"/v1.0/subscriptions/{created['id']}",
        headers={"Authorization": f"Bearer {other['access_token']}"},
    )
    assert hidden.status_code == 404

    assert (
        await client.delete(f"/v1.0/subscriptions/{created['id']}", headers=hdrs)
    ).status_code == 204
    assert (
        await client.get(f"/v1.0/subscriptions/{created['id']}", headers=hdrs)
    ).status_code == 404
    assert (
        await client.delete(f"/v1.0/subscriptions/{created['id']}", headers=hdrs)
    ).status_code == 404


async def test_subscribing_to_another_users_mail_is_forbidden(
    client: httpx.AsyncClient, receiver: NotificationReceiver
) -> None:
    alice = await create_account(client, message_count=1)
    bob = await create_account(client, message_count=1)
    response = await subscribe(
        client, alice, receiver.url, resource=f"users/{bob['user_id']}/messages"
    )
    assert response.status_code == 403


async def test_changes_are_delivered_in_the_background(
    client: httpx.AsyncClient, receiver: NotificationReceiver
) -> None:
    account = await create_account(client, message_count=40)
    user = account["user_id"]
    subscription = (
        await subscribe(client, account, receiver.url, prefer='IdType="ImmutableId"')
    ).json()
    folder_scoped = (
        await subscribe(client, account, receiver.url, resource="me/mailFolders('inbox')/messages")
    ).json()

    added = (
        await client.post(f"/_sim/microsoft/accounts/{user}/messages", json={"folder": "inbox"})
    ).json()["ids"][0]
    await client.post(f"/_sim/microsoft/accounts/{user}/messages/read", json={"ids": [added]})
    await client.post(
        f"/_sim/microsoft/accounts/{user}/messages/move",
        json={"ids": [added], "destination": "archive"},
    )
    await client.post(f"/_sim/microsoft/accounts/{user}/messages/delete", json={"ids": [added]})

    def received(subscription_id: str) -> list[dict[str, Any]]:
        return [n for n in receiver.notifications if n["subscriptionId"] == subscription_id]

    mailbox_wide = await eventually(lambda: len(received(subscription["id"])) >= 4)
    mailbox_wide = received(subscription["id"])
    # Each mutation is posted on its own, so arrival order is not guaranteed (as with Graph).
    assert sorted(n["changeType"] for n in mailbox_wide) == [
        "created",
        "deleted",
        "updated",
        "updated",
    ]
    for notification in mailbox_wide:
        assert notification["clientState"] == "s3cret-state"
        assert notification["tenantId"] == account["tenant_id"]
        assert notification["resourceData"]["id"] == added
        assert notification["resourceData"]["@odata.type"] == "#Microsoft.Graph.Message"
        assert notification["resource"] == f"Users/{user}/Messages/{added}"
        assert notification["subscriptionExpirationDateTime"] == subscription["expirationDateTime"]

    # A folder subscription sees the move as a deletion from its folder.
    await eventually(lambda: len(received(folder_scoped["id"])) >= 3)
    inbox_only = received(folder_scoped["id"])
    assert sorted(n["changeType"] for n in inbox_only) == ["created", "deleted", "updated"]

    async def all_recorded_as_delivered() -> bool:
        deliveries = (
            await client.get(
                "/_sim/microsoft/deliveries",
                params={"subscription_id": subscription["id"], "kind": "change"},
            )
        ).json()
        return len(deliveries) == 4 and all(
            d["status"] == 202 and d["delivered_at"] for d in deliveries
        )

    await eventually(all_recorded_as_delivered)


async def test_lifecycle_notifications_on_demand(
    client: httpx.AsyncClient, receiver: NotificationReceiver
) -> None:
    account = await create_account(client, message_count=1)
    hdrs = {"Authorization": f"Bearer {account['access_token']}"}
    subscription = (await subscribe(client, account, receiver.url)).json()
    for event in ("reauthorizationRequired", "missed", "subscriptionRemoved"):
        response = await client.post(
            f"/_sim/microsoft/subscriptions/{subscription['id']}/lifecycle", json={"event": event}
        )
        assert response.status_code == 202

    def events() -> list[str]:
        return [
            n["lifecycleEvent"]
            for n in receiver.notifications
            if n["subscriptionId"] == subscription["id"] and "lifecycleEvent" in n
        ]

    await eventually(lambda: len(events()) == 3)
    assert sorted(events()) == [
        "missed", "reauthorizationRequired", "subscriptionRemoved",
    ]  # fmt: skip
    # subscriptionRemoved means it is gone.
    assert (
        await client.get(f"/v1.0/subscriptions/{subscription['id']}", headers=hdrs)
    ).status_code == 404
