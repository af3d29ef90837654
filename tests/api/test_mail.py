"""The /mail API: validation, reconnects, disconnect with and without purge, listing."""

from __future__ import annotations

from typing import Any

import httpx
from sqlalchemy import text

from app.providers import registry
from app.sync.runtime import Runtime
from tests.conftest import bearer, run_worker
from tests.sync.helpers import seeded

ALICE = bearer("alice")


def connect_body(provider: Any, **extra: Any) -> dict[str, Any]:
    access, refresh, ttl = provider.issue_grant()
    return {
        "provider": "microsoft",
        "access_token": access,
        "refresh_token": refresh,
        "expires_in": ttl,
        **extra,
    }


async def test_connect_validation_errors_are_4xx_json(api: httpx.AsyncClient) -> None:
    cases = [
        {},
        {"provider": "yahoo", "access_token": "a", "refresh_token": "r", "expires_in": 5},
        {"provider": "google", "access_token": "a", "refresh_token": "r"},
        {"provider": "google", "access_token": "a", "refresh_token": "r", "expires_in": -1},
        {
            "provider": "google",
            "access_token": "a",
            "refresh_token": "r",
            "expires_in": 5,
            "email": "nope",
        },
        {"provider": "google", "auth": "application", "tenant_id": "t", "user_id": "u"},
        {"provider": "microsoft", "auth": "application", "user_id": "u"},
        {
            "provider": "microsoft",
            "access_token": "a",
            "refresh_token": "r",
            "expires_in": 5,
            "extra": 1,
        },
    ]
    for body in cases:
        response = await api.post("/mail/connect", json=body, headers=ALICE)
        assert response.status_code == 422, body
        error = response.json()["error"]
        assert error["code"] == "invalid_request" and error["message"]
    response = await api.post(
        "/mail/connect", content=b"{not json", headers={**ALICE, "content-type": "application/json"}
    )
    assert response.status_code == 422


async def test_reconnect_updates_the_same_mailbox(api: httpx.AsyncClient, rt: Runtime) -> None:
    provider = seeded(5)
    registry.override("microsoft", lambda s, h: provider)
    first = (
        await api.post(
            "/mail/connect", json=connect_body(provider, email="a@example.com"), headers=ALICE
        )
    ).json()
    second = (
        await api.post(
            "/mail/connect", json=connect_body(provider, email="A@example.com"), headers=ALICE
        )
    ).json()
    assert first["mailbox_id"] == second["mailbox_id"]
    status = (await api.get("/mail/status", headers=ALICE)).json()
    assert len(status["mailboxes"]) == 1
    # Credentials never come back through the API, and are encrypted at rest.
    assert "token" not in str(status).lower()
    async with rt.sessions() as session:
        secret = (await session.execute(text("SELECT secret FROM credentials"))).scalar_one()
    assert b"refresh_token" not in bytes(secret)


async def test_disconnect_keeps_or_purges_messages(api: httpx.AsyncClient, rt: Runtime) -> None:
    provider = seeded(40)
    registry.override("microsoft", lambda s, h: provider)
    keep = (
        await api.post(
            "/mail/connect", json=connect_body(provider, email="keep@example.com"), headers=ALICE
        )
    ).json()
    purge = (
        await api.post(
            "/mail/connect", json=connect_body(provider, email="purge@example.com"), headers=ALICE
        )
    ).json()
    await run_worker(rt)
    assert len(provider.subscriptions) == 2

    response = await api.post(
        "/mail/disconnect", json={"mailbox_id": keep["mailbox_id"]}, headers=ALICE
    )
    assert response.status_code == 200 and response.json()["purged"] is False
    response = await api.post(
        "/mail/disconnect", json={"mailbox_id": purge["mailbox_id"], "purge": True}, headers=ALICE
    )
    assert response.status_code == 200
    await run_worker(rt)

    kept = (
        await api.get(
            "/mail/messages", params={"mailbox_id": keep["mailbox_id"], "limit": 500}, headers=ALICE
        )
    ).json()
    purged = (
        await api.get("/mail/messages", params={"mailbox_id": purge["mailbox_id"]}, headers=ALICE)
    ).json()
    assert len(kept["items"]) == 40 and purged["items"] == []
    statuses = {
        m["mailbox_id"]: m["status"]
        for m in (await api.get("/mail/status", headers=ALICE)).json()["mailboxes"]
    }
    assert set(statuses.values()) == {"disconnected"}
    # Provider subscriptions and stored credentials are gone.
    assert provider.subscriptions == {}
    async with rt.sessions() as session:
        assert (await session.execute(text("SELECT count(*) FROM credentials"))).scalar_one() == 0
        assert (await session.execute(text("SELECT count(*) FROM subscriptions"))).scalar_one() == 0


async def test_disconnect_errors(api: httpx.AsyncClient) -> None:
    assert (await api.post("/mail/disconnect", json={}, headers=ALICE)).status_code == 422
    assert (
        await api.post("/mail/disconnect", json={"provider": "google"}, headers=ALICE)
    ).status_code == 404
    missing = {"mailbox_id": "00000000-0000-0000-0000-000000000000"}
    assert (await api.post("/mail/disconnect", json=missing, headers=ALICE)).status_code == 404


async def test_messages_bad_parameters(api: httpx.AsyncClient) -> None:
    for params in (
        {"limit": 0},
        {"limit": 501},
        {"mailbox_id": "nope"},
        {"cursor": "!!!"},
        {"cursor": "eyJ4IjogMX0"},
    ):
        response = await api.get("/mail/messages", params=params, headers=ALICE)
        assert 400 <= response.status_code < 500, params
        assert "error" in response.json()


async def test_health_endpoints(api: httpx.AsyncClient) -> None:
    assert (await api.get("/healthz")).json() == {"status": "ok"}
    ready = await api.get("/readyz")
    assert ready.status_code == 200 and ready.json()["checks"] == {"postgres": "ok", "redis": "ok"}
    metrics = await api.get("/metrics")
    assert metrics.status_code == 200 and "mailsync_mailboxes" in metrics.text


async def test_connect_succeeds_while_redis_is_down(
    api: httpx.AsyncClient, rt: Runtime, monkeypatch
) -> None:  # type: ignore[no-untyped-def]
    from redis.exceptions import ConnectionError as RedisConnectionError

    from app.sync import jobs

    provider = seeded(5)
    registry.override("microsoft", lambda s, h: provider)

    async def unreachable(*args: object, **kwargs: object) -> None:
        raise RedisConnectionError("Redis is down")

    app_rt = api._transport.app.state.rt  # type: ignore[attr-defined]
    monkeypatch.setattr(app_rt.redis, "evalsha", unreachable)
    response = await api.post(
        "/mail/connect", json=connect_body(provider, email="down@example.com"), headers=ALICE
    )
    assert response.status_code == 202
    assert await rt.redis.zcard("arq:queue") == 0
    # PostgreSQL holds the work: the scheduler enqueues it once Redis answers again.
    assert (await jobs.schedule({"rt": rt}))["enqueued"] == 1
    await run_worker(rt)
    status = (await api.get("/mail/status", headers=ALICE)).json()["mailboxes"][0]
    assert status["status"] == "connected"


def test_connect_command_repr_hides_tokens() -> None:
    from app.sync.mailboxes import ConnectCommand

    command = ConnectCommand(
        "u", "google", "delegated", "a@example.com", "ya29.secret", "1//refresh", 3600
    )
    assert "secret" not in repr(command) and "refresh" not in repr(command)


async def test_api_starts_and_reports_not_ready_while_redis_is_down(settings) -> None:  # type: ignore[no-untyped-def]
    from app.main import create_app

    down = settings.model_copy(update={"redis_url": "redis://127.0.0.1:1/0"})
    app = create_app(down)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(
            transport=transport, base_url="http://mailsync.test"
        ) as client:
            assert (await client.get("/healthz")).status_code == 200
            ready = await client.get("/readyz")
            assert ready.status_code == 503
            assert ready.json()["checks"] == {"postgres": "ok", "redis": "unavailable"}
