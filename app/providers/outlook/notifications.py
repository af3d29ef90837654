"""Parsing Graph change and lifecycle notifications; pure functions for the webhook route.

Graph posts `{"value": [...]}`; change notifications carry `changeType` and `resourceData`,
lifecycle notifications (`reauthorizationRequired`, `subscriptionRemoved`, `missed`) carry
`lifecycleEvent` instead. Every item carries the clientState we chose at subscription time,
which is how a notification proves it came from Graph.
"""

from __future__ import annotations

import hmac
import json
from dataclasses import dataclass
from typing import Any

# Graph's validation handshake arrives as POST ...?validationToken=<url-encoded token>.
VALIDATION_TOKEN_PARAM = "validationToken"  # noqa: S105 - a query parameter name


@dataclass(frozen=True, slots=True)
class GraphNotification:
    subscription_id: str
    client_state: str | None
    change_type: str | None
    resource: str | None
    resource_id: str | None
    # None for change notifications.
    lifecycle_event: str | None
    tenant_id: str | None


def _optional_str(item: dict[str, Any], key: str) -> str | None:
    value = item.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValueError(f"{key} must be a string")
    return value


def parse_notifications(body: bytes) -> list[GraphNotification]:
    """Raises ValueError for anything that is not a Graph notification collection."""
    try:
        document = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError("body is not JSON") from exc
    if not isinstance(document, dict) or not isinstance(document.get("value"), list):
        raise ValueError("expected an object with a 'value' array")
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
        resource_id = None
        if isinstance(resource_data, dict) and isinstance(resource_data.get("id"), str):
            resource_id = resource_data["id"]
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
            )
        )
    return notifications


def client_state_matches(expected: str, given: str | None) -> bool:
    """Constant-time comparison; an empty expected state never matches."""
    if not expected or given is None:
        return False
    return hmac.compare_digest(expected.encode(), given.encode())
