"""Access tokens read from the store at use time, refreshed near expiry, one refresh at a time.

Providers call `TokenSource.get()` before every request and never keep the result, so a
token minted before a long sync is never sent after it expires. A refresh happens inside a
transaction holding the credential row lock: a second worker waiting on the lock then finds
the fresh token instead of spending a refresh token the provider has already rotated.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import TypeVar

from app.db.repositories.credentials import CredentialRepository, StoredCredential
from app.metrics import TOKEN_REFRESHES
from app.providers.base import (
    AccessDenied,
    AccessTokenRejected,
    Account,
    AuthExpiredError,
    MailProvider,
    ProviderError,
    TokenSet,
)
from app.sync import activity
from app.sync.runtime import Runtime

log = logging.getLogger(__name__)

T = TypeVar("T")


class MissingCredentials(AuthExpiredError):
    """The mailbox has no stored credentials (disconnected meanwhile)."""


class TokenSource:
    def __init__(
        self,
        rt: Runtime,
        mailbox_id: uuid.UUID,
        account: Account,
        provider: MailProvider,
        *,
        credential: StoredCredential | None = None,
    ):
        """`credential`: the stored row as the caller just read it; used while fresh, like
        one this source read itself."""
        self._rt = rt
        self._mailbox_id = mailbox_id
        self._account = account
        self._provider = provider
        self._margin = timedelta(seconds=rt.settings.token_refresh_margin_seconds)
        self._cached: StoredCredential | None = credential
        self._lock = asyncio.Lock()
        self.refreshes = 0

    def _fresh(self, cred: StoredCredential | None) -> bool:
        if cred is None or cred.expires_at is None:
            return False
        return cred.expires_at - datetime.now(UTC) > self._margin

    async def get(self) -> str:
        if self._fresh(self._cached):
            assert self._cached is not None
            return self._cached.access_token
        async with self._lock:
            if self._fresh(self._cached):
                assert self._cached is not None
                return self._cached.access_token
            async with self._rt.sessions() as session:
                cred = await CredentialRepository(session, self._rt.cipher).get(self._mailbox_id)
            if self._fresh(cred):
                assert cred is not None
                self._cached = cred
                return cred.access_token
            return await self._refresh(rejected=None)

    async def after_rejection(self, rejected: str | None = None) -> str:
        """The provider answered 401: refresh once, unless someone already did."""
        async with self._lock:
            return await self._refresh(
                rejected=rejected or (self._cached.access_token if self._cached else None)
            )

    async def _counted_refresh(self, refresh_token: str | None) -> TokenSet:
        provider = self._account.provider
        try:
            tokens = await self._provider.refresh_token(self._account, refresh_token)
        except AuthExpiredError:
            TOKEN_REFRESHES.labels(provider, "auth_expired").inc()
            self._rt.activity.add(activity.TOKEN_REFRESH_FAILURES)
            raise
        except ProviderError:
            TOKEN_REFRESHES.labels(provider, "failed").inc()
            self._rt.activity.add(activity.TOKEN_REFRESH_FAILURES)
            raise
        TOKEN_REFRESHES.labels(provider, "ok").inc()
        self._rt.activity.add(activity.TOKEN_REFRESHES)
        return tokens

    async def _refresh(self, rejected: str | None) -> str:
        async with self._rt.sessions() as session, session.begin():
            repo = CredentialRepository(session, self._rt.cipher)
            cred = await repo.get(self._mailbox_id, for_update=True)
            if cred is None:
                raise MissingCredentials("mailbox has no credentials; reconnect it")
            if rejected is None and self._fresh(cred):
                self._cached = cred
                return cred.access_token
            if rejected is not None and cred.access_token != rejected and self._fresh(cred):
                self._cached = cred
                return cred.access_token
            tokens = await self._counted_refresh(cred.refresh_token)
            refresh_token = tokens.refresh_token or cred.refresh_token
            await repo.put(
                self._mailbox_id,
                access_token=tokens.access_token,
                refresh_token=refresh_token,
                expires_at=tokens.expires_at,
            )
            self.refreshes += 1
            log.info("refreshed access token for mailbox %s", self._mailbox_id)
        self._cached = StoredCredential(
            tokens.access_token, refresh_token, tokens.expires_at, cred.version + 1
        )
        return tokens.access_token


async def with_token_retry(tokens: TokenSource, call: Callable[[], Awaitable[T]]) -> T:
    """One refusal of the token earns one refresh and one retry; a second one means the grant
    (or, for an app-only mailbox, the application's permission) is unusable."""
    try:
        return await call()
    except AccessTokenRejected:
        await tokens.after_rejection()
        try:
            return await call()
        except AccessDenied as exc:
            raise AuthExpiredError(str(exc)) from exc
        except AccessTokenRejected as exc:
            raise AuthExpiredError(
                "the provider rejected a freshly refreshed access token; reconnect the mailbox"
            ) from exc
