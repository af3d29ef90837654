"""OutlookProvider.refresh_token through MSAL against the simulated identity platform."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta

import httpx
import pytest

from app.config import Settings
from app.providers.base import Account, AuthExpiredError, PermanentError
from app.providers.outlook.provider import OutlookProvider
from app.simulator.server import SimulatorServer
from tests.providers.outlook.conftest import Mailbox
from tests.providers.outlook.support import counters, create_account

Connect = Callable[..., Mailbox]


@pytest.fixture
async def short_grace(client: httpx.AsyncClient) -> AsyncIterator[None]:
    yield
    await client.put("/_sim/microsoft/settings", json={"refresh_token_grace_seconds": 5.0})


async def test_refresh_rotates_and_the_old_token_is_refused_after_the_grace(
    client: httpx.AsyncClient,
    connect: Connect,
    simulator: SimulatorServer,
    short_grace: None,
) -> None:
    sim_account = await create_account(client, message_count=5, token_lifetime=900)
    mailbox = connect(sim_account)
    tokens = await mailbox.provider.refresh_token(mailbox.account, sim_account["refresh_token"])
    assert tokens.refresh_token and tokens.refresh_token != sim_account["refresh_token"]
    assert tokens.access_token != sim_account["access_token"]
    expected = datetime.now(UTC) + timedelta(seconds=900)
    assert abs((tokens.expires_at - expected).total_seconds()) < 30
    # The new access token works against Graph.
    mailbox.access_token = tokens.access_token
    assert await mailbox.provider.list_streams(mailbox.ctx)
    assert counters(simulator, sim_account["counter_key"])["token_refreshes"] == 1

    await client.put("/_sim/microsoft/settings", json={"refresh_token_grace_seconds": 0})
    with pytest.raises(AuthExpiredError) as refused:
        await mailbox.provider.refresh_token(mailbox.account, sim_account["refresh_token"])
    assert "AADSTS70000" in str(refused.value)
    assert sim_account["refresh_token"] not in str(refused.value)
    # The rotated one keeps working.
    again = await mailbox.provider.refresh_token(mailbox.account, tokens.refresh_token)
    assert again.refresh_token not in (None, tokens.refresh_token)


async def test_revoked_grant_is_auth_expired_with_the_aadsts_code(
    client: httpx.AsyncClient, connect: Connect
) -> None:
    sim_account = await create_account(client, message_count=5)
    mailbox = connect(sim_account)
    await client.post(f"/_sim/microsoft/accounts/{sim_account['user_id']}/revoke")
    with pytest.raises(AuthExpiredError) as revoked:
        await mailbox.provider.refresh_token(mailbox.account, sim_account["refresh_token"])
    message = str(revoked.value)
    # One clean line: the code, what happened, what to do; none of Entra's CRLF lines.
    assert message == (
        "Microsoft refused the token request (AADSTS50173): The provided grant has expired "
        "due to it being revoked, a fresh auth token is needed. Reconnect the mailbox (sign "
        "in to Microsoft again)."
    )
    assert sim_account["refresh_token"] not in message


async def test_expired_grant_is_auth_expired(client: httpx.AsyncClient, connect: Connect) -> None:
    sim_account = await create_account(client, message_count=5)
    mailbox = connect(sim_account)
    await client.post(f"/_sim/microsoft/accounts/{sim_account['user_id']}/expire-grants")
    with pytest.raises(AuthExpiredError) as expired:
        await mailbox.provider.refresh_token(mailbox.account, sim_account["refresh_token"])
    message = str(expired.value)
    assert message == (
        "Microsoft refused the token request (AADSTS700082): The refresh token has expired "
        "due to inactivity. Reconnect the mailbox (sign in to Microsoft again)."
    )
    assert not any(c in message for c in "\r\n")
    with pytest.raises(AuthExpiredError):
        await mailbox.provider.refresh_token(mailbox.account, None)


async def test_app_only_uses_client_credentials_for_the_mailbox_tenant(
    client: httpx.AsyncClient, connect: Connect
) -> None:
    sim_account = await create_account(client, message_count=5, app_token_lifetime=600)
    mailbox = connect(sim_account, app_only=True)
    tokens = await mailbox.provider.refresh_token(mailbox.account, None)
    assert tokens.refresh_token is None
    assert tokens.expires_at - datetime.now(UTC) < timedelta(seconds=601)

    no_tenant = connect(sim_account | {"tenant_id": None}, app_only=True)
    with pytest.raises(PermanentError):
        await no_tenant.provider.refresh_token(no_tenant.account, None)


async def test_wrong_client_secret_is_a_permanent_error(
    client: httpx.AsyncClient,
    simulator: SimulatorServer,
    outlook_settings: Settings,
    requests_trusts_simulator: None,
) -> None:
    sim_account = await create_account(client, message_count=1)
    account = Account(provider="microsoft", mailbox_id="m", email=sim_account["email"])
    settings = outlook_settings.model_copy(update={"microsoft_client_secret": "wrong"})
    async with httpx.AsyncClient(verify=simulator.ssl_context()) as http:
        provider = OutlookProvider(settings, http)
        try:
            with pytest.raises(PermanentError, match="AADSTS7000215"):
                await provider.refresh_token(account, sim_account["refresh_token"])
        finally:
            await provider.aclose()
