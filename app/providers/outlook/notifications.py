"""Parsing Graph change and lifecycle notifications; pure functions for the webhook route.

Graph posts `{"value": [...]}`; change notifications carry `changeType` and `resourceData`,
lifecycle notifications (`reauthorizationRequired`, `subscriptionRemoved`, `missed`) carry
`lifecycleEvent` instead. Every item carries the clientState we chose at subscription time,
which is how a notification proves it came from Graph.

Anyone can post to the webhook, so the parser is the first line against hostile bodies:
orjson refuses invalid UTF-8, lone surrogates and nesting deeper than 1024 levels, every
string we keep must be a bounded string without NUL (PostgreSQL text cannot hold one), and
a body with more notifications than Graph batches is refused whole.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from typing import Any

import orjson

from app.providers.base import EVERY_STREAM, ChangeHint

# Graph's validation handshake arrives as POST ...?validationToken=<url-encoded token>.
VALIDATION_TOKEN_PARAM = "validationToken"  # noqa: S105 - a query parameter name
# Graph batches notifications per POST, a few dozen at most in practice; a thousand items
# is no delivery of Graph's.
MAX_NOTIFICATIONS = 1000
# Subscription ids are GUIDs, resource paths a few hundred characters, clientState at most
# 128 characters (Graph's limit); anything far longer is not Graph's.
MAX_STRING = 2048


@dataclass(frozen=True, slots=True)
class GraphNotification:
    subscription_id: str
    client_state: str | None
    change_type: str | None
    resource: str | None
    resource_id: str | None
    # None for change notifications.
    lifecycle_event: str | None
    # tenantId; Exchange's lifecycle notifications carry organizationId instead.
    tenant_id: str | None
    # resourceData's @odata.etag: a message's version, so two updates of one message are
    # told apart from one update delivered twice.
    etag: str | None = None

    @property
    def kind(self) -> str:
        if self.lifecycle_event:
            return f"lifecycle:{self.lifecycle_event}"
        return f"change:{self.change_type}"

    @property
    def dedup_key(self) -> str | None:
        """Equal for a redelivery of the same change notification (None for lifecycle)."""
        if self.lifecycle_event:
            return None
        identity = "\x1f".join(
            (
                self.subscription_id,
                self.change_type or "",
                self.resource_id or self.resource or "",
                self.etag or "",
            )
        )
        return "graph:" + hashlib.sha256(identity.encode()).hexdigest()[:32]

    @property
    def hint(self) -> ChangeHint:
        """The notified message; its folder is found at pass time (our store knows where a
        synced message was; Graph, where a new or moved one is now). A lifecycle event, or
        a change without a message id, owes a pass over every folder."""
        if self.lifecycle_event or not self.resource_id:
            return EVERY_STREAM
        # A deleted message is gone from Graph: only the store can say where it was.
        return ChangeHint(message=self.resource_id, locate=self.change_type != "deleted")

    def recorded(self) -> dict[str, Any]:
        """What the audit log keeps of it: never the clientState."""
        return {
            "resource": self.resource,
            "resource_id": self.resource_id,
            "tenant_id": self.tenant_id,
        }


def _optional_str(item: dict[str, Any], key: str) -> str | None:
    value = item.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValueError(f"{key} must be a string")
    if len(value) > MAX_STRING or "\x00" in value:
        raise ValueError(f"{key} is not a plausible value")
    return value


def _is_str(item: dict[str, Any], key: str) -> bool:
    return isinstance(item.get(key), str)


def parse_notifications(body: bytes) -> list[GraphNotification]:
    """Raises ValueError for anything that is not a Graph notification collection."""
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise ValueError("body is not JSON") from exc
    if not isinstance(document, dict) or not isinstance(document.get("value"), list):
        raise ValueError("expected an object with a 'value' array")
    if len(document["value"]) > MAX_NOTIFICATIONS:
        raise ValueError(f"more than {MAX_NOTIFICATIONS} notifications in one body")
    notifications = []
    for item in document["value"]:
        if not isinstance(item, dict):
            raise ValueError("each notification must be an object")
        subscription_id = _optional_str(item, "subscriptionId")
        if not subscription_id:
            raise ValueError("notification without subscriptionId")
        lifecycle_event = _optional_str(item, "lifecycleEvent")
        change_type = _optional_str(item, "changeType")
        if lifecycle_event is None and change_type is None:
            raise ValueError("notification has neither changeType nor lifecycleEvent")
        resource_data = item.get("resourceData")
        if not isinstance(resource_data, dict):
            resource_data = {}
        # Other types in resourceData are tolerated (and ignored), as before.
        resource_id = _optional_str(resource_data, "id") if _is_str(resource_data, "id") else None
        etag = (
            _optional_str(resource_data, "@odata.etag")
            if _is_str(resource_data, "@odata.etag")
            else None
        )
        notifications.append(
            GraphNotification(
                subscription_id=subscription_id,
                client_state=_optional_str(item, "clientState"),
                change_type=change_type,
                resource=_optional_str(item, "resource"),
                resource_id=resource_id,
                lifecycle_event=lifecycle_event,
                # Exchange's lifecycle notifications name the tenant organizationId and
                # carry no tenantId; the documented shape has tenantId. Neither is required.
                tenant_id=_optional_str(item, "tenantId") or _optional_str(item, "organizationId"),
                etag=etag,
            )
        )
    return notifications


def client_state_matches(expected: str, given: str | None) -> bool:
    """Constant-time comparison; an empty expected state never matches."""
    if not expected or given is None:
        return False
    return hmac.compare_digest(expected.encode(), given.encode())
