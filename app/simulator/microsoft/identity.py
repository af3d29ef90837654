"""The Microsoft identity platform endpoints MSAL's ConfidentialClientApplication calls.

MSAL first reads `{authority}/v2.0/.well-known/openid-configuration` (and, unless
`instance_discovery=False`, `https://login.microsoftonline.com/common/discovery/instance`,
which only matters if a client points it here), then posts to the token endpoint with
HTTP Basic client authentication.
"""

from __future__ import annotations

import base64
import binascii
import json
import time
from datetime import UTC, datetime
from urllib.parse import parse_qs, unquote_plus

from fastapi import APIRouter, Request
from starlette.responses import Response

from app.simulator.app import Simulator
from app.simulator.microsoft.errors import aad_error, json_response
from app.simulator.microsoft.mailbox import Mailbox
from app.simulator.microsoft.state import (
    APP_MAIL_ROLE,
    DELEGATED_SCOPES,
    MicrosoftState,
    get_state,
)

_TENANT_ALIASES = frozenset({"common", "organizations", "consumers"})


def _b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def build_identity_router(sim: Simulator) -> APIRouter:
    state = get_state(sim)
    router = APIRouter(tags=["microsoft identity"])

    @router.get("/{tenant}/v2.0/.well-known/openid-configuration")
    async def openid_configuration(tenant: str) -> Response:
        if tenant.lower() not in _TENANT_ALIASES and state.find_tenant(tenant) is None:
            return aad_error(400, "invalid_tenant", 90002, f"Tenant '{tenant}' not found.")
        base = f"{sim.base_url}/{tenant}"
        issuer_tenant = "{tenantid}" if tenant.lower() in _TENANT_ALIASES else tenant
        return json_response(
            {
                "token_endpoint": f"{base}/oauth2/v2.0/token",
                "token_endpoint_auth_methods_supported": [
                    "client_secret_post", "private_key_jwt", "client_secret_basic",
                ],
                "jwks_uri": f"{base}/discovery/v2.0/keys",
                "response_modes_supported": ["query", "fragment", "form_post"],
                "subject_types_supported": ["pairwise"],
                "id_token_signing_alg_values_supported": ["RS256"],
                "response_types_supported": ["code", "id_token", "code id_token", "id_token token"],
                "scopes_supported": ["openid", "profile", "email", "offline_access"],
                "issuer": f"{sim.base_url}/{issuer_tenant}/v2.0",
                "request_uri_parameter_supported": False,
                "userinfo_endpoint": f"{sim.base_url}/oidc/userinfo",
                "authorization_endpoint": f"{base}/oauth2/v2.0/authorize",
                "device_authorization_endpoint": f"{base}/oauth2/v2.0/devicecode",
                "http_logout_supported": True,
                "frontchannel_logout_supported": True,
                "end_session_endpoint": f"{base}/oauth2/v2.0/logout",
                "claims_supported": ["sub", "iss", "aud", "exp", "iat", "oid", "tid", "name"],
                "kerberos_endpoint": f"{base}/kerberos",
                "tenant_region_scope": "EU",
                "cloud_instance_name": "microsoftonline.com",
                "cloud_graph_host_name": "graph.windows.net",
                "msgraph_host": "graph.microsoft.com",
            }
        )  # fmt: skip

    @router.get("/common/discovery/instance")
    async def instance_discovery(request: Request) -> Response:
        authorize = request.query_params.get("authorization_endpoint", "")
        tenant = authorize.split("/oauth2/")[0].rstrip("/").rsplit("/", 1)[-1] or "common"
        host = sim.base_url.split("://", 1)[1]
        return json_response(
            {
                "tenant_discovery_endpoint": (
                    f"{sim.base_url}/{tenant}/v2.0/.well-known/openid-configuration"
                ),
                "api-version": "1.1",
                "metadata": [
                    {"preferred_network": host, "preferred_cache": host, "aliases": [host]}
                ],
            }
        )

    @router.get("/{tenant}/discovery/v2.0/keys")
    async def keys(tenant: str) -> Response:
        return json_response({"keys": []})

    @router.post("/{tenant}/oauth2/v2.0/token")
    async def token(tenant: str, request: Request) -> Response:
        sim.core.counters.token_requests += 1
        form = {k: v[0] for k, v in parse_qs((await request.body()).decode()).items()}
        client_id, client_secret = _client_credentials(request, form)
        if client_id != sim.client_id:
            return aad_error(
                400, "unauthorized_client", 700016,
                f"Application with identifier '{client_id}' was not found in the directory "
                f"'{tenant}'.",
            )  # fmt: skip
        if client_secret != sim.client_secret:
            return aad_error(
                401, "invalid_client", 7000215,
                "Invalid client secret provided. Ensure the secret being sent in the request is "
                "the client secret value, not the client secret ID.",
            )  # fmt: skip
        grant_type = form.get("grant_type", "")
        if grant_type == "refresh_token":
            return _refresh(state, tenant, form)
        if grant_type == "client_credentials":
            return _client_credentials_grant(state, tenant, form)
        return aad_error(
            400, "unsupported_grant_type", 70003,
            f"The app requested an unsupported grant type '{grant_type}'.",
        )  # fmt: skip

    return router


def _client_credentials(request: Request, form: dict[str, str]) -> tuple[str, str]:
    header = request.headers.get("authorization", "")
    if header.lower().startswith("basic "):
        try:
            decoded = base64.b64decode(header[6:]).decode()
        except (binascii.Error, UnicodeDecodeError):
            return "", ""
        user, _, password = decoded.partition(":")
        # RFC 6749 2.3.1: both parts are form-encoded before Basic encoding.
        return unquote_plus(user), unquote_plus(password)
    return form.get("client_id", ""), form.get("client_secret", "")


def _tenant_ok(state: MicrosoftState, tenant: str, mailbox: Mailbox | None) -> bool:
    if tenant.lower() in _TENANT_ALIASES:
        return True
    found = state.find_tenant(tenant)
    return found is not None and (mailbox is None or found.tenant_id == mailbox.tenant_id)


def _refresh(state: MicrosoftState, tenant: str, form: dict[str, str]) -> Response:
    refresh_token = form.get("refresh_token", "")
    grant = state.grants.get(state.refresh_tokens.get(refresh_token, ""))
    if grant is None:
        return aad_error(
            400, "invalid_grant", 9002313, "Invalid request. Request is malformed or invalid."
        )
    mailbox = state.mailboxes[grant.user_id]
    if not _tenant_ok(state, tenant, mailbox):
        return aad_error(
            400, "invalid_grant", 50020,
            f"User account '{mailbox.email}' from identity provider does not exist in tenant "
            f"'{tenant}'.",
        )  # fmt: skip
    if grant.revoked:
        return aad_error(
            400, "invalid_grant", 50173,
            "The provided grant has expired due to it being revoked, a fresh auth token is "
            "needed. The user might have changed or reset their password.",
        )  # fmt: skip
    if grant.expired:
        issued = datetime.fromtimestamp(grant.issued_at, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f0Z")
        return aad_error(
            400, "invalid_grant", 700082,
            f"The refresh token has expired due to inactivity. The token was issued on {issued} "
            "and was inactive for 90.00:00:00.",
        )  # fmt: skip
    if refresh_token == grant.refresh_token:
        new_refresh_token = state.rotate(grant)
    else:
        superseded_at = grant.superseded[refresh_token]
        if time.time() - superseded_at > state.refresh_token_grace_seconds:
            return aad_error(
                400, "invalid_grant", 70000,
                "Provided grant is invalid or malformed: the refresh token was already "
                "redeemed and has been replaced.",
            )  # fmt: skip
        # Inside the grace a racing client gets tokens and the current refresh token.
        new_refresh_token = grant.refresh_token
    state.sim.core.counters.for_account(mailbox.counter_key).token_refreshes += 1
    access_token = state.issue_access_token(
        tenant_id=mailbox.tenant_id,
        user_id=mailbox.user_id,
        lifetime=mailbox.token_lifetime,
        grant_id=grant.grant_id,
    )
    body: dict[str, object] = {
        "token_type": "Bearer",
        "scope": DELEGATED_SCOPES,
        "expires_in": mailbox.token_lifetime,
        "ext_expires_in": mailbox.token_lifetime,
        "access_token": access_token,
        "refresh_token": new_refresh_token,
    }
    scopes = form.get("scope", "").split()
    if "openid" in scopes:
        body["id_token"] = _id_token(state, mailbox)
    if form.get("client_info") == "1":
        body["client_info"] = _b64url(
            json.dumps({"uid": mailbox.user_id, "utid": mailbox.tenant_id}).encode()
        )
    return json_response(body, headers={"Cache-Control": "no-store", "Pragma": "no-cache"})


def _client_credentials_grant(state: MicrosoftState, tenant: str, form: dict[str, str]) -> Response:
    scope = form.get("scope", "")
    if not scope or any(not s.endswith("/.default") for s in scope.split()):
        return aad_error(
            400, "invalid_scope", 1002012,
            f"The provided value for scope {scope} is not valid. Client credential flows must "
            "have a scope value with /.default suffixed to the resource identifier "
            "(application ID URI).",
        )  # fmt: skip
    found = None if tenant.lower() in _TENANT_ALIASES else state.find_tenant(tenant)
    if found is None:
        return aad_error(
            400, "invalid_request", 90002,
            f"Tenant '{tenant}' not found. Client credentials need a tenant identifier, not "
            "a multi-tenant alias.",
        )  # fmt: skip
    lifetime = found.app_token_lifetime
    access_token = state.issue_access_token(
        tenant_id=found.tenant_id,
        user_id=None,
        lifetime=lifetime,
        # The token endpoint still answers after consent is withdrawn, with no role.
        roles=(APP_MAIL_ROLE,) if found.app_consent else (),
    )
    return json_response(
        {
            "token_type": "Bearer",
            "expires_in": lifetime,
            "ext_expires_in": lifetime,
            "access_token": access_token,
        },
        headers={"Cache-Control": "no-store", "Pragma": "no-cache"},
    )


def _id_token(state: MicrosoftState, mailbox: Mailbox) -> str:
    now = int(time.time())
    claims = {
        "aud": state.sim.client_id,
        "iss": f"{state.sim.base_url}/{mailbox.tenant_id}/v2.0",
        "iat": now,
        "nbf": now,
        "exp": now + 3600,
        "name": mailbox.display_name,
        "oid": mailbox.user_id,
        "preferred_username": mailbox.email,
        "sub": mailbox.user_id,
        "tid": mailbox.tenant_id,
        "ver": "2.0",
    }
    header = _b64url(json.dumps({"typ": "JWT", "alg": "none"}).encode())
    # Unsigned: MSAL only decodes id_token claims, it does not validate them.
    return f"{header}.{_b64url(json.dumps(claims).encode())}."
