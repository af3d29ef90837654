"""OutlookProvider.subscribe / renew / unsubscribe against the simulator's Graph."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from app.providers.base import SubscriptionGone
from app.providers.outlook.notifications import client_state_matches, parse_notifications
from tests.providers.outlook.conftest import Mailbox
from tests.providers.outlook.support import NotificationReceiver, create_account, eventually

Connect = Callable[..., Mailbox]


async def sim_subscriptions(client: httpx.AsyncClient, user_id: str) -> list[dict[str, Any]]:
    listed: list[dict[str, Any]] = (await client.get("/_sim/microsoft/subscriptions")).json()
    return [s for s in listed if s["userId"] == user_id and not s["expired"]]


async def test_subscribe_renew_recreate_unsubscribe(
    client: httpx.AsyncClient, connect: Connect, receiver: NotificationReceiver
) -> None:
    sim_account = await create_account(client, message_count=10)
    user = sim_account["user_id"]
    mailbox = connect(sim_account)

    subscription = await mailbox.provider.subscribe(mailbox.ctx)
    assert subscription is not None
    assert subscription.resource == "me/messages"
    assert subscription.client_state and len(subscription.client_state) >= 32
    # The longest lifetime Graph accepts for mail: just under 7 days.
    lifetime = subscription.expires_at - datetime.now(UTC)
    assert timedelta(days=6, hours=23) < lifetime <= timedelta(minutes=10_080)
    (stored,) = await sim_subscriptions(client, user)
    assert stored["id"] == subscription.subscription_id
    assert stored["notificationUrl"] == stored["lifecycleNotificationUrl"] == receiver.url
    assert stored["clientState"] == subscription.client_state
    assert stored["changeType"] == "created,deleted,updated"

    renewed = await mailbox.provider.renew(mailbox.ctx, subscription)
    assert renewed.subscription_id == subscription.subscription_id
    assert renewed.client_state == subscription.client_state
    assert renewed.expires_at >= subscription.expires_at

    # Graph dropped it (expiry, admin): renewal says so, and a new one can be made.
    await client.delete(f"/_sim/microsoft/subscriptions/{subscription.subscription_id}")
    with pytest.raises(SubscriptionGone):
        await mailbox.provider.renew(mailbox.ctx, subscription)
    recreated = await mailbox.provider.subscribe(mailbox.ctx)
    assert recreated is not None
    assert recreated.subscription_id != subscription.subscription_id
    assert recreated.client_state != subscription.client_state

    await mailbox.provider.unsubscribe(mailbox.ctx, recreated)
    assert await sim_subscriptions(client, user) == []
    # Removing one Graph no longer knows is fine.
    await mailbox.provider.unsubscribe(mailbox.ctx, recreated)


async def test_app_only_subscription_names_the_user(
    client: httpx.AsyncClient, connect: Connect
) -> None:
    sim_account = await create_account(client, message_count=10)
    mailbox = connect(sim_account, app_only=True)
    await mailbox.refresh()
    subscription = await mailbox.provider.subscribe(mailbox.ctx)
    assert subscription is not None
    assert subscription.resource == f"users/{sim_account['user_id']}/messages"
    await mailbox.provider.unsubscribe(mailbox.ctx, subscription)


async def test_notifications_reach_the_webhook_with_our_client_state(
    client: httpx.AsyncClient, connect: Connect, receiver: NotificationReceiver
) -> None:
    sim_account = await create_account(client, message_count=10)
    mailbox = connect(sim_account)
    subscription = await mailbox.provider.subscribe(mailbox.ctx)
    assert subscription is not None and subscription.client_state
    added = (
        await client.post(
            f"/_sim/microsoft/accounts/{sim_account['user_id']}/messages", json={"folder": "inbox"}
        )
    ).json()["ids"][0]

    def ours() -> list[dict[str, Any]]:
        return [
            n for n in receiver.notifications if n["subscriptionId"] == subscription.subscription_id
        ]

    await eventually(ours)
    (notification,) = parse_notifications(json.dumps({"value": ours()}).encode())
    assert notification.change_type == "created"
    # Subscribed with ImmutableId: the id is the one delta pages use.
    assert notification.resource_id == added
    assert notification.tenant_id == sim_account["tenant_id"]
    assert client_state_matches(subscription.client_state, notification.client_state)
    await mailbox.provider.unsubscribe(mailbox.ctx, subscription)
