"""Tokens from the Microsoft identity platform through MSAL, off the event loop.

Delegated mailboxes redeem their refresh token (which Entra rotates); app-only mailboxes
use client credentials against their own tenant. MSAL is synchronous (requests), so every
call runs in a thread; `requests` trusts REQUESTS_CA_BUNDLE, which is how a local
simulator with its own CA stands in for login.microsoftonline.com.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import OrderedDict
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import msal
import requests

from app.config import Settings
from app.providers.base import (
    Account,
    AuthExpiredError,
    PermanentError,
    ProviderError,
    TokenSet,
    TransientError,
)
from app.providers.outlook.aadsts import aadsts_code, explain

log = logging.getLogger(__name__)

# Hosts MSAL can validate with instance discovery; anything else (a simulator, a private
# cloud proxy) is trusted as configured.
_MICROSOFT_AUTHORITY_HOSTS = frozenset(
    {
        "login.microsoftonline.com", "login.microsoft.com", "login.windows.net",
        "login.microsoftonline.us", "login.partner.microsoftonline.cn",
    }
)  # fmt: skip
# The user must sign in again; retrying with this grant will never work.
_REAUTH_ERRORS = frozenset(
    {"invalid_grant", "interaction_required", "consent_required", "login_required"}
)
_TRANSIENT_ERRORS = frozenset({"temporarily_unavailable", "server_error"})
_MAX_APPS = 64


class _NoTokenCache(msal.TokenCache):
    """MSAL would keep every mailbox's refresh and access tokens in process memory forever.

    The credential store is our cache (tokens are refreshed only near expiry or after a
    401), so nothing is remembered here.
    """

    def add(self, event: dict[str, Any], now: int | None = None) -> None:
        return None


class MsalTokens:
    def __init__(self, settings: Settings) -> None:
        self._client_id = settings.microsoft_client_id
        self._client_secret = settings.microsoft_client_secret
        self._host = settings.microsoft_authority_host.rstrip("/")
        self._delegated_tenant = settings.microsoft_tenant
        graph = urlsplit(settings.graph_base_url)
        # ".default" of the Graph resource: every permission the grant (or admin) consented to.
        self._scopes = [f"{graph.scheme}://{graph.netloc}/.default"]
        self._instance_discovery = urlsplit(self._host).hostname in _MICROSOFT_AUTHORITY_HOSTS
        self._apps: OrderedDict[str, msal.ConfidentialClientApplication] = OrderedDict()
        self._lock = threading.Lock()

    async def refresh(self, account: Account, refresh_token: str | None) -> TokenSet:
        if account.auth_mode == "application":
            if not account.tenant_id:
                raise PermanentError("an app-only Microsoft mailbox needs its tenant id")
            return await asyncio.to_thread(self._for_client, account.tenant_id)
        if not refresh_token:
            raise AuthExpiredError("no Microsoft refresh token is stored; reconnect the mailbox")
        return await asyncio.to_thread(self._by_refresh_token, refresh_token)

    def close(self) -> None:
        with self._lock:
            apps = list(self._apps.values())
            self._apps.clear()
        for app in apps:
            app.http_client.close()

    # -- in worker threads --------------------------------------------------------------

    def _app(self, tenant: str) -> msal.ConfidentialClientApplication:
        authority = f"{self._host}/{tenant}"
        with self._lock:
            app = self._apps.get(authority)
            if app is not None:
                self._apps.move_to_end(authority)
                return app
        # Construction fetches the tenant's OpenID configuration; a failure is not cached.
        app = msal.ConfidentialClientApplication(
            self._client_id,
            client_credential=self._client_secret,
            authority=authority,
            instance_discovery=None if self._instance_discovery else False,
            token_cache=_NoTokenCache(),
            timeout=30,
        )
        with self._lock:
            existing = self._apps.setdefault(authority, app)
            while len(self._apps) > _MAX_APPS:
                _, evicted = self._apps.popitem(last=False)
                evicted.http_client.close()
        if existing is not app:
            app.http_client.close()
        return existing

    def _by_refresh_token(self, refresh_token: str) -> TokenSet:
        def call() -> dict[str, Any]:
            app = self._app(self._delegated_tenant)
            result: dict[str, Any] = app.acquire_token_by_refresh_token(
                refresh_token, scopes=self._scopes
            )
            return result

        return _token_set(_guarded(call))

    def _for_client(self, tenant: str) -> TokenSet:
        def call() -> dict[str, Any]:
            app = self._app(tenant)
            result: dict[str, Any] = app.acquire_token_for_client(scopes=self._scopes)
            return result

        return _token_set(_guarded(call))


def _guarded(call: Any) -> dict[str, Any]:
    try:
        result: dict[str, Any] = call()
    except requests.RequestException as exc:
        raise TransientError(f"Microsoft token endpoint unreachable: {type(exc).__name__}") from exc
    except msal.exceptions.MsalServiceError as exc:
        # MSAL raises this for a 5xx from the token endpoint.
        raise TransientError(f"Microsoft token endpoint error: {exc}") from exc
    except ValueError as exc:
        # Authority discovery refused the tenant (it does not exist, or a typo).
        raise PermanentError(f"Microsoft authority rejected: {exc}") from exc
    return result


def _token_set(result: dict[str, Any]) -> TokenSet:
    if "access_token" in result:
        expires_in = int(result.get("expires_in", 3600))
        return TokenSet(
            access_token=result["access_token"],
            expires_at=datetime.now(UTC) + timedelta(seconds=expires_in),
            refresh_token=result.get("refresh_token"),
        )
    raise _token_error(result)


def _token_error(result: dict[str, Any]) -> ProviderError:
    error = str(result.get("error", "unknown_error"))
    description = str(result.get("error_description", ""))
    message = explain(error, description, result.get("error_codes"))
    # The ids Microsoft support asks for stay in the log, off the user's status line.
    log.warning(
        "microsoft token request failed: %s %s (trace %s, correlation %s)",
        error,
        aadsts_code(description, result.get("error_codes")),
        result.get("trace_id"),
        result.get("correlation_id"),
    )
    if error in _REAUTH_ERRORS:
        return AuthExpiredError(message)
    if error in _TRANSIENT_ERRORS:
        return TransientError(message)
    return PermanentError(message)
