"""Everything the Microsoft half of the simulator holds, hung off `sim.extra["microsoft"]`."""

from __future__ import annotations

import secrets
import time
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from app.simulator.microsoft.mailbox import Mailbox

if TYPE_CHECKING:
    from app.simulator.app import Simulator
    from app.simulator.microsoft.subscriptions import GraphSubscription

DELEGATED_SCOPES = (
    "https://graph.microsoft.com/Mail.Read https://graph.microsoft.com/User.Read "
    "https://graph.microsoft.com/.default"
)


# The application permission app-only tokens carry while the tenant's admin consent holds.
APP_MAIL_ROLE = "Mail.Read"


@dataclass
class Tenant:
    tenant_id: str
    domain: str
    app_token_lifetime: int = 3599
    # Admin consent to the application permission Mail.Read. Entra writes the roles into a
    # token when it issues it: withdrawing consent leaves tokens already issued working
    # until they expire; tokens issued after it carry no role and Graph refuses them.
    app_consent: bool = True


@dataclass
class Grant:
    """A user's consent to our client; its refresh token rotates on every use."""

    grant_id: str
    user_id: str
    refresh_token: str
    # superseded refresh token -> wall time it was replaced
    superseded: dict[str, float] = field(default_factory=dict)
    revoked: bool = False
    expired: bool = False
    issued_at: float = field(default_factory=time.time)


@dataclass
class AccessToken:
    tenant_id: str
    # None for an app-only (client credentials) token.
    user_id: str | None
    expires_at: float
    grant_id: str | None = None
    # Application permissions (`roles` claim) of an app-only token, fixed at issue time.
    roles: tuple[str, ...] = ()

    @property
    def app_only(self) -> bool:
        return self.user_id is None


@dataclass
class Delivery:
    delivery_id: int
    subscription_id: str
    kind: str  # "validation" | "change" | "lifecycle"
    url: str
    value: list[dict[str, Any]]
    status: int | None = None
    attempts: int = 0
    error: str | None = None
    delivered_at: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "delivery_id": self.delivery_id,
            "subscription_id": self.subscription_id,
            "kind": self.kind,
            "url": self.url,
            "status": self.status,
            "attempts": self.attempts,
            "error": self.error,
            "delivered_at": self.delivered_at,
            "value": self.value,
        }


class MicrosoftState:
    def __init__(self, sim: Simulator) -> None:
        self.sim = sim
        self.mailboxes: dict[str, Mailbox] = {}
        self.user_ids_by_email: dict[str, str] = {}
        self.tenants: dict[str, Tenant] = {}
        self.grants: dict[str, Grant] = {}
        self.refresh_tokens: dict[str, str] = {}  # refresh token (current or superseded) -> grant
        self.access_tokens: dict[str, AccessToken] = {}
        self.subscriptions: dict[str, GraphSubscription] = {}
        self.deliveries: deque[Delivery] = deque(maxlen=10_000)
        self._delivery_ids = 0
        # Switches (PUT /_sim/microsoft/settings).
        self.refresh_token_grace_seconds = 5.0
        self.validation_timeout_seconds = 10.0
        # Graph sometimes validates the endpoint again when a subscription is renewed.
        self.revalidate_on_renew = False
        # "exchange": lifecycle notifications as Exchange sends them today (organizationId,
        # no tenantId); "documented": the shape in Graph's docs (tenantId).
        self.lifecycle_shape = "exchange"
        # Graph does not promise to deliver every change notification: while this is set,
        # changes happen without any (the periodic pass must still find them).
        self.drop_change_notifications = False
        self.notification_timeout_seconds = 3.0
        self.notification_retries = 2
        self.notification_retry_delay_seconds = 0.5

    # -- directory ----------------------------------------------------------------------

    def add_mailbox(self, mailbox: Mailbox, domain: str) -> None:
        self.mailboxes[mailbox.user_id] = mailbox
        self.user_ids_by_email[mailbox.email] = mailbox.user_id
        tenant = self.tenants.setdefault(mailbox.tenant_id, Tenant(mailbox.tenant_id, domain))
        tenant.domain = tenant.domain or domain

    def find_mailbox(self, ref: str) -> Mailbox | None:
        """By Graph user id or userPrincipalName (case-insensitive, as the directory does)."""
        mailbox = self.mailboxes.get(ref) or self.mailboxes.get(ref.lower())
        if mailbox is None:
            user_id = self.user_ids_by_email.get(ref.lower())
            mailbox = self.mailboxes.get(user_id) if user_id else None
        return mailbox

    def find_tenant(self, ref: str) -> Tenant | None:
        ref = ref.lower()
        for tenant in self.tenants.values():
            if ref in (tenant.tenant_id, tenant.domain):
                return tenant
        return None

    # -- tokens -------------------------------------------------------------------------

    def issue_grant(self, mailbox: Mailbox) -> Grant:
        grant = Grant(
            grant_id=secrets.token_hex(8), user_id=mailbox.user_id, refresh_token=_refresh_token()
        )
        self.grants[grant.grant_id] = grant
        self.refresh_tokens[grant.refresh_token] = grant.grant_id
        return grant

    def rotate(self, grant: Grant) -> str:
        old = grant.refresh_token
        grant.superseded[old] = time.time()
        grant.refresh_token = _refresh_token()
        self.refresh_tokens[grant.refresh_token] = grant.grant_id
        return grant.refresh_token

    def issue_access_token(
        self,
        *,
        tenant_id: str,
        user_id: str | None,
        lifetime: int,
        grant_id: str | None = None,
        roles: tuple[str, ...] = (),
    ) -> str:
        now = time.time()
        if len(self.access_tokens) > 50_000:
            self.access_tokens = {t: a for t, a in self.access_tokens.items() if a.expires_at > now}
        token = "EwB" + secrets.token_urlsafe(48)
        self.access_tokens[token] = AccessToken(tenant_id, user_id, now + lifetime, grant_id, roles)
        return token

    def next_delivery_id(self) -> int:
        self._delivery_ids += 1
        return self._delivery_ids


def _refresh_token() -> str:
    # Entra refresh tokens are opaque and start like this; nothing depends on it.
    return "0.AX" + secrets.token_urlsafe(64)


def get_state(sim: Simulator) -> MicrosoftState:
    state = sim.extra.get("microsoft")
    if state is None:
        state = MicrosoftState(sim)
        sim.extra["microsoft"] = state
    return state
