"""Google's token endpoint (refresh grant only), revocation and the JWKS of its signing keys.

Google answers a refresh with a new access token and no new refresh token: refresh tokens
are not rotated. A revoked or unknown refresh token is `400 invalid_grant` ("Token has been
expired or revoked."), a wrong client `401 invalid_client`.
"""

from __future__ import annotations

import base64
from urllib.parse import parse_qs, unquote

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from app.simulator.app import Simulator
from app.simulator.google.state import GMAIL_SCOPE, GoogleState

_NO_STORE = {
    "Cache-Control": "no-cache, no-store, max-age=0, must-revalidate",
    "Pragma": "no-cache",
}


def _oauth_error(status: int, error: str, description: str) -> JSONResponse:
    return JSONResponse(
        {"error": error, "error_description": description}, status_code=status, headers=_NO_STORE
    )


def _client_credentials(request: Request, form: dict[str, str]) -> tuple[str, str]:
    """client_secret_post or client_secret_basic; Google accepts either."""
    scheme, _, value = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "basic" and value:
        try:
            user, _, password = base64.b64decode(value).decode().partition(":")
        except (ValueError, UnicodeDecodeError):
            return "", ""
        return unquote(user), unquote(password)
    return form.get("client_id", ""), form.get("client_secret", "")


def oauth_router(sim: Simulator, state: GoogleState) -> APIRouter:
    router = APIRouter(tags=["google-oauth"])

    @router.post("/token")
    async def token(request: Request) -> JSONResponse:
        sim.core.counters.token_requests += 1
        form = {k: v[0] for k, v in parse_qs((await request.body()).decode()).items()}
        client_id, client_secret = _client_credentials(request, form)
        if client_id != sim.client_id:
            return _oauth_error(401, "invalid_client", "The OAuth client was not found.")
        if client_secret != sim.client_secret:
            return _oauth_error(401, "invalid_client", "Unauthorized")
        grant_type = form.get("grant_type", "")
        if grant_type != "refresh_token":
            return _oauth_error(400, "unsupported_grant_type", f"Invalid grant_type: {grant_type}")
        refresh_token = form.get("refresh_token", "")
        if not refresh_token:
            return _oauth_error(400, "invalid_request", "Missing required parameter: refresh_token")
        account = state.account_for_refresh_token(refresh_token)
        if account is None:
            return _oauth_error(400, "invalid_grant", "Bad Request")
        sim.core.counters.for_account(account.counter_key).token_refreshes += 1
        if account.revoked:
            return _oauth_error(400, "invalid_grant", "Token has been expired or revoked.")
        issued = state.issue_access_token(account)
        return JSONResponse(
            {
                "access_token": issued.access_token,
                "expires_in": issued.expires_in,
                "scope": GMAIL_SCOPE,
                "token_type": "Bearer",
            },
            headers=_NO_STORE,
        )

    @router.post("/revoke")
    async def revoke(request: Request) -> JSONResponse:
        form = {k: v[0] for k, v in parse_qs((await request.body()).decode()).items()}
        token = form.get("token") or request.query_params.get("token", "")
        account = state.account_for_refresh_token(token) or state.account_for_access_token(token)
        if account is None:
            return _oauth_error(400, "invalid_token", "Token expired or revoked")
        state.revoke(account)
        return JSONResponse({})

    @router.get("/oauth2/v3/certs")
    async def certs() -> JSONResponse:
        return JSONResponse(
            state.keys.jwks(),
            headers={"Cache-Control": "public, max-age=19845, must-revalidate, no-transform"},
        )

    return router
