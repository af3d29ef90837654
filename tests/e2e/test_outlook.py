"""Microsoft 365 / Outlook through the whole service: API → queue → engine → Graph simulator → PostgreSQL."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest
from sqlalchemy import text

from app.db.repositories.outbox import OutboxRepository
from app.sync.engine import Outcome, SyncEngine
from app.sync.jobs import renew_subscriptions, schedule
from app.sync.runtime import Runtime
from tests.conftest import LiveApi, run_worker
from tests.e2e.support import (
    Sim,
    connect_via_api,
    message_count,
    status_of,
    stored_messages,
    unique_email,
    wait_for_notifications,
)
from tests.sync.helpers import expire_lease

WELL_KNOWN_LABELS = {
    "inbox": "INBOX",
    "sentitems": "SENT",
    "drafts": "DRAFT",
    "deleteditems": "TRASH",
    "junkemail": "SPAM",
    "archive": "ARCHIVE",
}


async def new_account(sim: Sim, count: int, **extra: Any) -> dict[str, Any]:
    return dict(
        await sim.call(
            "POST",
            "/_sim/microsoft/accounts",
            json={"email": unique_email("o365"), "message_count": count, **extra},
        )
    )


async def truth(sim: Sim, email: str) -> dict[str, dict[str, Any]]:
    body = await sim.call("GET", f"/_sim/microsoft/accounts/{email}/messages")
    return {m["id"]: m for m in body["messages"]}


def folder_label(chain: list[dict[str, Any]]) -> str:
    """The documented rule (docs/microsoft.md): a well-known folder is its system label,
    any other its parent's label + "/" + its name ("/" and "\\" escaped), a top-level one
    its name alone."""
    label = ""
    for folder in chain:
        if folder["well_known_name"] in WELL_KNOWN_LABELS:
            label = WELL_KNOWN_LABELS[folder["well_known_name"]]
            continue
        name = folder["display_name"].replace("\\", "\\\\").replace("/", "\\/")
        label = f"{label}/{name}" if label else name
    return label


def expected_labels(message: dict[str, Any]) -> list[str]:
    folder = folder_label(message["folder_chain"])
    return sorted({folder, *message["categories"], *([] if message["is_read"] else ["UNREAD"])})


async def assert_converged(sim: Sim, rt: Runtime, email: str, mailbox_id: str) -> None:
    expected = await truth(sim, email)
    stored = await stored_messages(rt, mailbox_id)
    assert set(stored) == set(expected), (len(stored), len(expected))
    assert await message_count(rt, mailbox_id) == len(expected)  # no duplicates
    for mid, message in expected.items():
        row = stored[mid]
        assert row["is_read"] == message["is_read"], mid
        assert sorted(row["labels"]) == expected_labels(message), (mid, row["labels"], message)
        assert row["thread_id"] == message["conversation_id"]
        assert row["subject"] == message["subject"]
        assert row["internet_message_id"] == message["internet_message_id"]
        assert row["has_attachments"] == message["has_attachments"]


def connect_body(account: dict[str, Any]) -> dict[str, Any]:
    return {
        "provider": "microsoft",
        "access_token": account["access_token"],
        "refresh_token": account["refresh_token"],
        "expires_in": account["expires_in"],
        "email": account["email"],
    }


async def test_backfill_then_notifications_converge(
    sim: Sim, live_api: LiveApi, sim_rt: Runtime
) -> None:
    account = await new_account(sim, 1500)
    email = account["email"]
    mailbox_id = await connect_via_api(live_api, "olivia", connect_body(account))
    await run_worker(sim_rt)

    status = await status_of(live_api, "olivia")
    assert status["status"] == "connected", status
    assert status["progress"]["percent"] == 100
    assert status["progress"]["messages_synced"] == 1500
    await assert_converged(sim, sim_rt, email, mailbox_id)
    [subscription] = [
        s
        for s in await sim.call("GET", "/_sim/microsoft/subscriptions")
        if s["userId"] == account["user_id"]
    ]
    assert subscription["notificationUrl"] == f"{live_api.base_url}/webhooks/microsoft"

    # Mail changes at the provider; Graph notifies us; one sync converges.
    await sim.call(
        "POST", f"/_sim/microsoft/accounts/{email}/messages", json={"folder": "inbox", "count": 7}
    )
    await sim.call(
        "POST",
        f"/_sim/microsoft/accounts/{email}/messages/delete",
        json={"folder": "inbox", "count": 3},
    )
    await sim.call(
        "POST",
        f"/_sim/microsoft/accounts/{email}/messages/move",
        json={"folder": "inbox", "count": 4, "destination": "archive"},
    )
    await sim.call(
        "POST",
        f"/_sim/microsoft/accounts/{email}/messages/read",
        json={"folder": "inbox", "count": 5, "is_read": False},
    )
    await sim.call(
        "POST",
        f"/_sim/microsoft/accounts/{email}/messages/categories",
        json={"folder": "sentitems", "count": 2, "categories": ["Red category"]},
    )
    await wait_for_notifications(sim_rt, mailbox_id, "change:%")
    await run_worker(sim_rt)
    await assert_converged(sim, sim_rt, email, mailbox_id)


async def test_forged_notification_triggers_nothing(
    sim: Sim, live_api: LiveApi, sim_rt: Runtime
) -> None:
    import httpx

    account = await new_account(sim, 30)
    await connect_via_api(live_api, "fiona", connect_body(account))
    await run_worker(sim_rt)
    [subscription] = [
        s
        for s in await sim.call("GET", "/_sim/microsoft/subscriptions")
        if s["userId"] == account["user_id"]
    ]
    forged = {
        "value": [
            {
                "subscriptionId": subscription["id"],
                "clientState": "guess",
                "changeType": "created",
                "resource": "me/messages/x",
                "resourceData": {"id": "x"},
            }
        ]
    }
    async with httpx.AsyncClient(base_url=live_api.base_url) as client:
        assert (await client.post("/webhooks/microsoft", json=forged)).status_code == 202
    assert await sim_rt.redis.zcard("arq:queue") == 0


async def test_dead_delta_link_on_one_folder_converges(
    sim: Sim, live_api: LiveApi, sim_rt: Runtime
) -> None:
    account = await new_account(sim, 400)
    email = account["email"]
    mailbox_id = await connect_via_api(live_api, "dora", connect_body(account))
    await run_worker(sim_rt)
    await sim.call(
        "POST",
        f"/_sim/microsoft/accounts/{email}/messages/delete",
        json={"folder": "inbox", "count": 10},
    )
    await sim.call(
        "POST", f"/_sim/microsoft/accounts/{email}/messages", json={"folder": "inbox", "count": 4}
    )
    await sim.call(
        "POST", f"/_sim/microsoft/accounts/{email}/delta/expire", json={"folder": "inbox"}
    )
    result = await SyncEngine(sim_rt, "w").run_slice(uuid.UUID(mailbox_id))
    assert result.outcome in (Outcome.DONE, Outcome.DONE_AGAIN)
    await assert_converged(sim, sim_rt, email, mailbox_id)


async def test_crash_mid_folder_resumes_from_next_link(
    sim: Sim, live_api: LiveApi, sim_rt: Runtime
) -> None:
    account = await new_account(sim, 4000)
    email = account["email"]
    mailbox_id = uuid.UUID(await connect_via_api(live_api, "carl", connect_body(account)))
    sim_rt.settings = sim_rt.settings.model_copy(update={"sync_slice_pages": 2})
    assert (await SyncEngine(sim_rt, "doomed").run_slice(mailbox_id)).outcome is Outcome.CONTINUE
    async with sim_rt.sessions() as session:
        cursors = (
            (
                await session.execute(
                    text(
                        "SELECT cursor FROM sync_cursors WHERE mailbox_id = :id AND cursor IS NOT NULL"
                    ),
                    {"id": mailbox_id},
                )
            )
            .scalars()
            .all()
        )
    assert any("next_link" in c for c in cursors), cursors
    synced_before = await message_count(sim_rt, str(mailbox_id))

    # The next slice dies mid-page; its lease lapses; the scheduler recovers the mailbox.
    task = asyncio.create_task(SyncEngine(sim_rt, "dies").run_slice(mailbox_id))
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await expire_lease(sim_rt, mailbox_id)
    sim_rt.settings = sim_rt.settings.model_copy(update={"sync_slice_pages": 1000})
    assert (await schedule({"rt": sim_rt}))["lapsed"] == 1
    await run_worker(sim_rt)
    await assert_converged(sim, sim_rt, email, str(mailbox_id))
    assert synced_before > 0
    # Resumed, not restarted: every message arrived in exactly one committed page (a
    # restart from scratch would have committed the first pages' messages twice).
    async with sim_rt.sessions() as session:
        events = await OutboxRepository(session).for_mailbox(mailbox_id)
    delivered = [
        mid
        for event in events
        if event["kind"] == "messages.changed"
        for section in ("received", "updated")
        for mid in event["payload"].get(section, {}).get("provider_message_id", [])
    ]
    assert len(delivered) == len(set(delivered)) == 4000


async def test_short_lived_tokens_rotate_during_a_long_sync(
    sim: Sim, live_api: LiveApi, sim_rt: Runtime
) -> None:
    account = await new_account(sim, 1200, token_lifetime=5)
    email = account["email"]
    # Slow responses stretch the sync well past one token's life.
    await sim.call("PUT", "/_sim/faults", json={"latency_ms": 1500})
    sim_rt.settings = sim_rt.settings.model_copy(update={"token_refresh_margin_seconds": 3})
    mailbox_id = await connect_via_api(live_api, "tess", connect_body(account))
    await run_worker(sim_rt, max_seconds=120)
    await sim.call("PUT", "/_sim/faults", json={})
    counters = await sim.counters(account["counter_key"])
    status = await status_of(live_api, "tess")
    assert status["status"] == "connected", status
    assert counters["token_refreshes"] >= 2
    await assert_converged(sim, sim_rt, email, mailbox_id)


async def test_revoked_grant_parks_mailbox(sim: Sim, live_api: LiveApi, sim_rt: Runtime) -> None:
    account = await new_account(sim, 50)
    await sim.call(
        "POST", f"/_sim/microsoft/accounts/{account['email']}/revoke", json={"access_tokens": True}
    )
    await connect_via_api(live_api, "rita", connect_body(account))
    await run_worker(sim_rt)
    status = await status_of(live_api, "rita")
    assert status["status"] == "auth_expired"
    assert "AADSTS" in status["last_error"]


async def test_throttling_is_honoured(sim: Sim, live_api: LiveApi, sim_rt: Runtime) -> None:
    account = await new_account(sim, 3000)
    await sim.call(
        "PUT",
        "/_sim/faults",
        json={
            "throttle_rate": 0.2,
            "retry_after_seconds": 1.0,
            # Requests the worker sent before it read a 429 may arrive late on a busy machine.
            "retry_after_grace_ms": 300,
            "latency_ms": 20,
            "seed": 7,
        },
    )
    await sim.call("POST", "/_sim/counters/reset")
    mailbox_id = await connect_via_api(live_api, "theo", connect_body(account))
    await run_worker(sim_rt, max_seconds=180)
    counters = await sim.counters(account["counter_key"])
    await sim.call("PUT", "/_sim/faults", json={})
    assert counters["throttled"] > 0
    assert counters["retry_after_violations"] == 0
    assert counters["concurrency_peak"] <= 4
    assert (await status_of(live_api, "theo"))["status"] == "connected"
    await assert_converged(sim, sim_rt, account["email"], mailbox_id)


async def test_subscription_renewal_and_recreation(
    sim: Sim, live_api: LiveApi, sim_rt: Runtime
) -> None:
    account = await new_account(sim, 20)
    mailbox_id = uuid.UUID(await connect_via_api(live_api, "sam", connect_body(account)))
    await run_worker(sim_rt)

    def mine(subs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [s for s in subs if s["userId"] == account["user_id"]]

    [first] = mine(await sim.call("GET", "/_sim/microsoft/subscriptions"))
    # Half the granted lifetime has passed: the renewal cron extends it in place.
    async with sim_rt.sessions() as session, session.begin():
        await session.execute(
            text(
                "UPDATE subscriptions SET renewed_at = now() - (expires_at - now()) * 2 WHERE mailbox_id = :id"
            ),
            {"id": mailbox_id},
        )
    assert (await renew_subscriptions({"rt": sim_rt}))["renew"] == 1
    await run_worker(sim_rt)
    [renewed] = mine(await sim.call("GET", "/_sim/microsoft/subscriptions"))
    assert (
        renewed["id"] == first["id"]
        and renewed["expirationDateTime"] >= first["expirationDateTime"]
    )

    # Graph dropped it: renewal finds it gone and creates a new one.
    await sim.call("DELETE", f"/_sim/microsoft/subscriptions/{first['id']}")
    async with sim_rt.sessions() as session, session.begin():
        await session.execute(
            text(
                "UPDATE subscriptions SET renewed_at = now() - interval '2 days' WHERE mailbox_id = :id"
            ),
            {"id": mailbox_id},
        )
    await renew_subscriptions({"rt": sim_rt})
    await run_worker(sim_rt)
    [recreated] = mine(await sim.call("GET", "/_sim/microsoft/subscriptions"))
    assert recreated["id"] != first["id"]


async def test_app_only_mailbox_syncs_through_users_endpoint(
    sim: Sim, live_api: LiveApi, sim_rt: Runtime
) -> None:
    account = await new_account(sim, 300, app_only_granted=True)
    body = {
        "provider": "microsoft",
        "auth": "application",
        "tenant_id": account["tenant_id"],
        "user_id": account["user_id"],
    }
    # Operators only, and only for tenants this deployment lists.
    live_api.settings.microsoft_app_only_tenants = account["tenant_id"]
    mailbox_id = await connect_via_api(live_api, "admin", body, roles=["mailsync.operator"])
    await run_worker(sim_rt)
    status = await status_of(live_api, "admin")
    assert status["status"] == "connected", status
    await assert_converged(sim, sim_rt, account["email"], mailbox_id)
