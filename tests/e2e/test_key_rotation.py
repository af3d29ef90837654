"""Key rotation end to end: mailboxes connected under the old key, `mailsync rotate-keys`
with the new key first, then the old key removed: every mailbox still refreshes its
tokens, syncs, and has its Graph notifications verified."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator

import httpx
import pytest
from cryptography.fernet import Fernet

from app import cli
from app.config import Settings, get_settings
from app.db.repositories.mailboxes import MailboxRepository
from app.db.repositories.subscriptions import SubscriptionRepository
from app.simulator.server import SimulatorServer
from app.sync.runtime import Runtime
from tests.api.webhook_support import log_rows
from tests.conftest import LiveApi, run_worker
from tests.e2e.support import Sim, connect_via_api, message_count, sim_session, unique_email

OLD = Fernet.generate_key().decode()
NEW = Fernet.generate_key().decode()


@pytest.fixture
async def sim(simulator: SimulatorServer) -> AsyncIterator[Sim]:
    async with sim_session(simulator, faults={"gmail_quota_units_per_second": 0}) as client:
        yield client


def _with_keys(settings: Settings, keys: str) -> Settings:
    return settings.model_copy(
        update={"token_encryption_keys": keys, "gmail_quota_units_per_second": 0}
    )


async def test_after_rotation_the_old_key_can_go(
    sim: Sim,
    sim_settings: Settings,
    rt: Runtime,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # Before: everything runs with the old key alone.
    before = LiveApi(_with_keys(sim_settings, OLD)).start()
    worker_rt = await Runtime.create(before.settings)
    try:
        outlook = await sim.call(
            "POST",
            "/_sim/microsoft/accounts",
            json={"email": unique_email("rot"), "message_count": 40},
        )
        gmail = await sim.call(
            "POST",
            "/_sim/google/accounts",
            json={"email": unique_email("rot", "example.com"), "messages": 30, "seed": 5},
        )
        outlook_id = await connect_via_api(
            before,
            "rita",
            {
                "provider": "microsoft",
                "access_token": outlook["access_token"],
                "refresh_token": outlook["refresh_token"],
                "expires_in": outlook["expires_in"],
                "email": outlook["email"],
            },
        )
        gmail_id = await connect_via_api(
            before,
            "rita",
            {
                "provider": "google",
                "access_token": gmail["access_token"],
                "refresh_token": gmail["refresh_token"],
                "expires_in": gmail["expires_in"],
                "email": gmail["email"],
            },
        )
        await run_worker(worker_rt)
        assert await message_count(rt, outlook_id) == 40
        assert await message_count(rt, gmail_id) == 30
    finally:
        await worker_rt.close()
        await asyncio.to_thread(before.stop)

    # Rotate: the new key first, the old one still after it.
    monkeypatch.setenv("DATABASE_URL", rt.settings.database_url)
    monkeypatch.setenv("MAILSYNC_ENV", "test")
    monkeypatch.setenv("TOKEN_ENCRYPTION_KEYS", f"{NEW},{OLD}")
    get_settings.cache_clear()
    try:
        assert await asyncio.to_thread(cli.main, ["rotate-keys"]) == 0
    finally:
        get_settings.cache_clear()
    out = capsys.readouterr().out
    assert "credentials.secret: 2 scanned, 2 re-encrypted" in out
    assert "subscriptions.client_state: 1 scanned, 1 re-encrypted" in out

    # After: the old key is gone. Access tokens expire at both providers, so each mailbox
    # must decrypt its refresh token to go on; and mail arrives.
    after = LiveApi(_with_keys(sim_settings, NEW)).start()
    worker_rt = await Runtime.create(after.settings)
    try:
        await sim.call("POST", f"/_sim/microsoft/accounts/{outlook['email']}/access-tokens/expire")
        await sim.call("POST", f"/_sim/google/accounts/{gmail['email']}/tokens/expire")
        await sim.call(
            "POST",
            f"/_sim/microsoft/accounts/{outlook['email']}/messages",
            json={"folder": "inbox", "count": 3},
        )
        await sim.call(
            "POST", f"/_sim/google/accounts/{gmail['email']}/messages", json={"count": 4}
        )
        # A Graph notification, verified against the rotated clientState.
        async with worker_rt.sessions() as session:
            subscription = await SubscriptionRepository(session, worker_rt.cipher).active_for(
                uuid.UUID(outlook_id)
            )
            await MailboxRepository(session).request_sync([uuid.UUID(gmail_id)])
            await session.commit()
        assert subscription is not None and subscription.client_state
        notification = {
            "value": [
                {
                    "subscriptionId": subscription.subscription_id,
                    "clientState": subscription.client_state,
                    "changeType": "created",
                    "resource": "Users/x/Messages/new",
                    "resourceData": {"id": "new"},
                }
            ]
        }
        async with httpx.AsyncClient(base_url=after.base_url) as client:
            response = await client.post("/webhooks/microsoft", content=json.dumps(notification))
        assert response.status_code == 202
        rows = await log_rows(
            rt, "mailbox_id = :id AND outcome = 'accepted'", id=uuid.UUID(outlook_id)
        )
        assert rows, "the notification was not verified under the new key"
        await worker_rt.redis.enqueue_job("sync_mailbox", gmail_id, _job_id=f"sync:{gmail_id}")
        keys = {"microsoft": f"microsoft:{outlook['email']}", "google": f"google:{gmail['email']}"}
        refreshed = {p: (await sim.counters(k)).get("token_refreshes", 0) for p, k in keys.items()}
        await run_worker(worker_rt)
        assert await message_count(rt, outlook_id) == 43
        assert await message_count(rt, gmail_id) == 34
        # Both went on with refresh tokens decrypted under the new key.
        for provider, key in keys.items():
            counters = await sim.counters(key)
            assert counters["token_refreshes"] > refreshed[provider], (provider, counters)
    finally:
        await worker_rt.close()
        await asyncio.to_thread(after.stop)
