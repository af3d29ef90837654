"""users.watch / users.stop and Pub/Sub push deliveries with Google-signed OIDC tokens."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import jwt
import pytest

from app.simulator.server import SimulatorServer
from tests.providers.gmail.sim import GoogleSim, SimAccount, google_sim

TOPIC = "projects/mailsync-sim/topics/gmail"
SERVICE_ACCOUNT = "gmail-push@mailsync-sim.iam.gserviceaccount.com"
Received = tuple[str, dict[str, str], bytes]


@pytest.fixture
async def sim(simulator: SimulatorServer) -> AsyncIterator[GoogleSim]:
    async with google_sim(simulator) as client:
        yield client
        await client.set_push()  # leave the shared simulator without an endpoint


@asynccontextmanager
async def push_receiver() -> AsyncIterator[tuple[str, asyncio.Queue[Received]]]:
    """A bare HTTP endpoint on the test's loop that records each POST and answers 204."""
    received: asyncio.Queue[Received] = asyncio.Queue()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = (await reader.readuntil(b"\r\n\r\n")).decode()
        request_line, *lines = head.strip().split("\r\n")
        headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}
        body = await reader.readexactly(int(headers.get("content-length", "0")))
        await received.put((request_line, headers, body))
        writer.write(b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}/webhooks/google", received
    finally:
        server.close()
        await server.wait_closed()


async def _watch(sim: GoogleSim, account: SimAccount, **body: Any) -> dict[str, Any]:
    response = await sim.http.post(
        "/gmail/v1/users/me/watch", json={"topicName": TOPIC, **body}, headers=account.auth
    )
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result


async def _settled(sim: GoogleSim, email: str) -> list[dict[str, Any]]:
    async with asyncio.timeout(10):
        while True:
            deliveries = await sim.deliveries(email)
            if all(d["status"] != "pending" for d in deliveries):
                return deliveries
            await asyncio.sleep(0.01)


def _verify(sim_keys: dict[str, Any], token: str, audience: str) -> dict[str, Any]:
    kid = jwt.get_unverified_header(token)["kid"]
    key = jwt.PyJWKSet.from_dict(sim_keys)[kid]
    claims: dict[str, Any] = jwt.decode(
        token, key, algorithms=["RS256"], audience=audience, issuer="https://accounts.google.com"
    )
    return claims


async def test_watch_validates_and_answers_history_id_and_expiration(sim: GoogleSim) -> None:
    account = await sim.create_account(messages=5)
    no_topic = await sim.http.post("/gmail/v1/users/me/watch", json={}, headers=account.auth)
    assert no_topic.status_code == 400
    bad_topic = await sim.http.post(
        "/gmail/v1/users/me/watch", json={"topicName": "gmail"}, headers=account.auth
    )
    assert bad_topic.status_code == 400
    # Refused watches still spent 100 units each; a fresh user has a full second of quota.
    account = await sim.create_account(messages=5)
    watch = await _watch(sim, account)
    assert watch["historyId"] == str(account.history_id)
    seven_days_ms = 7 * 24 * 3600 * 1000
    assert abs(int(watch["expiration"]) - (time.time() * 1000 + seven_days_ms)) < 60_000
    stop = await sim.http.post("/gmail/v1/users/me/stop", headers=account.auth)
    assert stop.status_code == 204 and stop.content == b""
    assert (await sim.account(account.email))["watch"] is None


async def test_change_pushes_a_signed_envelope(sim: GoogleSim) -> None:
    account = await sim.create_account(messages=5)
    async with push_receiver() as (endpoint, received):
        await sim.set_push(endpoint=endpoint, audience="https://mailsync.test/webhooks/google")
        await _watch(sim, account)
        added = await sim.add(account.email)
        request_line, headers, body = await asyncio.wait_for(received.get(), timeout=10)
    assert request_line.startswith("POST /webhooks/google ")
    envelope = json.loads(body)
    message = envelope["message"]
    assert envelope["subscription"].startswith("projects/")
    assert message["messageId"] and message["publishTime"].endswith("Z")
    data = json.loads(base64.urlsafe_b64decode(message["data"]))
    current = (await sim.account(account.email))["history_id"]
    assert data == {"emailAddress": account.email, "historyId": int(current)}
    assert added[0]["id"]

    scheme, _, token = headers["authorization"].partition(" ")
    assert scheme == "Bearer"
    keys = (await sim.http.get("/oauth2/v3/certs")).json()
    claims = _verify(keys, token, "https://mailsync.test/webhooks/google")
    assert claims["email"] == SERVICE_ACCOUNT and claims["email_verified"] is True
    assert claims["exp"] - claims["iat"] == 3600 and claims["sub"]

    # The simulator records the answer just after our receiver sent it.
    deliveries = await _settled(sim, account.email)
    assert [d["status"] for d in deliveries] == ["delivered"]
    assert deliveries[0]["http_status"] == 204 and deliveries[0]["attempts"] == 1


async def test_label_filter_rate_limit_and_stop(sim: GoogleSim) -> None:
    account = await sim.create_account(messages=30)
    truth = await sim.truth(account.email)
    outside = next(m for m in truth if "INBOX" not in m["labelIds"])
    # Seeds follow the order accounts are created in: pick a message the edits below change.
    inside = next(
        m
        for m in truth
        if "INBOX" in m["labelIds"] and not {"STARRED", "IMPORTANT"} & set(m["labelIds"])
    )
    # No endpoint: publishes are logged (tests can forward them), never sent.
    await sim.set_push(max_notifications_per_second=0)
    await _watch(sim, account, labelIds=["INBOX"], labelFilterBehavior="INCLUDE")
    await sim.modify(account.email, [outside["id"]], add=["STARRED"])
    assert await sim.deliveries(account.email) == []
    await sim.modify(account.email, [inside["id"]], add=["STARRED"])
    logged = await sim.deliveries(account.email)
    assert [d["status"] for d in logged] == ["no_endpoint"]
    assert logged[0]["authorization"].startswith("Bearer ")
    assert logged[0]["envelope"]["message"]["data"]

    # Gmail sends at most one notification per user per second; the rest are dropped.
    await sim.set_push(max_notifications_per_second=0.001)
    await sim.modify(account.email, [inside["id"]], add=["IMPORTANT"])
    await sim.modify(account.email, [inside["id"]], remove=["IMPORTANT"])
    statuses = [d["status"] for d in await sim.deliveries(account.email)]
    assert statuses == ["no_endpoint", "no_endpoint", "dropped"]

    await sim.http.post("/gmail/v1/users/me/stop", headers=account.auth)
    await sim.set_push(max_notifications_per_second=0)
    await sim.modify(account.email, [inside["id"]], remove=["STARRED"])
    assert len(await sim.deliveries(account.email)) == 3


async def test_minted_tokens_for_negative_cases(sim: GoogleSim) -> None:
    keys = (await sim.http.get("/oauth2/v3/certs")).json()
    audience = "https://mailsync.test/webhooks/google"
    good = await sim.mint_push("someone@example.com", 123, audience=audience)
    token = good["authorization"].removeprefix("Bearer ")
    assert _verify(keys, token, audience)["email"] == SERVICE_ACCOUNT
    data = json.loads(base64.urlsafe_b64decode(good["body"]["message"]["data"]))
    assert data == {"emailAddress": "someone@example.com", "historyId": 123}
    forged = await sim.mint_push("someone@example.com", 1, audience=audience, bad_signature=True)
    with pytest.raises(jwt.InvalidSignatureError):
        _verify(keys, forged["authorization"].removeprefix("Bearer "), audience)
    expired = await sim.mint_push("someone@example.com", 1, audience=audience, expired=True)
    with pytest.raises(jwt.ExpiredSignatureError):
        _verify(keys, expired["authorization"].removeprefix("Bearer "), audience)
    elsewhere = await sim.mint_push("someone@example.com", 1, audience="https://other.test")
    with pytest.raises(jwt.InvalidAudienceError):
        _verify(keys, elsewhere["authorization"].removeprefix("Bearer "), audience)
