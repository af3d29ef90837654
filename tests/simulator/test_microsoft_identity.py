"""The simulated identity platform: discovery, refresh-token rotation, client credentials."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator
from typing import Any

import httpx
import msal
import pytest

from app.simulator.server import SimulatorServer
from tests.providers.outlook.support import counters, create_account, sim_client


@pytest.fixture
async def client(simulator: SimulatorServer) -> AsyncIterator[httpx.AsyncClient]:
    async with sim_client(simulator) as c:
        yield c


@pytest.fixture
async def grace(client: httpx.AsyncClient) -> AsyncIterator[None]:
    yield
    await client.put("/_sim/microsoft/settings", json={"refresh_token_grace_seconds": 5.0})


def _basic(simulator: SimulatorServer) -> dict[str, str]:
    raw = f"{simulator.sim.client_id}:{simulator.sim.client_secret}".encode()
    return {"Authorization": "Basic " + base64.b64encode(raw).decode()}


async def _refresh(
    client: httpx.AsyncClient,
    simulator: SimulatorServer,
    refresh_token: str,
    tenant: str = "common",
) -> httpx.Response:
    return await client.post(
        f"/{tenant}/oauth2/v2.0/token",
        data={
            "grant_type": "refresh_token",
            "refresh_token": refresh_token,
            "scope": "https://graph.microsoft.com/.default offline_access",
        },
        headers=_basic(simulator),
    )


async def test_openid_configuration_points_at_the_simulator(
    client: httpx.AsyncClient, simulator: SimulatorServer
) -> None:
    response = await client.get("/common/v2.0/.well-known/openid-configuration")
    assert response.status_code == 200
    config = response.json()
    assert config["token_endpoint"] == f"{simulator.base_url}/common/oauth2/v2.0/token"
    assert config["authorization_endpoint"].startswith(simulator.base_url)
    assert (
        await client.get("/no-such-tenant/v2.0/.well-known/openid-configuration")
    ).status_code == 400


async def test_refresh_rotates_and_old_token_works_only_within_grace(
    client: httpx.AsyncClient, simulator: SimulatorServer, grace: None
) -> None:
    account = await create_account(client, message_count=5, token_lifetime=1234)
    before = simulator.sim.core.counters.token_requests

    first = await _refresh(client, simulator, account["refresh_token"])
    assert first.status_code == 200, first.text
    body = first.json()
    assert body["token_type"] == "Bearer"
    assert body["expires_in"] == 1234
    assert body["refresh_token"] != account["refresh_token"]
    assert first.headers["cache-control"] == "no-store"

    # Inside the grace the superseded token still works and hands back the current one.
    again = await _refresh(client, simulator, account["refresh_token"])
    assert again.status_code == 200
    assert again.json()["refresh_token"] == body["refresh_token"]

    await client.put("/_sim/microsoft/settings", json={"refresh_token_grace_seconds": 0})
    late = await _refresh(client, simulator, account["refresh_token"])
    assert late.status_code == 400
    error = late.json()
    assert error["error"] == "invalid_grant"
    assert error["error_codes"] == [70000]
    assert error["error_description"].startswith("AADSTS70000:")

    # The newest token keeps rotating.
    newest = await _refresh(client, simulator, body["refresh_token"])
    assert newest.status_code == 200
    assert simulator.sim.core.counters.token_requests == before + 4
    assert counters(simulator, account["counter_key"])["token_refreshes"] == 3


async def test_revoked_and_expired_grants_are_invalid_grant_with_aadsts_codes(
    client: httpx.AsyncClient, simulator: SimulatorServer
) -> None:
    revoked = await create_account(client, message_count=1)
    await client.post(f"/_sim/microsoft/accounts/{revoked['user_id']}/revoke")
    response = await _refresh(client, simulator, revoked["refresh_token"])
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_grant"
    assert response.json()["error_codes"] == [50173]

    expired = await create_account(client, message_count=1)
    await client.post(f"/_sim/microsoft/accounts/{expired['user_id']}/expire-grants")
    response = await _refresh(client, simulator, expired["refresh_token"])
    error = response.json()
    assert error["error_codes"] == [700082]
    # Entra's description: CRLF-separated lines, a timestamp inside the first one too.
    description = error["error_description"]
    first, trace, correlation, stamp = description.split("\r\n")
    assert first.startswith("AADSTS700082: The refresh token has expired due to inactivity.")
    assert "The token was issued on" in first
    assert trace.startswith("Trace ID: ") and correlation.startswith("Correlation ID: ")
    assert stamp.startswith("Timestamp: ")

    # A new consent gives a working grant again.
    fresh = (await client.post(f"/_sim/microsoft/accounts/{revoked['user_id']}/grants")).json()
    assert (await _refresh(client, simulator, fresh["refresh_token"])).status_code == 200


async def test_client_authentication_is_checked(
    client: httpx.AsyncClient, simulator: SimulatorServer
) -> None:
    account = await create_account(client, message_count=1)
    wrong = base64.b64encode(f"{simulator.sim.client_id}:nope".encode()).decode()
    response = await client.post(
        "/common/oauth2/v2.0/token",
        data={"grant_type": "refresh_token", "refresh_token": account["refresh_token"]},
        headers={"Authorization": f"Basic {wrong}"},
    )
    assert response.status_code == 401
    assert response.json()["error"] == "invalid_client"
    # client_secret_post is accepted too.
    response = await client.post(
        "/common/oauth2/v2.0/token",
        data={
            "grant_type": "refresh_token",
            "refresh_token": account["refresh_token"],
            "client_id": simulator.sim.client_id,
            "client_secret": simulator.sim.client_secret,
        },
    )
    assert response.status_code == 200


async def test_client_credentials_needs_a_tenant_and_the_default_scope(
    client: httpx.AsyncClient, simulator: SimulatorServer
) -> None:
    account = await create_account(client, message_count=3)
    tenant = account["tenant_id"]

    async def token(tenant_ref: str, scope: str) -> httpx.Response:
        return await client.post(
            f"/{tenant_ref}/oauth2/v2.0/token",
            data={"grant_type": "client_credentials", "scope": scope},
            headers=_basic(simulator),
        )

    ok = await token(tenant, "https://graph.microsoft.com/.default")
    assert ok.status_code == 200
    assert "refresh_token" not in ok.json()
    app_token = ok.json()["access_token"]
    profile = await client.get(
        f"/v1.0/users/{account['email']}", headers={"Authorization": f"Bearer {app_token}"}
    )
    assert profile.status_code == 200
    assert profile.json()["id"] == account["user_id"]

    assert (await token(tenant, "https://graph.microsoft.com/Mail.Read")).json()["error"] == (
        "invalid_scope"
    )
    assert (await token("common", "https://graph.microsoft.com/.default")).status_code == 400


async def test_msal_confidential_client_talks_to_the_simulator(
    client: httpx.AsyncClient, simulator: SimulatorServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(simulator.ca_path))
    account = await create_account(client, message_count=1)

    def acquire() -> tuple[dict[str, Any], dict[str, Any]]:
        delegated = msal.ConfidentialClientApplication(
            simulator.sim.client_id,
            client_credential=simulator.sim.client_secret,
            authority=f"{simulator.base_url}/common",
            instance_discovery=False,
        )
        app_only = msal.ConfidentialClientApplication(
            simulator.sim.client_id,
            client_credential=simulator.sim.client_secret,
            authority=f"{simulator.base_url}/{account['tenant_id']}",
            instance_discovery=False,
        )
        try:
            return (
                delegated.acquire_token_by_refresh_token(
                    account["refresh_token"], scopes=["https://graph.microsoft.com/.default"]
                ),
                app_only.acquire_token_for_client(scopes=["https://graph.microsoft.com/.default"]),
            )
        finally:
            delegated.http_client.close()
            app_only.http_client.close()

    delegated, app_only = await asyncio.to_thread(acquire)
    assert "access_token" in delegated, delegated
    assert delegated["refresh_token"] != account["refresh_token"]
    assert delegated["id_token_claims"]["oid"] == account["user_id"]
    assert "access_token" in app_only, app_only
