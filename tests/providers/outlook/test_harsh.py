"""OutlookProvider where Microsoft is harsh: AADSTS descriptions as Entra writes them,
subscription validations that time out, lifecycle notifications in Exchange's shape,
MailboxConcurrency refusals without Retry-After and requests abandoned mid-flight."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from app.providers.base import StreamGoneError, StreamInfo, SyncContext, TransientError
from app.providers.outlook.aadsts import explain
from app.providers.outlook.notifications import parse_notifications
from app.simulator.server import SimulatorServer
from app.sync.ratelimit import RedisRateGate
from app.sync.runtime import Runtime
from tests.providers.outlook.conftest import Mailbox
from tests.providers.outlook.support import (
    NotificationReceiver,
    counters,
    create_account,
    eventually,
    faults,
)

Connect = Callable[..., Mailbox]

_ENTRA = (
    "AADSTS700082: The refresh token has expired due to inactivity. The token was issued on "
    "2026-08-01T10:40:41.8123456Z and was inactive for 90.00:00:00.\r\n"
    "Trace ID: 0c5b2a8e-1f0e-4c39-9a5e-3a2f5b6b0d00\r\n"
    "Correlation ID: 7d0f3b1e-52a3-4c8f-8d8e-9b8f7e6d5c4b\r\n"
    "Timestamp: 2026-11-30 12:35:43Z"
)


@pytest.mark.parametrize(
    ("error", "description", "codes", "expected"),
    [
        (
            "invalid_grant",
            _ENTRA,
            [700082],
            "Microsoft refused the token request (AADSTS700082): The refresh token has expired "
            "due to inactivity. Reconnect the mailbox (sign in to Microsoft again).",
        ),
        (
            "invalid_client",
            "AADSTS7000222: The provided client secret keys for app 'abc' are expired. Visit "
            "the Azure portal to create new keys for your app.\r\nTrace ID: x\r\n"
            "Correlation ID: y\r\nTimestamp: 2026-11-30 12:35:43Z",
            None,
            "Microsoft refused the token request (AADSTS7000222): The provided client secret "
            "keys for app 'abc' are expired. An operator must fix mailsync's Microsoft app "
            "registration (MICROSOFT_CLIENT_SECRET has expired).",
        ),
        (
            "interaction_required",
            "AADSTS53003: Access has been blocked by Conditional Access policies. The access "
            "policy does not allow token issuance.\r\nTrace ID: a\r\nCorrelation ID: b\r\n"
            "Timestamp: 2026-11-30 12:35:43Z",
            [53003],
            "Microsoft refused the token request (AADSTS53003): Access has been blocked by "
            "Conditional Access policies. Blocked by a Conditional Access policy; ask your "
            "administrator.",
        ),
        ("server_error", "", None, "Microsoft refused the token request (server_error). "
         "Microsoft's sign-in service failed; retrying."),
    ],
)  # fmt: skip
def test_aadsts_descriptions_become_one_clean_line(
    error: str, description: str, codes: Any, expected: str
) -> None:
    line = explain(error, description, codes)
    assert line == expected
    assert "\r" not in line and "\n" not in line
    assert "Trace ID" not in line and "Correlation ID" not in line


async def test_a_validation_that_timed_out_is_transient(
    client: httpx.AsyncClient, connect: Connect, receiver: NotificationReceiver
) -> None:
    sim_account = await create_account(client, message_count=5)
    mailbox = connect(sim_account)
    before = (await client.get("/_sim/microsoft/settings")).json()
    receiver.validation_delay = 0.6
    try:
        await client.put("/_sim/microsoft/settings", json={"validation_timeout_seconds": 0.2})
        with pytest.raises(TransientError, match="timed out"):
            await mailbox.provider.subscribe(mailbox.ctx)
        # Our endpoint warms up: the next attempt works; renewals validate again now and then.
        receiver.validation_delay = 0.0
        subscription = await mailbox.provider.subscribe(mailbox.ctx)
        assert subscription is not None
        await client.put("/_sim/microsoft/settings", json={"revalidate_on_renew": True})
        receiver.validation_delay = 0.6
        with pytest.raises(TransientError, match="timed out"):
            await mailbox.provider.renew(mailbox.ctx, subscription)
    finally:
        receiver.validation_delay = 0.0
        await client.put("/_sim/microsoft/settings", json=before)


async def test_lifecycle_notifications_in_exchanges_current_shape(
    client: httpx.AsyncClient, connect: Connect, receiver: NotificationReceiver
) -> None:
    sim_account = await create_account(client, message_count=5)
    mailbox = connect(sim_account)
    subscription = await mailbox.provider.subscribe(mailbox.ctx)
    assert subscription is not None
    response = await client.post(
        f"/_sim/microsoft/subscriptions/{subscription.subscription_id}/lifecycle",
        json={"event": "missed"},
    )
    assert response.status_code == 202

    def delivered() -> list[dict[str, Any]]:
        return [n for n in receiver.notifications if n.get("lifecycleEvent") == "missed"]

    [raw] = await eventually(delivered)
    assert "tenantId" not in raw and raw["organizationId"] == sim_account["tenant_id"]
    [parsed] = parse_notifications(json.dumps({"value": [raw]}).encode())
    assert parsed.lifecycle_event == "missed"
    assert parsed.tenant_id == sim_account["tenant_id"]
    assert parsed.subscription_id == subscription.subscription_id


def _redis_ctx(mailbox: Mailbox, gate: RedisRateGate) -> SyncContext:
    return SyncContext(account=mailbox.account, access_token=mailbox.token, gate=gate)


async def _folders(mailbox: Mailbox, ctx: SyncContext) -> list[StreamInfo]:
    return sorted(await mailbox.provider.list_streams(ctx), key=lambda s: -(s.total_estimate or 0))


async def test_concurrency_refusals_without_retry_after_tighten_the_gate(
    client: httpx.AsyncClient,
    connect: Connect,
    rt: Runtime,
    simulator: SimulatorServer,
) -> None:
    sim_account = await create_account(client, message_count=400)
    mailbox = connect(sim_account)
    gate = RedisRateGate(rt.redis, "tighten-test", mailbox.provider.limits())
    ctx = _redis_ctx(mailbox, gate)
    streams = await _folders(mailbox, ctx)
    token = {"Authorization": f"Bearer {sim_account['access_token']}"}

    async def another_client(stop: asyncio.Event) -> None:
        # Outlook on the user's phone: two requests of its own in flight all the time.
        async def one() -> None:
            while not stop.is_set():
                await client.get("/v1.0/me/mailFolders/inbox", headers=token)

        await asyncio.gather(one(), one())

    async with faults(client, latency_ms=150):
        stop = asyncio.Event()
        other = asyncio.create_task(another_client(stop))
        await eventually(
            lambda: counters(simulator, sim_account["counter_key"]).get("in_flight", 0) >= 2
        )
        try:
            pages = await asyncio.gather(
                *(mailbox.provider.fetch_page(ctx, s, None) for s in streams[:6])
            )
        finally:
            stop.set()
            await other
    assert all(p.upserts or p.caught_up for p in pages)
    assert counters(simulator, sim_account["counter_key"])["throttled"] > 0
    # Refused although within our four: the mailbox now gets fewer at once from us.
    limit = await gate.concurrency_limit()
    assert limit is not None and limit < 4


async def test_an_abandoned_request_keeps_its_slot_until_graph_is_done(
    client: httpx.AsyncClient,
    connect: Connect,
    rt: Runtime,
    simulator: SimulatorServer,
) -> None:
    sim_account = await create_account(client, message_count=400)
    mailbox = connect(sim_account)
    key = sim_account["counter_key"]
    gate = RedisRateGate(rt.redis, "abandon-test", mailbox.provider.limits())
    ctx = _redis_ctx(mailbox, gate)
    streams = await _folders(mailbox, ctx)
    async with faults(client, latency_ms=500):
        # Prefetches of four folders, then the slice ends and cancels them mid-flight.
        first = [
            asyncio.create_task(mailbox.provider.fetch_page(ctx, s, None)) for s in streams[:4]
        ]
        await eventually(lambda: counters(simulator, key).get("in_flight") == 4, interval=0.005)
        for task in first:
            task.cancel()
        await asyncio.gather(*first, return_exceptions=True)
        assert await rt.redis.zcard("gate:abandon-test:slots") == 4
        # The next slice starts at once: its requests wait for Graph to finish the old ones.
        pages = await asyncio.gather(
            *(mailbox.provider.fetch_page(ctx, s, None) for s in streams[4:8])
        )
    seen = counters(simulator, key)
    assert seen["throttled"] == 0
    assert seen["concurrency_peak"] <= 4
    assert len(pages) == 4
    # The abandoned requests were seen through: their slots went back when Graph answered,
    # not after the request timeout (30 s) a crashed worker's slots are kept for.
    assert await rt.redis.zcard("gate:abandon-test:slots") == 0
    assert not mailbox.provider._graph._abandoned


async def test_a_worker_that_stops_mid_request_leaves_its_slots_taken(
    client: httpx.AsyncClient,
    connect: Connect,
    rt: Runtime,
    simulator: SimulatorServer,
) -> None:
    sim_account = await create_account(client, message_count=400)
    mailbox = connect(sim_account)
    key = sim_account["counter_key"]
    limits = mailbox.provider.limits()
    # Graph takes 0.8 s per request; our requests time out after 1 s.
    old_worker = RedisRateGate(rt.redis, "restart-test", limits, request_timeout_seconds=1.0)
    ctx = _redis_ctx(mailbox, old_worker)
    streams = await _folders(mailbox, ctx)
    async with faults(client, latency_ms=800):
        doomed = [
            asyncio.create_task(mailbox.provider.fetch_page(ctx, s, None)) for s in streams[:4]
        ]
        await eventually(lambda: counters(simulator, key).get("in_flight") == 4, interval=0.005)
        # The worker shuts down: every task it had is cancelled, the ones finishing
        # abandoned requests in the background too.
        for task in doomed:
            task.cancel()
        await asyncio.gather(*doomed, return_exceptions=True)
        assert len(mailbox.provider._graph._abandoned) == 4
        # What the worker's shutdown does (`aclose`), with no time left to see them through.
        await mailbox.provider._graph.abandon(grace=0.0)
        assert await rt.redis.zcard("gate:restart-test:slots") == 4
        # A new worker takes over the mailbox at once.
        new_worker = RedisRateGate(rt.redis, "restart-test", limits, request_timeout_seconds=1.0)
        pages = await asyncio.gather(
            *(
                mailbox.provider.fetch_page(_redis_ctx(mailbox, new_worker), s, None)
                for s in streams[4:8]
            )
        )
    seen = counters(simulator, key)
    assert seen["throttled"] == 0 and seen["concurrency_peak"] <= 4
    assert len(pages) == 4


async def _sim(client: httpx.AsyncClient, method: str, path: str, **kwargs: Any) -> Any:
    response = await client.request(method, f"/_sim/microsoft/accounts{path}", **kwargs)
    assert response.status_code < 300, response.text
    return response.json()


async def test_folder_changes_reach_the_streams_with_unambiguous_labels(
    client: httpx.AsyncClient, connect: Connect
) -> None:
    sim_account = await create_account(client, message_count=200)
    user = sim_account["user_id"]
    mailbox = connect(sim_account)
    before = {s.name: s for s in await mailbox.provider.list_streams(mailbox.ctx)}
    # Two folders of the same name in different places, and a name with a slash.
    for parent in ("archive", before["Projects"].key):
        await _sim(
            client, "POST", f"/{user}/folders", json={"display_name": "2024", "parent": parent}
        )
    await _sim(client, "POST", f"/{user}/folders", json={"display_name": "a/b", "parent": "inbox"})
    await _sim(
        client, "PATCH", f"/{user}/folders/{before['Team'].key}", json={"display_name": "Crew"}
    )
    await _sim(
        client,
        "PATCH",
        f"/{user}/folders/{before['Projects'].key}",
        json={"parent": "deleteditems"},
    )
    await _sim(client, "DELETE", f"/{user}/folders/{before['Receipts'].key}")

    after = await mailbox.provider.list_streams(mailbox.ctx)
    labels = sorted(label for s in after for label in s.labels)
    assert "ARCHIVE/2024" in labels and "TRASH/Projects/2024" in labels
    assert "INBOX/a\\/b" in labels
    # Renaming Team renames its child's label too; moving Projects moves its children's.
    assert "INBOX/Crew" in labels and "INBOX/Crew/Leads" in labels
    assert "TRASH/Projects" in labels
    assert before["Receipts"].key not in {s.key for s in after}
    assert len(labels) == len(set(labels))


async def test_a_folder_deleted_mid_round_is_a_stream_gone(
    client: httpx.AsyncClient, connect: Connect
) -> None:
    sim_account = await create_account(client, message_count=50)
    user = sim_account["user_id"]
    mailbox = connect(sim_account)
    folder = await _sim(client, "POST", f"/{user}/folders", json={"display_name": "Big"})
    await _sim(client, "POST", f"/{user}/messages", json={"folder": folder["id"], "count": 1500})
    stream = next(
        s for s in await mailbox.provider.list_streams(mailbox.ctx) if s.key == folder["id"]
    )
    first = await mailbox.provider.fetch_page(mailbox.ctx, stream, None)
    assert len(first.upserts) == 1000 and not first.caught_up
    await _sim(client, "DELETE", f"/{user}/folders/{folder['id']}")
    with pytest.raises(StreamGoneError, match="ErrorSyncFolderNotFound"):
        await mailbox.provider.fetch_page(mailbox.ctx, stream, first.cursor)


async def test_a_worker_stopping_gracefully_sees_abandoned_requests_through(
    client: httpx.AsyncClient, connect: Connect, rt: Runtime, simulator: SimulatorServer
) -> None:
    sim_account = await create_account(client, message_count=100)
    mailbox = connect(sim_account)
    gate = RedisRateGate(rt.redis, "graceful-test", mailbox.provider.limits())
    ctx = _redis_ctx(mailbox, gate)
    streams = await _folders(mailbox, ctx)
    key = sim_account["counter_key"]
    async with faults(client, latency_ms=300):
        tasks = [
            asyncio.create_task(mailbox.provider.fetch_page(ctx, s, None)) for s in streams[:3]
        ]
        await eventually(lambda: counters(simulator, key).get("in_flight") == 3, interval=0.005)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await mailbox.provider.aclose()
    # Graph answered them within the grace: their slots went back, nothing is held.
    assert not mailbox.provider._graph._abandoned
    assert await rt.redis.zcard("gate:graceful-test:slots") == 0
