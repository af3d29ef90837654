"""Google's token endpoint, revocation and JWKS as the simulator serves them."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from app.simulator.server import SimulatorServer
from tests.providers.gmail.sim import GoogleSim, SimAccount, google_sim

PROFILE = "/gmail/v1/users/me/profile"


@pytest.fixture
async def sim(simulator: SimulatorServer) -> AsyncIterator[GoogleSim]:
    async with google_sim(simulator) as client:
        yield client


async def _refresh(sim: GoogleSim, refresh_token: str, **overrides: str) -> httpx.Response:
    form = {
        "grant_type": "refresh_token",
        "client_id": sim.server.sim.client_id,
        "client_secret": sim.server.sim.client_secret,
        "refresh_token": refresh_token,
        **overrides,
    }
    return await sim.http.post("/token", data=form)


async def _counters(sim: GoogleSim) -> dict[str, Any]:
    result: dict[str, Any] = (await sim.http.get("/_sim/counters")).json()
    return result


async def test_refresh_issues_a_working_token_and_keeps_the_refresh_token(sim: GoogleSim) -> None:
    account = await sim.create_account(messages=5)
    before = (await _counters(sim))["token_requests"]
    response = await _refresh(sim, account.refresh_token)
    assert response.status_code == 200
    body = response.json()
    assert set(body) == {"access_token", "expires_in", "scope", "token_type"}
    assert body["token_type"] == "Bearer" and body["expires_in"] == 3599
    assert body["access_token"] != account.access_token
    profile = await sim.http.get(
        PROFILE, headers={"Authorization": f"Bearer {body['access_token']}"}
    )
    assert profile.status_code == 200
    # The old access token is still valid until it expires: Google does not revoke it.
    assert (await sim.http.get(PROFILE, headers=account.auth)).status_code == 200
    # Refresh tokens are not rotated: the same one works again.
    assert (await _refresh(sim, account.refresh_token)).status_code == 200
    assert (await _counters(sim))["token_requests"] == before + 2
    assert (await sim.counters(account.email))["token_refreshes"] == 2


async def test_access_token_lifetime_is_per_account(sim: GoogleSim) -> None:
    account = await sim.create_account(messages=5, access_token_lifetime=120)
    assert (await _refresh(sim, account.refresh_token)).json()["expires_in"] == 120


async def test_revoked_grant_is_invalid_grant(sim: GoogleSim) -> None:
    account = await sim.create_account(messages=5)
    await sim.revoke(account.email)
    response = await _refresh(sim, account.refresh_token)
    assert response.status_code == 400
    assert response.json() == {
        "error": "invalid_grant",
        "error_description": "Token has been expired or revoked.",
    }
    # Revocation takes the access tokens with it.
    assert (await sim.http.get(PROFILE, headers=account.auth)).status_code == 401


async def test_unknown_refresh_token_and_bad_clients(sim: GoogleSim) -> None:
    account = await sim.create_account(messages=5)
    unknown = await _refresh(sim, "1//0-not-a-token")
    assert unknown.status_code == 400 and unknown.json()["error"] == "invalid_grant"
    wrong_secret = await _refresh(sim, account.refresh_token, client_secret="nope")
    assert wrong_secret.status_code == 401 and wrong_secret.json()["error"] == "invalid_client"
    wrong_client = await _refresh(sim, account.refresh_token, client_id="other")
    assert wrong_client.status_code == 401 and wrong_client.json()["error"] == "invalid_client"
    wrong_grant = await _refresh(sim, account.refresh_token, grant_type="password")
    assert wrong_grant.status_code == 400
    assert wrong_grant.json()["error"] == "unsupported_grant_type"
    basic = await sim.http.post(
        "/token",
        data={"grant_type": "refresh_token", "refresh_token": account.refresh_token},
        auth=(sim.server.sim.client_id, sim.server.sim.client_secret),
    )
    assert basic.status_code == 200


async def test_expired_access_token_is_401_unauthenticated(sim: GoogleSim) -> None:
    short_lived = await sim.create_account(messages=5, access_token_lifetime=0)
    response = await sim.http.get(PROFILE, headers=short_lived.auth)
    assert response.status_code == 401
    error = response.json()["error"]
    assert error["code"] == 401 and error["status"] == "UNAUTHENTICATED"
    assert error["errors"][0]["reason"] == "authError"
    assert response.headers["www-authenticate"].startswith("Bearer")

    account: SimAccount = await sim.create_account(messages=5)
    assert (await sim.http.get(PROFILE, headers=account.auth)).status_code == 200
    await sim.expire_tokens(account.email)
    assert (await sim.http.get(PROFILE, headers=account.auth)).status_code == 401


async def test_jwks_publishes_rs256_keys_with_kid(sim: GoogleSim) -> None:
    keys = (await sim.http.get("/oauth2/v3/certs")).json()["keys"]
    assert len(keys) >= 2
    for key in keys:
        assert key["kty"] == "RSA" and key["alg"] == "RS256" and key["use"] == "sig"
        assert key["kid"] and key["n"] and key["e"] == "AQAB"
    assert len({k["kid"] for k in keys}) == len(keys)
