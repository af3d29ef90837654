"""A mailbox bound to its provider for one piece of work: the account the provider sees, the
tokens read at call time, and the per-mailbox rate gate every worker shares.

Every caller that talks to a provider for a mailbox (a slice, a window job, the completion
monitor, a case search, a push subscription, a read through the API) binds it here, so
they all keep the same limits and report throttling the same way.
"""

from __future__ import annotations

from typing import NamedTuple

from app.db.models import Mailbox
from app.db.repositories.credentials import StoredCredential
from app.metrics import RETRY_AFTER_SECONDS, THROTTLED
from app.providers.base import Account, MailProvider, SyncContext
from app.sync import activity
from app.sync.ratelimit import RedisRateGate
from app.sync.runtime import Runtime
from app.sync.tokens import TokenSource


def account_of(mailbox: Mailbox) -> Account:
    return Account(
        provider="google" if mailbox.provider == "google" else "microsoft",
        mailbox_id=str(mailbox.id),
        email=mailbox.email,
        auth_mode="application" if mailbox.auth_mode == "application" else "delegated",
        tenant_id=mailbox.tenant_id,
        provider_user_id=mailbox.provider_user_id,
    )


class Binding(NamedTuple):
    provider: MailProvider
    ctx: SyncContext
    tokens: TokenSource


def bind(
    rt: Runtime,
    mailbox: Mailbox,
    *,
    max_wait_seconds: float | None = None,
    credential: StoredCredential | None = None,
) -> Binding:
    """`max_wait_seconds`: a person waits for the answer (an API read), so a provider that
    would wait longer for its limits refuses (ThrottledError) instead. `credential`: the
    stored tokens, when the caller has just read them in its own transaction."""
    provider = rt.provider(mailbox.provider)
    account = account_of(mailbox)
    tokens = TokenSource(rt, mailbox.id, account, provider, credential=credential)
    name = mailbox.provider

    def throttled(seconds: float) -> None:
        THROTTLED.labels(name).inc()
        RETRY_AFTER_SECONDS.labels(name).observe(seconds)
        rt.activity.add(activity.THROTTLED)

    gate = RedisRateGate(
        rt.redis,
        str(mailbox.id),
        provider.limits(),
        # A slot outlives a worker that died holding it by at most a lease.
        slot_ttl_seconds=rt.settings.lease_seconds,
        on_pause=throttled,
        max_wait_seconds=max_wait_seconds,
    )
    ctx = SyncContext(
        account=account, access_token=tokens.get, gate=gate, max_wait=max_wait_seconds
    )
    return Binding(provider, ctx, tokens)
