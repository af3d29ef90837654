"""Gmail through the whole service: API → queue → engine → Gmail simulator → PostgreSQL, and push."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from app.simulator.server import SimulatorServer
from app.sync.engine import Outcome, SyncEngine
from app.sync.runtime import Runtime
from tests.conftest import LiveApi, run_worker
from tests.e2e.support import (
    Sim,
    connect_via_api,
    gmail_sim_session,
    message_count,
    status_of,
    stored_messages,
    unique_email,
    wait_for_notifications,
)


@pytest.fixture
async def sim(simulator: SimulatorServer, live_api: LiveApi) -> AsyncIterator[Sim]:
    async with gmail_sim_session(simulator, live_api) as client:
        yield client


@pytest.fixture
def gmail_rt(sim_rt: Runtime) -> Runtime:
    sim_rt.settings = sim_rt.settings.model_copy(update={"gmail_quota_units_per_second": 0})
    return sim_rt


async def new_account(sim: Sim, messages: int) -> dict[str, Any]:
    email = unique_email("gmail", "example.com")
    return dict(
        await sim.call(
            "POST", "/_sim/google/accounts", json={"email": email, "messages": messages, "seed": 11}
        )
    )


def connect_body(account: dict[str, Any]) -> dict[str, Any]:
    return {
        "provider": "google",
        "access_token": account["access_token"],
        "refresh_token": account["refresh_token"],
        "expires_in": account["expires_in"],
        "email": account["email"],
    }


async def label_names(sim: Sim, account: dict[str, Any]) -> dict[str, str]:
    token = (await sim.call("POST", f"/_sim/google/accounts/{account['email']}/tokens"))[
        "access_token"
    ]
    body = await sim.call(
        "GET", "/gmail/v1/users/me/labels", headers={"Authorization": f"Bearer {token}"}
    )
    return {label["id"]: label["name"] for label in body["labels"]}


async def assert_converged(sim: Sim, rt: Runtime, account: dict[str, Any], mailbox_id: str) -> None:
    names = await label_names(sim, account)
    truth = await sim.call(
        "GET", f"/_sim/google/accounts/{account['email']}/truth", params={"limit": 100000}
    )
    expected = {m["id"]: m for m in truth["messages"]}
    stored = await stored_messages(rt, mailbox_id)
    assert set(stored) == set(expected), (len(stored), len(expected))
    assert await message_count(rt, mailbox_id) == len(expected)
    for mid, message in expected.items():
        row = stored[mid]
        assert row["thread_id"] == message["threadId"]
        assert row["is_read"] == message["isRead"]
        assert sorted(row["labels"]) == sorted(
            names.get(label, label) for label in message["labelIds"]
        ), mid
        assert row["internet_message_id"] == message["internetMessageId"]


async def test_full_sync_then_push_converges(
    sim: Sim, live_api: LiveApi, gmail_rt: Runtime
) -> None:
    account = await new_account(sim, 1200)
    mailbox_id = await connect_via_api(live_api, "gina", connect_body(account))
    await run_worker(gmail_rt)
    status = await status_of(live_api, "gina")
    assert status["status"] == "connected", status
    assert status["progress"]["messages_synced"] == 1200
    await assert_converged(sim, gmail_rt, account, mailbox_id)
    assert (await sim.call("GET", f"/_sim/google/accounts/{account['email']}"))["watch"] is not None

    email = account["email"]
    truth = (await sim.call("GET", f"/_sim/google/accounts/{email}/truth", params={"limit": 10}))[
        "messages"
    ]
    await sim.call("POST", f"/_sim/google/accounts/{email}/messages", json={"count": 5})
    await sim.call(
        "POST",
        f"/_sim/google/accounts/{email}/messages/delete",
        json={"ids": [truth[0]["id"], truth[1]["id"]]},
    )
    await sim.call(
        "POST",
        f"/_sim/google/accounts/{email}/messages/mark",
        json={"ids": [truth[2]["id"]], "read": not truth[2]["isRead"]},
    )
    await sim.call(
        "POST",
        f"/_sim/google/accounts/{email}/messages/modify",
        json={"ids": [truth[3]["id"]], "add_label_ids": ["STARRED"], "remove_label_ids": ["INBOX"]},
    )
    await wait_for_notifications(gmail_rt, mailbox_id, "push")
    await run_worker(gmail_rt)
    await assert_converged(sim, gmail_rt, account, mailbox_id)


async def test_forged_pushes_are_refused_and_trigger_nothing(
    sim: Sim, live_api: LiveApi, gmail_rt: Runtime
) -> None:
    account = await new_account(sim, 10)
    await connect_via_api(live_api, "fred", connect_body(account))
    await run_worker(gmail_rt)
    cases = [
        ({"bad_signature": True}, 401),
        ({"expired": True}, 401),
        ({"audience": "https://someone-else.example/push"}, 403),
        ({"service_account": "intruder@evil.iam.gserviceaccount.com"}, 403),
    ]
    async with httpx.AsyncClient(base_url=live_api.base_url) as client:
        for forged, status in cases:
            minted = await sim.call(
                "POST",
                "/_sim/google/push/mint",
                json={"email": account["email"], "history_id": 1, **forged},
            )
            response = await client.post(
                "/webhooks/google",
                json=minted["body"],
                headers={"Authorization": minted["authorization"]},
            )
            assert response.status_code == status, (forged, response.text)
        response = await client.post("/webhooks/google", json=minted["body"])
        assert response.status_code == 401
    assert await gmail_rt.redis.zcard("arq:queue") == 0


async def test_same_push_twice_at_once_syncs_once(
    sim: Sim, live_api: LiveApi, gmail_rt: Runtime
) -> None:
    account = await new_account(sim, 10)
    mailbox_id = await connect_via_api(live_api, "pat", connect_body(account))
    await run_worker(gmail_rt)
    minted = await sim.call(
        "POST", "/_sim/google/push/mint", json={"email": account["email"], "history_id": 999}
    )
    async with httpx.AsyncClient(base_url=live_api.base_url) as client:
        responses = await asyncio.gather(
            *(
                client.post(
                    "/webhooks/google",
                    json=minted["body"],
                    headers={"Authorization": minted["authorization"]},
                )
                for _ in range(2)
            )
        )
    assert [r.status_code for r in responses] == [204, 204]
    assert [j.decode() for j in await gmail_rt.redis.zrange("arq:queue", 0, -1)] == [
        f"sync:{mailbox_id}"
    ]
    # A push for an address nobody connected is acknowledged (and only logged).
    stranger = await sim.call(
        "POST", "/_sim/google/push/mint", json={"email": "nobody@example.com", "history_id": 5}
    )
    async with httpx.AsyncClient(base_url=live_api.base_url) as client:
        response = await client.post(
            "/webhooks/google",
            json=stranger["body"],
            headers={"Authorization": stranger["authorization"]},
        )
    assert response.status_code == 204


async def test_expired_history_converges(sim: Sim, live_api: LiveApi, gmail_rt: Runtime) -> None:
    account = await new_account(sim, 300)
    email = account["email"]
    mailbox_id = await connect_via_api(live_api, "hank", connect_body(account))
    await run_worker(gmail_rt)
    truth = (await sim.call("GET", f"/_sim/google/accounts/{email}/truth", params={"limit": 5}))[
        "messages"
    ]
    await sim.call(
        "POST", f"/_sim/google/accounts/{email}/messages/delete", json={"ids": [truth[0]["id"]]}
    )
    await sim.call("POST", f"/_sim/google/accounts/{email}/messages", json={"count": 3})
    await sim.call("POST", f"/_sim/google/accounts/{email}/history/expire")
    result = await SyncEngine(gmail_rt, "w").run_slice(uuid.UUID(mailbox_id))
    assert result.outcome in (Outcome.DONE, Outcome.DONE_AGAIN)
    await assert_converged(sim, gmail_rt, account, mailbox_id)


async def test_revoked_grant_parks_mailbox(sim: Sim, live_api: LiveApi, gmail_rt: Runtime) -> None:
    account = await new_account(sim, 10)
    await sim.call("POST", f"/_sim/google/accounts/{account['email']}/revoke")
    body = connect_body(account) | {"expires_in": 0}
    await connect_via_api(live_api, "ron", body)
    await run_worker(gmail_rt)
    status = await status_of(live_api, "ron")
    assert status["status"] == "auth_expired"
    assert "revoked" in status["last_error"].lower() or "expired" in status["last_error"].lower()


async def test_connect_without_email_learns_the_address(
    sim: Sim, live_api: LiveApi, gmail_rt: Runtime
) -> None:
    account = await new_account(sim, 20)
    body = connect_body(account)
    del body["email"]
    mailbox_id = await connect_via_api(live_api, "nina", body)
    await run_worker(gmail_rt)
    status = await status_of(live_api, "nina")
    assert status["status"] == "connected" and status["email"] == account["email"]
    # Pushes are matched by address, so this mailbox now hears about changes.
    minted = await sim.call(
        "POST", "/_sim/google/push/mint", json={"email": account["email"], "history_id": 7}
    )
    async with httpx.AsyncClient(base_url=live_api.base_url) as client:
        response = await client.post(
            "/webhooks/google",
            json=minted["body"],
            headers={"Authorization": minted["authorization"]},
        )
    assert response.status_code == 204
    assert [j.decode() for j in await gmail_rt.redis.zrange("arq:queue", 0, -1)] == [
        f"sync:{mailbox_id}"
    ]


async def test_a_pushed_pass_reads_history_from_the_stored_id_with_one_request(
    sim: Sim, live_api: LiveApi, gmail_rt: Runtime
) -> None:
    account = await new_account(sim, 40)
    email = account["email"]
    mailbox_id = await connect_via_api(live_api, "hugo", connect_body(account))
    await run_worker(gmail_rt)
    await sim.call("POST", f"/_sim/google/accounts/{email}/messages", json={"count": 1})
    history_id = (await sim.call("GET", f"/_sim/google/accounts/{email}"))["history_id"]
    await wait_for_notifications(gmail_rt, mailbox_id, "push")
    await run_worker(gmail_rt)
    await assert_converged(sim, gmail_rt, account, mailbox_id)
    await sim.call("POST", "/_sim/counters/reset")

    minted = await sim.call(
        "POST", "/_sim/google/push/mint", json={"email": email, "history_id": int(history_id)}
    )
    async with httpx.AsyncClient(base_url=live_api.base_url) as client:
        response = await client.post(
            "/webhooks/google",
            json=minted["body"],
            headers={"Authorization": minted["authorization"]},
        )
    assert response.status_code == 204
    await run_worker(gmail_rt)
    # Nothing else changed: the history from the stored id, and no profile or label reads.
    counters = await sim.counters(f"google:{email}")
    assert counters["methods"] == {"users.history.list": 1}, counters
    status = await status_of(live_api, "hugo")
    assert status["status"] == "connected" and status["in_sync"], status
