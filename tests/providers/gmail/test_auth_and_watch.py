"""Token refresh and users.watch/stop through GmailProvider, against the simulator."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import httpx
import pytest

from app.config import Settings
from app.providers.base import (
    Account,
    AuthExpiredError,
    MailProvider,
    PermanentError,
    TransientError,
)
from app.providers.gmail.provider import GmailProvider
from app.providers.registry import build_provider
from tests.providers.gmail.conftest import MakeHarness
from tests.providers.gmail.sim import GoogleSim

ACCOUNT = Account(provider="google", mailbox_id="m-1", email=None)


async def test_refresh_returns_a_token_and_keeps_the_refresh_token(
    sim: GoogleSim, provider: GmailProvider
) -> None:
    account = await sim.create_account(messages=5, access_token_lifetime=1800)
    tokens = await provider.refresh_token(ACCOUNT, account.refresh_token)
    assert tokens.refresh_token is None  # Google does not rotate
    assert tokens.access_token and tokens.access_token != account.access_token
    remaining = tokens.expires_at - datetime.now(UTC)
    assert timedelta(minutes=29) < remaining <= timedelta(minutes=30)
    profile = await sim.http.get(
        "/gmail/v1/users/me/profile", headers={"Authorization": f"Bearer {tokens.access_token}"}
    )
    assert profile.status_code == 200


async def test_revoked_grant_is_auth_expired_with_googles_words(
    sim: GoogleSim, provider: GmailProvider
) -> None:
    account = await sim.create_account(messages=5)
    await sim.revoke(account.email)
    with pytest.raises(AuthExpiredError) as raised:
        await provider.refresh_token(ACCOUNT, account.refresh_token)
    message = str(raised.value)
    assert "invalid_grant" in message and "Token has been expired or revoked." in message
    assert account.refresh_token not in message
    with pytest.raises(AuthExpiredError):
        await provider.refresh_token(ACCOUNT, None)


async def test_wrong_client_is_permanent_and_network_trouble_transient(
    gmail_settings: Settings, http: httpx.AsyncClient, sim: GoogleSim
) -> None:
    account = await sim.create_account(messages=5)
    wrong = gmail_settings.model_copy(update={"google_client_secret": "not-it"})
    with pytest.raises(PermanentError, match="invalid_client"):
        await GmailProvider(wrong, http).refresh_token(ACCOUNT, account.refresh_token)
    unreachable = gmail_settings.model_copy(
        update={"google_token_url": "https://127.0.0.1:9/token"}
    )
    with pytest.raises(TransientError):
        await GmailProvider(unreachable, http).refresh_token(ACCOUNT, account.refresh_token)


async def test_watch_renew_and_stop(sim: GoogleSim, harness: MakeHarness) -> None:
    h = await harness(messages=5)
    subscription = await h.provider.subscribe(h.ctx)
    assert subscription is not None
    # Our bookkeeping is per mailbox; the channel (Google's one watch per address) is shared.
    assert subscription.subscription_id == f"watch:{h.account.email}:{h.ctx.account.mailbox_id}"
    assert subscription.channel == f"gmail-watch:{h.account.email}"
    assert subscription.resource == "projects/mailsync-sim/topics/gmail"
    assert subscription.extra["history_id"] == str(h.account.history_id)
    lifetime = subscription.expires_at - datetime.now(UTC)
    assert timedelta(days=6, hours=23) < lifetime <= timedelta(days=7)
    watch = (await sim.account(h.account.email))["watch"]
    assert watch["topic_name"] == subscription.resource

    renewed = await h.provider.renew(h.ctx, subscription)
    assert renewed.expires_at >= subscription.expires_at
    await h.provider.unsubscribe(h.ctx, renewed)
    assert (await sim.account(h.account.email))["watch"] is None
    # Stopping a watch Gmail no longer has is not an error.
    await h.provider.unsubscribe(h.ctx, renewed)


async def test_no_topic_means_no_push(
    gmail_settings: Settings, http: httpx.AsyncClient, harness: MakeHarness
) -> None:
    h = await harness(messages=5)
    provider = GmailProvider(gmail_settings.model_copy(update={"gmail_pubsub_topic": ""}), http)
    assert await provider.subscribe(h.ctx) is None
    assert provider.limits().units_per_second == 250


def test_registry_builds_it_and_it_keeps_the_contract(
    gmail_settings: Settings, http: httpx.AsyncClient
) -> None:
    provider = build_provider("google", gmail_settings, http)
    assert isinstance(provider, GmailProvider)
    assert isinstance(provider, MailProvider)
    assert provider.name == "google"
