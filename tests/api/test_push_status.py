"""GET /mail/status says whether push works; Graph's lifecycle events move it."""

from __future__ import annotations

import json

import httpx

from app.providers import registry
from app.sync.engine import SyncEngine
from app.sync.runtime import Runtime
from app.sync.subscriptions import SubscriptionService
from tests.api.test_webhooks_microsoft import _notification, _subscribed
from tests.conftest import bearer, run_worker
from tests.sync.helpers import assert_periodic_slot, mailbox_row


async def _push(api: httpx.AsyncClient) -> str:
    response = await api.get("/mail/status", headers=bearer("alice"))
    [mailbox] = response.json()["mailboxes"]
    return str(mailbox["push"])


async def test_missed_notifications_mean_polling_until_the_channel_is_renewed(
    api: httpx.AsyncClient, rt: Runtime
) -> None:
    mailbox_id, sub = await _subscribed(rt)
    assert await _push(api) == "active"
    # The first pass ran before the channel existed (polling); the next one, with it, sets
    # the slow safety net.
    await SyncEngine(rt, "w").run_slice(mailbox_id)
    row = await mailbox_row(rt, mailbox_id)
    assert_periodic_slot(row["next_sync_at"], mailbox_id, rt.settings.sync_interval_seconds)

    response = await api.post(
        "/webhooks/microsoft",
        content=json.dumps({"value": [_notification(sub, lifecycle="missed")]}),
    )
    assert response.status_code == 202
    assert await _push(api) == "failing"
    await run_worker(rt)  # the sync `missed` asks for
    row = await mailbox_row(rt, mailbox_id)
    poll = rt.settings.sync_poll_without_push_seconds
    assert_periodic_slot(row["next_sync_at"], mailbox_id, poll)
    # A renewed channel is a working one again.
    await SubscriptionService(rt).ensure(mailbox_id)
    assert await _push(api) == "active"


async def test_a_removed_subscription_is_failing_until_recreated(
    api: httpx.AsyncClient, rt: Runtime
) -> None:
    mailbox_id, sub = await _subscribed(rt)
    provider = registry._overrides["microsoft"](rt.settings, rt.http)
    provider.subscriptions.clear()
    response = await api.post(
        "/webhooks/microsoft",
        content=json.dumps({"value": [_notification(sub, lifecycle="subscriptionRemoved")]}),
    )
    assert response.status_code == 202
    assert await _push(api) == "failing"
    await run_worker(rt)  # recreates it
    assert await _push(api) == "active"
    assert (await mailbox_row(rt, mailbox_id))["push_state"] == "active"
