"""The webhook audit log: every request's outcome, duplicates that owe nothing, group commit,
and a flood of forged requests that leaves a bounded number of rows."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import text

from app.config import Settings
from app.main import create_app
from app.sync.runtime import Runtime
from app.sync.webhook_intake import WebhookIntake
from tests.api.webhook_support import asgi_post, change, graph_mailbox, log_rows, queued


@pytest.fixture
async def app(settings: Settings, rt: Runtime) -> AsyncIterator[FastAPI]:
    application = create_app(settings)
    async with application.router.lifespan_context(application):
        yield application


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app, client=("203.0.113.7", 4711))
    async with httpx.AsyncClient(transport=transport, base_url="http://mailsync.test") as c:
        yield c


async def _post(client: httpx.AsyncClient, *items: dict[str, Any]) -> httpx.Response:
    return await client.post("/webhooks/microsoft", content=json.dumps({"value": list(items)}))


async def _pending(rt: Runtime, mailbox_id: Any) -> Any:
    async with rt.sessions() as session:
        return (
            await session.execute(
                text("SELECT pending_since FROM mailboxes WHERE id = :id"), {"id": mailbox_id}
            )
        ).scalar_one()


async def test_every_outcome_is_recorded_without_secrets(
    app: FastAPI, client: httpx.AsyncClient, rt: Runtime
) -> None:
    sub = await graph_mailbox(rt)
    token = "Validation: Testing client application reachability for subscription Request-Id: 7"
    assert (
        await client.post("/webhooks/microsoft", params={"validationToken": token})
    ).text == token
    assert (await _post(client, change(sub))).status_code == 202
    assert (await _post(client, change(sub))).status_code == 202
    forged = change(sub, client_state="not-the-secret", message_id="AAMkForged")
    unknown = {**change(sub, message_id="AAMkUnknown"), "subscriptionId": "no-such-subscription"}
    assert (await _post(client, forged, unknown)).status_code == 202
    assert (await client.post("/webhooks/microsoft", content=b'{"value": 3}')).status_code == 400
    lifecycle = {
        "subscriptionId": sub.subscription_id,
        "clientState": sub.client_state,
        "lifecycleEvent": "missed",
        "organizationId": "84bd8158-6d4d-4958-8b9f-9d6445542f95",
    }
    assert (await _post(client, lifecycle)).status_code == 202
    await app.state.webhook_intake.settle()

    rows = await log_rows(rt)
    # Requests are written by a few writers at once: compare without order.
    assert sorted((r["outcome"], r["kind"], r["http_status"]) for r in rows) == sorted(
        [
            ("validation", "validation", 200),
            ("accepted", "change:created", 202),
            ("duplicate", "change:created", 202),
            ("forged_client_state", "change:created", 202),
            ("unknown_subscription", "change:created", 202),
            ("malformed", "request", 400),
            ("lifecycle", "lifecycle:missed", 202),
        ]
    )
    by_outcome = {r["outcome"]: r for r in rows}
    assert by_outcome["accepted"]["mailbox_id"] == sub.mailbox_id
    assert by_outcome["accepted"]["subscription_id"] == sub.subscription_id
    assert by_outcome["accepted"]["payload"]["resource_id"] == "AAMkAGI2"
    assert by_outcome["forged_client_state"]["mailbox_id"] == sub.mailbox_id
    assert by_outcome["unknown_subscription"]["mailbox_id"] is None
    assert by_outcome["lifecycle"]["payload"]["tenant_id"] == "84bd8158-6d4d-4958-8b9f-9d6445542f95"
    assert "'value'" in by_outcome["malformed"]["detail"]
    for row in rows:
        assert row["source"] == "203.0.113.7"
        assert row["handling_ms"] is not None and row["handling_ms"] >= 0
        assert row["received_at"] is not None
        dumped = json.dumps({k: str(v) for k, v in row.items()})
        assert sub.client_state not in dumped
        assert "not-the-secret" not in dumped
        assert "Request-Id" not in dumped
    assert await queued(rt) == [f"sync:{sub.mailbox_id}"]


async def test_a_duplicate_owes_nothing_until_a_pass_has_started(
    client: httpx.AsyncClient, rt: Runtime
) -> None:
    sub = await graph_mailbox(rt)
    async with rt.engine.begin() as conn:  # connect's own pending change is applied
        await conn.execute(text("UPDATE mailboxes SET pending_since = NULL"))
    await _post(client, change(sub))
    first_pending = await _pending(rt, sub.mailbox_id)
    assert first_pending is not None
    await _post(client, change(sub))
    # Another update of the same message (a new etag) is a change of its own.
    await _post(client, change(sub, etag='W/"CQAAABYAAAB"'))
    assert [r["outcome"] for r in await log_rows(rt)] == ["accepted", "duplicate", "accepted"]

    # A pass starts after those were recorded: the same notification may now describe a
    # change that pass has already read past, so it is accepted (and owes a pass) again.
    async with rt.engine.begin() as conn:
        await conn.execute(
            text("UPDATE mailboxes SET pass_started_at = now() + interval '1 second'")
        )
    await _post(client, change(sub))
    # The pass completed with nothing newer pending; then the same notification comes again.
    async with rt.engine.begin() as conn:
        await conn.execute(
            text("UPDATE mailboxes SET pass_started_at = NULL, pending_since = NULL")
        )
    await _post(client, change(sub))
    await _post(client, change(sub))
    assert [r["outcome"] for r in await log_rows(rt)][3:] == ["accepted", "accepted", "duplicate"]
    assert await _pending(rt, sub.mailbox_id) is not None


async def test_one_body_with_the_same_notification_twice(
    client: httpx.AsyncClient, rt: Runtime
) -> None:
    sub = await graph_mailbox(rt)
    await _post(client, change(sub), change(sub), change(sub, message_id="AAMkOther"))
    assert [r["outcome"] for r in await log_rows(rt)] == ["accepted", "duplicate", "accepted"]


async def test_concurrent_requests_commit_in_groups(
    app: FastAPI, client: httpx.AsyncClient, rt: Runtime
) -> None:
    subs = [await graph_mailbox(rt, f"user{i}@contoso.com") for i in range(5)]
    intake: WebhookIntake = app.state.webhook_intake
    groups_before = intake.groups_committed
    responses = await asyncio.gather(
        *(_post(client, change(subs[i % 5], message_id=f"AAMk{i}")) for i in range(60))
    )
    assert [r.status_code for r in responses] == [202] * 60
    groups = intake.groups_committed - groups_before
    assert groups < 20, groups
    rows = await log_rows(rt)
    assert len(rows) == 60 and {r["outcome"] for r in rows} == {"accepted"}
    # One sync job per mailbox, however many notifications each had.
    assert await queued(rt) == sorted(f"sync:{s.mailbox_id}" for s in subs)
    for s in subs:
        assert await _pending(rt, s.mailbox_id) is not None


async def test_ten_thousand_forged_requests_leave_a_bounded_log(
    settings: Settings, rt: Runtime
) -> None:
    sub = await graph_mailbox(rt)
    forged = json.dumps({"value": [change(sub, client_state="guess")]}).encode()
    per_minute = settings.webhook_log_refusals_per_minute
    source = ("198.51.100.9", 1)
    application = create_app(settings)
    async with application.router.lifespan_context(application):
        for start in range(0, 7_000, 500):
            statuses = await asyncio.gather(
                *(
                    asgi_post(application, "/webhooks/microsoft", forged, client=source)
                    for _ in range(500)
                )
            )
            assert set(statuses) == {202}, start
        # Pub/Sub pushes without any token, as fast: the same bound.
        unsigned = await asyncio.gather(
            *(
                asgi_post(application, "/webhooks/google", b"{}", client=source)
                for _ in range(3_000)
            )
        )
        assert set(unsigned) == {401}
    # Shutting down wrote the counts of the current minute.
    rows = await log_rows(rt)
    assert len(rows) <= 4 * (per_minute + 1)
    for outcome, sent in (("forged_client_state", 7_000), ("missing_token", 3_000)):
        kept = [r for r in rows if r["outcome"] == outcome]
        # The first `per_minute` of a minute one by one, the rest counted: a minute
        # boundary during the run can double that, no more.
        assert len(kept) <= 2 * (per_minute + 1)
        assert sum(r["count"] for r in kept) == sent
        counted = [r for r in kept if r["aggregated"]]
        assert counted and {r["source"] for r in counted} == {"198.51.100.9"}
    assert await queued(rt) == []


HOSTILE = {
    "deep-array": b"[" * 100_000 + b"]" * 100_000,
    "deep-item": b'{"value": [' + b"[" * 5000 + b"]" * 5000 + b"]}",
    "60k-items": b'{"value": [' + b",".join([b'{"subscriptionId": "s"}'] * 60_000) + b"]}",
    "400k-numbers": b'{"value": [' + b",".join([b"1"] * 400_000) + b"]}",
    "nul": b'{"value": [{"subscriptionId": "s\\u0000", "changeType": "created"}]}',
    "long-string": b'{"value": [{"subscriptionId": "' + b"s" * 5000 + b'", "changeType": "x"}]}',
    "lone-surrogate": b'{"value": [{"subscriptionId": "\\ud800", "changeType": "created"}]}',
    "list-for-string": b'{"value": [{"subscriptionId": ["s"], "changeType": "created"}]}',
    "object-for-string": b'{"value": [{"subscriptionId": "s", "changeType": {"a": 1}}]}',
    "huge-number": b'{"value": [{"subscriptionId": "s", "changeType": "c", "clientState": 1e999}]}',
    "invalid-utf8-string": b'{"value": "\xff\xfe"}',
    "invalid-utf8": b"\xc3\x28",
    "over-a-megabyte": b"x" * 1_100_000,
}


async def test_hostile_bodies_are_4xx_and_recorded(
    app: FastAPI, client: httpx.AsyncClient, rt: Runtime
) -> None:
    statuses = {}
    for name, body in HOSTILE.items():
        response = await client.post("/webhooks/microsoft", content=body)
        assert 400 <= response.status_code < 500, (name, response.text)
        assert set(response.json()["error"]) == {"code", "message"}
        statuses[name] = response.status_code
        pushed = await client.post(
            "/webhooks/google", content=body, headers={"Authorization": "Bearer x.y.z"}
        )
        assert 400 <= pushed.status_code < 500, name
    assert statuses["over-a-megabyte"] == 413
    # Refusals are recorded without holding up the answer.
    await app.state.webhook_intake.settle()
    rows = await log_rows(rt, "provider = 'microsoft'")
    assert [r["outcome"] for r in rows] == ["malformed"] * len(HOSTILE)
    assert sorted(r["http_status"] for r in rows) == sorted(statuses.values())


async def test_nothing_is_acknowledged_that_was_not_recorded(settings: Settings) -> None:
    # PostgreSQL unreachable: the notification is not recorded, so it is not acknowledged
    # either (503: Graph delivers again); the refusal paths still answer.
    unreachable = settings.model_copy(
        update={"database_url": "postgresql+asyncpg://postgres@127.0.0.1:9/mailsync"}
    )
    application = create_app(unreachable)
    async with application.router.lifespan_context(application):
        transport = httpx.ASGITransport(app=application)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            body = {"value": [{"subscriptionId": "s", "clientState": "c", "changeType": "created"}]}
            response = await client.post("/webhooks/microsoft", content=json.dumps(body))
            assert response.status_code == 503
            assert response.headers["retry-after"] == "5"
            assert response.json()["error"]["code"] == "unavailable"
            assert (await client.post("/webhooks/microsoft", content=b"{}")).status_code == 400


async def test_redis_down_still_records_and_answers(settings: Settings, rt: Runtime) -> None:
    # The record owes the pass in PostgreSQL (the scheduler enqueues it once Redis is
    # back): losing the enqueue must not lose the notification, nor its answer.
    sub = await graph_mailbox(rt)
    no_redis = settings.model_copy(update={"redis_url": "redis://127.0.0.1:9/0"})
    application = create_app(no_redis)
    async with application.router.lifespan_context(application):
        transport = httpx.ASGITransport(app=application)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            response = await _post(client, change(sub))
    assert response.status_code == 202
    assert [r["outcome"] for r in await log_rows(rt)] == ["accepted"]
    assert await _pending(rt, sub.mailbox_id) is not None


async def test_a_subscription_expiring_from_the_cache_mid_group_is_still_known(
    client: httpx.AsyncClient, rt: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Every cached subscription is stale the moment after it was read: the group must use
    # what it looked up, not ask the cache again (bench.webhooks found this one).
    from app.sync import webhook_caches

    monkeypatch.setattr(webhook_caches, "SUBSCRIPTION_TTL_SECONDS", 0.0)
    sub = await graph_mailbox(rt)
    for i in range(3):
        assert (await _post(client, change(sub, message_id=f"AAMk{i}"))).status_code == 202
    assert [r["outcome"] for r in await log_rows(rt)] == ["accepted"] * 3


async def test_a_pass_already_owed_leaves_the_mailbox_row_alone(
    client: httpx.AsyncClient, rt: Runtime
) -> None:
    sub = await graph_mailbox(rt)

    async def version() -> tuple[str, Any]:
        async with rt.sessions() as session:
            row = (
                await session.execute(
                    text("SELECT xmin::text, pending_since FROM mailboxes WHERE id = :id"),
                    {"id": sub.mailbox_id},
                )
            ).one()
        return row[0], row[1]

    # Connected just now: a pass is owed and due; new changes owe nothing more.
    before = await version()
    await _post(client, change(sub, message_id="AAMk1"), change(sub, message_id="AAMk2"))
    assert await version() == before
    # Once that pass has been made, the next change owes one again.
    async with rt.engine.begin() as conn:
        await conn.execute(text("UPDATE mailboxes SET pending_since = NULL"))
    cleared = await version()
    await _post(client, change(sub, message_id="AAMk3"))
    after = await version()
    assert after[0] != cleared[0] and after[1] is not None
    assert [r["outcome"] for r in await log_rows(rt)] == ["accepted"] * 3
