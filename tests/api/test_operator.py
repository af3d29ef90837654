"""Who may connect a mailbox app-only: operators, for the tenants the deployment lists."""

from __future__ import annotations

import httpx

from app.config import Settings
from tests.conftest import bearer

TENANT = "contoso.onmicrosoft.com"
APP_ONLY = {
    "provider": "microsoft",
    "auth": "application",
    "tenant_id": TENANT,
    "user_id": "adele@contoso.com",
}


async def test_app_only_connect_needs_the_operator_role(
    api: httpx.AsyncClient, settings: Settings
) -> None:
    settings.microsoft_app_only_tenants = f"fabrikam.example, {TENANT.upper()}"
    refused = await api.post("/mail/connect", json=APP_ONLY, headers=bearer("mallory"))
    assert refused.status_code == 403
    assert refused.json()["error"]["code"] == "forbidden"
    assert "mailsync.operator" in refused.json()["error"]["message"]
    # A role the deployment does not use is no better.
    other = await api.post(
        "/mail/connect", json=APP_ONLY, headers=bearer("mallory", roles=["mail.reader"])
    )
    assert other.status_code == 403

    accepted = await api.post(
        "/mail/connect", json=APP_ONLY, headers=bearer("ops", roles=["mailsync.operator"])
    )
    assert accepted.status_code == 202, accepted.text
    # Some issuers put roles in one space-separated string.
    spaced = await api.post(
        "/mail/connect", json=APP_ONLY, headers=bearer("ops", roles="reader mailsync.operator")
    )
    assert spaced.status_code == 202


async def test_app_only_connect_only_for_listed_tenants(
    api: httpx.AsyncClient, settings: Settings
) -> None:
    operator = bearer("ops", roles=["mailsync.operator"])
    settings.microsoft_app_only_tenants = ""
    disabled = await api.post("/mail/connect", json=APP_ONLY, headers=operator)
    assert disabled.status_code == 403
    assert "disabled" in disabled.json()["error"]["message"]
    settings.microsoft_app_only_tenants = "fabrikam.example"
    elsewhere = await api.post("/mail/connect", json=APP_ONLY, headers=operator)
    assert elsewhere.status_code == 403
    assert elsewhere.json()["error"]["code"] == "tenant_not_allowed"


async def test_the_role_claim_is_configurable(api: httpx.AsyncClient, settings: Settings) -> None:
    settings.microsoft_app_only_tenants = TENANT
    settings.auth_roles_claim = "groups"
    settings.auth_operator_role = "mail-admins"
    assert (
        await api.post(
            "/mail/connect", json=APP_ONLY, headers=bearer("ops", roles=["mailsync.operator"])
        )
    ).status_code == 403
    assert (
        await api.post(
            "/mail/connect", json=APP_ONLY, headers=bearer("ops", groups=["mail-admins"])
        )
    ).status_code == 202


async def test_delegated_connect_needs_no_role(api: httpx.AsyncClient) -> None:
    body = {
        "provider": "google",
        "access_token": "a",
        "refresh_token": "r",
        "expires_in": 3600,
        "email": "bob@example.com",
    }
    assert (await api.post("/mail/connect", json=body, headers=bearer("bob"))).status_code == 202
