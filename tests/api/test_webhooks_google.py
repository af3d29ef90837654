"""POST /webhooks/google: signed pushes recorded with their outcome, redeliveries as
duplicates, unsigned pushes refused with one log line a minute that says what to set."""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from app.config import Settings
from app.db.repositories.mailboxes import MailboxRepository
from app.main import create_app
from app.simulator.server import SimulatorServer
from app.sync.runtime import Runtime
from tests.api.webhook_support import log_rows, queued
from tests.conftest import PUSH_AUDIENCE
from tests.providers.gmail.sim import GoogleSim, google_sim


@pytest.fixture
async def app(sim_settings: Settings, rt: Runtime) -> AsyncIterator[FastAPI]:
    application = create_app(sim_settings)
    async with application.router.lifespan_context(application):
        yield application


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app, client=("192.0.2.44", 443))
    async with httpx.AsyncClient(transport=transport, base_url="http://mailsync.test") as c:
        yield c


@pytest.fixture
async def sim(simulator: SimulatorServer) -> AsyncIterator[GoogleSim]:
    async with google_sim(simulator) as client:
        yield client


async def _gmail_mailbox(rt: Runtime, email: str, user: str) -> uuid.UUID:
    async with rt.sessions() as session:
        mailbox = await MailboxRepository(session).upsert_for_connect(
            user_id=user,
            provider="google",
            account_key=email,
            email=email,
            auth_mode="delegated",
            tenant_id=None,
            provider_user_id=None,
        )
        await session.commit()
    return mailbox.id


async def _push(
    client: httpx.AsyncClient, minted: dict[str, Any], *, authorization: str | None = None
) -> httpx.Response:
    headers = {"Authorization": authorization or minted["authorization"]}
    return await client.post(
        "/webhooks/google", content=json.dumps(minted["body"]), headers=headers
    )


async def test_signed_pushes_are_recorded_with_their_outcome(
    app: FastAPI, client: httpx.AsyncClient, rt: Runtime, sim: GoogleSim
) -> None:
    email = f"pat-{uuid.uuid4().hex[:6]}@gmail-sim.test"
    # Two users connected the same address: each mailbox gets the push.
    first = await _gmail_mailbox(rt, email, "pat")
    second = await _gmail_mailbox(rt, email, "sam")
    minted = await sim.mint_push(email, 4242, audience=PUSH_AUDIENCE)
    assert (await _push(client, minted)).status_code == 204
    # Pub/Sub redelivers the same message (same messageId): recorded, nothing more owed.
    assert (await _push(client, minted)).status_code == 204
    stranger = await sim.mint_push("nobody@gmail-sim.test", 5, audience=PUSH_AUDIENCE)
    assert (await _push(client, stranger)).status_code == 204
    wrong_audience = await sim.mint_push(email, 4243, audience="https://elsewhere.example/push")
    assert (await _push(client, wrong_audience)).status_code == 403
    forged = await sim.mint_push(email, 4244, audience=PUSH_AUDIENCE, bad_signature=True)
    assert (await _push(client, forged)).status_code == 401
    await app.state.webhook_intake.settle()

    rows = await log_rows(rt)
    accepted = [r for r in rows if r["outcome"] == "accepted"]
    assert sorted(r["mailbox_id"] for r in accepted) == sorted([first, second])
    assert all(r["payload"]["history_id"] == "4242" for r in accepted)
    assert sorted(r["mailbox_id"] for r in rows if r["outcome"] == "duplicate") == sorted(
        [first, second]
    )
    unknown = [r for r in rows if r["outcome"] == "unknown_subscription"]
    assert len(unknown) == 1 and unknown[0]["mailbox_id"] is None
    assert unknown[0]["http_status"] == 204
    bad = sorted((r["http_status"], r["kind"]) for r in rows if r["outcome"] == "bad_token")
    assert bad == [(401, "push"), (403, "push")]
    for row in rows:
        assert row["source"] == "192.0.2.44"
        assert "Bearer" not in json.dumps({k: str(v) for k, v in row.items()})
    assert await queued(rt) == sorted([f"sync:{first}", f"sync:{second}"])


async def test_unsigned_pushes_are_refused_and_logged_once_a_minute(
    app: FastAPI,
    client: httpx.AsyncClient,
    rt: Runtime,
    sim: GoogleSim,
    sim_settings: Settings,
    caplog: pytest.LogCaptureFixture,
) -> None:
    email = f"lee-{uuid.uuid4().hex[:6]}@gmail-sim.test"
    await _gmail_mailbox(rt, email, "lee")
    # What Pub/Sub posts for a push subscription without authentication: the envelope,
    # no Authorization header at all.
    minted = await sim.mint_push(email, 77, audience=PUSH_AUDIENCE)
    caplog.set_level(logging.WARNING, logger="app.api.routes.webhooks")
    for _ in range(5):
        response = await client.post("/webhooks/google", content=json.dumps(minted["body"]))
        assert response.status_code == 401
        assert "Authorization" in response.json()["error"]["message"]
    advice = [
        r.getMessage() for r in caplog.records if "push-auth-service-account" in r.getMessage()
    ]
    assert len(advice) == 1, advice
    assert f"--push-auth-service-account={sim_settings.google_push_service_account}" in advice[0]
    assert f"--push-auth-token-audience={PUSH_AUDIENCE}" in advice[0]
    await app.state.webhook_intake.settle()
    rows = await log_rows(rt)
    assert [(r["outcome"], r["http_status"]) for r in rows] == [("missing_token", 401)] * 5
    assert await queued(rt) == []
