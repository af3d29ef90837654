"""The completion monitor, consent withdrawal and shared Gmail addresses through the whole
service: API → queue → engine and monitor → the simulator → PostgreSQL."""

from __future__ import annotations

import math
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from sqlalchemy import text

from app.db.repositories.monitor import MonitorRepository
from app.db.repositories.outbox import OutboxRepository
from app.simulator.server import SimulatorServer
from app.sync.jobs import renew_subscriptions
from app.sync.monitor import CompletionMonitor
from app.sync.monitor import Outcome as Check
from app.sync.queue import enqueue_sync
from app.sync.runtime import Runtime
from tests.conftest import LiveApi, bearer, run_worker
from tests.e2e import test_gmail as gmail
from tests.e2e import test_outlook as outlook
from tests.e2e.support import (
    Sim,
    connect_via_api,
    gmail_sim_session,
    status_of,
    wait_for_notifications,
)


@pytest.fixture
async def sim(simulator: SimulatorServer, live_api: LiveApi) -> AsyncIterator[Sim]:
    async with gmail_sim_session(simulator, live_api) as client:
        yield client


@pytest.fixture
def worker_rt(sim_rt: Runtime) -> Runtime:
    sim_rt.settings = sim_rt.settings.model_copy(update={"gmail_quota_units_per_second": 0})
    return sim_rt


async def _sql(rt: Runtime, sql: str, **params: Any) -> Any:
    async with rt.sessions() as session, session.begin():
        return await session.execute(text(sql), params)


async def _check(rt: Runtime, mailbox_id: str) -> Check:
    """The mailbox's next check has come, and the monitor runs it."""
    mid = uuid.UUID(mailbox_id)
    await _sql(
        rt,
        "UPDATE mailboxes SET next_verify_at = now() - interval '1 second' WHERE id = :id",
        id=mid,
    )
    return await CompletionMonitor(rt, "monitor").verify(mid)


async def _repairs(rt: Runtime, mailbox_id: str) -> list[dict[str, Any]]:
    async with rt.sessions() as session:
        return await MonitorRepository(session).repairs_for(uuid.UUID(mailbox_id))


async def _generations(rt: Runtime, mailbox_id: str) -> dict[str, int]:
    rows = await _sql(
        rt,
        "SELECT stream_key, generation FROM sync_cursors WHERE mailbox_id = :id",
        id=uuid.UUID(mailbox_id),
    )
    return {r[0]: int(r[1]) for r in rows.all()}


async def _lose_and_invent(
    rt: Runtime, mailbox_id: str, lose: int, stream_key: str, ghost: str
) -> set[str]:
    """Behind mailsync's back: `lose` stored rows vanish (spread over the mailbox), and a row
    the provider never had appears in `stream_key`. Returns the streams that lost rows."""
    mid = uuid.UUID(mailbox_id)
    rows = await _sql(
        rt,
        "DELETE FROM messages WHERE mailbox_id = :id AND provider_message_id IN ("
        " SELECT provider_message_id FROM messages WHERE mailbox_id = :id"
        " ORDER BY md5(provider_message_id) LIMIT :n) RETURNING stream_key",
        id=mid,
        n=lose,
    )
    lost_from = {r[0] for r in rows.all()}
    await _sql(
        rt,
        "INSERT INTO messages (mailbox_id, provider_message_id, stream_key, generation, subject, "
        "to_addresses, cc_addresses, bcc_addresses, labels, is_read, has_attachments) "
        "VALUES (:id, :ghost, :stream, 1, 'never sent', '{}', '{}', '{}', '{INBOX}', true, false)",
        id=mid,
        ghost=ghost,
        stream=stream_key,
    )
    return lost_from


async def _methods(sim: Sim, account: str) -> dict[str, int]:
    return dict((await sim.counters(account)).get("methods", {}))


# -- Microsoft 365 ---------------------------------------------------------------------


async def test_outlook_lost_and_foreign_rows_are_repaired_in_their_folders(
    sim: Sim, live_api: LiveApi, worker_rt: Runtime
) -> None:
    rt = worker_rt
    account = await outlook.new_account(sim, 400)
    email = account["email"]
    mailbox_id = await connect_via_api(live_api, "olga", outlook.connect_body(account))
    await run_worker(rt)
    assert (await status_of(live_api, "olga"))["status"] == "connected"
    inbox = (
        await _sql(
            rt,
            "SELECT stream_key FROM sync_cursors WHERE mailbox_id = :id AND 'INBOX' = ANY(labels)",
            id=uuid.UUID(mailbox_id),
        )
    ).scalar_one()
    before = await _generations(rt, mailbox_id)
    lost_from = await _lose_and_invent(rt, mailbox_id, 20, inbox, "AAMkAGhvc3Q=")

    assert await _check(rt, mailbox_id) is Check.SUSPECT
    await run_worker(rt)  # the pass it asked for: nothing was in flight
    assert await _check(rt, mailbox_id) is Check.REPAIRING
    after = await _generations(rt, mailbox_id)
    restarted = {key for key in after if after[key] != before[key]}
    # Only the folders that differ are enumerated again.
    assert restarted == lost_from | {inbox}
    assert len(restarted) < len(after)
    status = await status_of(live_api, "olga")
    assert status["phase"] == "resync" and not status["in_sync"]
    assert status["progress"]["percent"] < 100
    await run_worker(rt)
    await outlook.assert_converged(sim, rt, email, mailbox_id)
    assert await _check(rt, mailbox_id) is Check.VERIFIED

    repairs = await _repairs(rt, mailbox_id)
    assert {r["scope_key"] for r in repairs} == restarted
    for repair in repairs:
        assert (repair["method"], repair["state"]) == ("restart", "done")
        assert repair["provider_total_after"] == repair["stored_total_after"]
        assert repair["provider_total"] != repair["stored_total_before"]
    assert sum(r["provider_total"] - r["stored_total_before"] for r in repairs) == 20 - 1
    status = await status_of(live_api, "olga")
    assert status["in_sync"] and status["last_verified_at"] is not None
    assert status["push"] == "active"


async def test_app_only_consent_withdrawn_parks_the_mailbox(
    sim: Sim, live_api: LiveApi, worker_rt: Runtime
) -> None:
    rt = worker_rt
    account = await outlook.new_account(sim, 50)
    tenant = account["tenant_id"]
    live_api.settings.microsoft_app_only_tenants = tenant
    body = {
        "provider": "microsoft",
        "auth": "application",
        "tenant_id": tenant,
        "user_id": account["user_id"],
    }
    mailbox_id = await connect_via_api(live_api, "ops", body, roles=["mailsync.operator"])
    await run_worker(rt)
    assert (await status_of(live_api, "ops"))["status"] == "connected"

    # The tenant's admin withdraws consent. The token already issued keeps its role until
    # it expires (Entra writes roles into a token when it issues it): mail still syncs.
    await sim.call("PUT", f"/_sim/microsoft/tenants/{tenant}/consent", json={"granted": False})
    await sim.call(
        "POST", f"/_sim/microsoft/accounts/{account['email']}/messages", json={"count": 2}
    )
    await enqueue_sync(rt.redis, mailbox_id, suffix="after-withdrawal")
    await run_worker(rt)
    status = await status_of(live_api, "ops")
    assert status["status"] == "connected" and status["progress"]["messages_synced"] == 52

    # Once it expires, a fresh client-credentials token carries no role: Graph answers
    # 403 to it too, and the mailbox waits for an administrator, not for retries.
    await sim.call("POST", f"/_sim/microsoft/tenants/{tenant}/app-tokens/expire")
    await enqueue_sync(rt.redis, mailbox_id, suffix="after-expiry")
    await run_worker(rt)
    status = await status_of(live_api, "ops")
    assert status["status"] == "auth_expired", status
    assert (
        "admin consent" in status["last_error"] and "403 ErrorAccessDenied" in status["last_error"]
    )
    async with rt.sessions() as session:
        events = await OutboxRepository(session).for_mailbox(uuid.UUID(mailbox_id))
    [expired] = [e["payload"] for e in events if e["kind"] == "mailbox.auth_expired"]
    assert "admin consent" in expired["last_error"]
    # Parked: nothing retries it.
    row = (
        await _sql(
            rt, "SELECT next_sync_at FROM mailboxes WHERE id = :id", id=uuid.UUID(mailbox_id)
        )
    ).one()
    assert row[0] is None

    # Consent granted again and the mailbox reconnected: it syncs.
    await sim.call("PUT", f"/_sim/microsoft/tenants/{tenant}/consent", json={"granted": True})
    await connect_via_api(live_api, "ops", body, roles=["mailsync.operator"])
    await run_worker(rt)
    assert (await status_of(live_api, "ops"))["status"] == "connected"


# -- Gmail -------------------------------------------------------------------------------


async def test_gmail_lost_and_foreign_rows_are_repaired_by_listing(
    sim: Sim, live_api: LiveApi, worker_rt: Runtime
) -> None:
    rt = worker_rt
    account = await gmail.new_account(sim, 600)
    counter = f"google:{account['email']}"
    mailbox_id = await connect_via_api(live_api, "gail", gmail.connect_body(account))
    await run_worker(rt)
    await _lose_and_invent(rt, mailbox_id, 30, "mailbox", "00000000deadbeef")

    assert await _check(rt, mailbox_id) is Check.SUSPECT
    await run_worker(rt)
    await sim.call("POST", "/_sim/counters/reset")
    assert await _check(rt, mailbox_id) is Check.REPAIRING
    methods = await _methods(sim, counter)
    # The ids of the mailbox listed (600, 500 a page), and only the 30 missing fetched:
    # no history, no page of the full sync again, no label listed on its own (the labels
    # differed only by those messages).
    assert methods["users.messages.list"] == 2
    assert methods["users.messages.get"] == 30
    assert set(methods) == {
        "users.getProfile", "users.labels.list", "users.labels.get", "users.messages.list",
        "users.messages.get",
    }  # fmt: skip
    assert await _generations(rt, mailbox_id) == {"mailbox": 1}
    await gmail.assert_converged(sim, rt, account, mailbox_id)
    assert await _check(rt, mailbox_id) is Check.VERIFIED
    [repair] = await _repairs(rt, mailbox_id)
    assert (repair["scope_kind"], repair["scope_key"], repair["method"]) == (
        "stream", "mailbox", "list",
    )  # fmt: skip
    assert (repair["fetched"], repair["removed"]) == (30, 1)
    assert (repair["provider_total"], repair["stored_total_before"]) == (600, 571)
    assert repair["provider_total_after"] == repair["stored_total_after"] == 600
    assert (await status_of(live_api, "gail"))["in_sync"]


async def test_gmail_label_drift_is_repaired_with_list_calls_only(
    sim: Sim, live_api: LiveApi, worker_rt: Runtime
) -> None:
    rt = worker_rt
    account = await gmail.new_account(sim, 700)
    counter = f"google:{account['email']}"
    mailbox_id = await connect_via_api(live_api, "lena", gmail.connect_body(account))
    await run_worker(rt)
    mid = uuid.UUID(mailbox_id)
    names = await gmail.label_names(sim, account)
    drifted = names["Label_2"]
    # A user label loses 4 messages and gains 3 it never had; 2 unread messages read.
    await _sql(
        rt,
        "UPDATE messages SET labels = array_remove(labels, :label) WHERE mailbox_id = :id "
        "AND provider_message_id IN (SELECT provider_message_id FROM messages WHERE "
        "mailbox_id = :id AND :label = ANY(labels) ORDER BY provider_message_id LIMIT 4)",
        id=mid,
        label=drifted,
    )
    await _sql(
        rt,
        "UPDATE messages SET labels = labels || CAST(ARRAY[:label] AS text[]) WHERE mailbox_id = :id "
        "AND provider_message_id IN (SELECT provider_message_id FROM messages WHERE "
        "mailbox_id = :id AND NOT :label = ANY(labels) ORDER BY provider_message_id DESC LIMIT 3)",
        id=mid,
        label=drifted,
    )
    await _sql(
        rt,
        "UPDATE messages SET labels = array_remove(labels, 'UNREAD'), is_read = true "
        "WHERE mailbox_id = :id AND provider_message_id IN (SELECT provider_message_id FROM "
        "messages WHERE mailbox_id = :id AND NOT is_read ORDER BY provider_message_id LIMIT 2)",
        id=mid,
    )
    sizes = {
        label: int(count)
        for label, count in (
            await _sql(
                rt,
                "SELECT l, count(*) FROM messages, unnest(labels) AS l WHERE mailbox_id = :id "
                "GROUP BY l",
                id=mid,
            )
        ).all()
    }

    assert await _check(rt, mailbox_id) is Check.SUSPECT
    await run_worker(rt)
    await sim.call("POST", "/_sim/counters/reset")
    assert await _check(rt, mailbox_id) is Check.REPAIRING
    methods = await _methods(sim, counter)
    assert "users.messages.get" not in methods and "users.history.list" not in methods
    assert set(methods) == {
        "users.getProfile", "users.labels.list", "users.labels.get", "users.messages.list",
    }  # fmt: skip
    repairs = {r["scope_key"]: r for r in await _repairs(rt, mailbox_id)}
    listed = sum(math.ceil(max(repairs[label]["provider_total"], 1) / 500) for label in repairs)
    # The labels whose unread count drifted list their unread members too.
    listed += sum(
        math.ceil(max(r["provider_unread"] or 0, 1) / 500)
        for r in repairs.values()
        if r["provider_unread"] != r["stored_unread_before"]
    )
    assert methods["users.messages.list"] == listed
    assert drifted in repairs
    assert repairs[drifted]["stored_total_before"] == sizes[drifted]
    assert repairs[drifted]["provider_total"] == sizes[drifted] + 4 - 3
    await gmail.assert_converged(sim, rt, account, mailbox_id)
    assert await _check(rt, mailbox_id) is Check.VERIFIED
    for repair in await _repairs(rt, mailbox_id):
        assert (repair["method"], repair["state"], repair["fetched"]) == ("list", "done", 0)
        assert repair["provider_total_after"] == repair["stored_total_after"]
        assert repair["provider_unread_after"] == repair["stored_unread_after"]


async def test_two_users_on_one_gmail_address(
    sim: Sim, live_api: LiveApi, worker_rt: Runtime
) -> None:
    rt = worker_rt
    account = await gmail.new_account(sim, 30)
    email = account["email"]
    first = await connect_via_api(live_api, "ann", gmail.connect_body(account))
    second = await connect_via_api(live_api, "ben", gmail.connect_body(account))
    await run_worker(rt)
    channels = (
        await _sql(
            rt,
            "SELECT mailbox_id, subscription_id, channel FROM subscriptions WHERE status = 'active' "
            "AND mailbox_id = ANY(:ids)",
            ids=[uuid.UUID(first), uuid.UUID(second)],
        )
    ).all()
    # Each mailbox keeps its own bookkeeping of the one watch Google keeps for the address.
    assert len(channels) == 2 and len({c[1] for c in channels}) == 2
    assert {c[2] for c in channels} == {f"gmail-watch:{email}"}
    assert (await renew_subscriptions({"rt": rt}))["create"] == 0

    async with httpx.AsyncClient(base_url=live_api.base_url) as client:
        response = await client.post(
            "/mail/disconnect", json={"mailbox_id": first}, headers=bearer("ann")
        )
    assert response.status_code == 200
    await run_worker(rt)  # the cleanup job: ann's credentials and bookkeeping go
    assert (await sim.call("GET", f"/_sim/google/accounts/{email}"))["watch"] is not None
    remaining = (
        await _sql(rt, "SELECT mailbox_id FROM subscriptions WHERE status = 'active'")
    ).all()
    assert [str(r[0]) for r in remaining] == [second]
    # Nothing re-watches: ben's channel is there, ann is gone.
    assert await renew_subscriptions({"rt": rt}) == {"renew": 0, "create": 0}

    await sim.call("POST", f"/_sim/google/accounts/{email}/messages", json={"count": 3})
    await wait_for_notifications(rt, second, "push")
    await run_worker(rt)
    assert (await status_of(live_api, "ben"))["progress"]["messages_synced"] == 33
    assert (await status_of(live_api, "ann"))["status"] == "disconnected"

    # The last mailbox of the address leaves: now the watch is stopped.
    async with httpx.AsyncClient(base_url=live_api.base_url) as client:
        await client.post("/mail/disconnect", json={"mailbox_id": second}, headers=bearer("ben"))
    await run_worker(rt)
    assert (await sim.call("GET", f"/_sim/google/accounts/{email}"))["watch"] is None
