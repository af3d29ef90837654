"""Refresh a Google OAuth grant (RFC 6749 refresh_token grant against GOOGLE_TOKEN_URL)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import httpx

from app.config import Settings
from app.providers.base import AuthExpiredError, TokenSet, TransientError
from app.providers.gmail.errors import classify_token_error


async def refresh_access_token(
    settings: Settings, http: httpx.AsyncClient, refresh_token: str | None
) -> TokenSet:
    if not refresh_token:
        raise AuthExpiredError("no Google refresh token is stored; reconnect the mailbox")
    form = {
        "grant_type": "refresh_token",
        "client_id": settings.google_client_id,
        "client_secret": settings.google_client_secret,
        "refresh_token": refresh_token,
    }
    try:
        response = await http.post(
            settings.google_token_url, data=form, headers={"Accept": "application/json"}
        )
    except httpx.HTTPError as exc:
        # Not chained: the failed request object carries the refresh token in its body.
        raise TransientError(f"Google token endpoint: {type(exc).__name__}") from None
    if response.status_code == 200:
        body = response.json()
        expires_in = int(body.get("expires_in") or 3600)
        return TokenSet(
            access_token=body["access_token"],
            expires_at=datetime.now(UTC) + timedelta(seconds=expires_in),
            # Google does not rotate refresh tokens; keep the stored one unless sent anew.
            refresh_token=body.get("refresh_token") or None,
        )
    raise classify_token_error(response.status_code, response.content)
