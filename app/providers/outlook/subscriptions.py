"""Graph change-notification subscriptions for a mailbox's messages."""

from __future__ import annotations

import secrets
from datetime import UTC, datetime, timedelta
from typing import Any

from app.providers.base import (
    Subscription,
    SubscriptionGone,
    SyncContext,
    TransientError,
)
from app.providers.outlook.client import GraphClient
from app.providers.outlook.errors import GraphRequestError
from app.providers.outlook.mapper import parse_datetime

# Outlook message subscriptions live at most 10,080 minutes; a minute less leaves room for
# clock skew. Shorter fallbacks in case a tenant or cloud enforces an older limit.
LIFETIMES_MINUTES = (10_079, 4_229, 1_439)
CHANGE_TYPES = "created,updated,deleted"
# Notifications then carry ImmutableIds, the same ids delta pages use.
_IMMUTABLE_IDS = {"Prefer": 'IdType="ImmutableId"'}


def _lifetime_rejected(exc: GraphRequestError) -> bool:
    return exc.status == 400 and "expiration" in exc.graph_message.lower()


def _validation_failed(exc: GraphRequestError) -> bool:
    """Graph's handshake with our webhook did not succeed: 400 ValidationError ("...
    request failed ...") or 400 InvalidRequest "Subscription validation request timed
    out." (Graph waits 10 s). Our endpoint may be deploying or cold-starting: try later."""
    return exc.status == 400 and (
        exc.code == "ValidationError"
        or "subscription validation request" in exc.graph_message.lower()
    )


def _expiry(minutes: int) -> str:
    moment = datetime.now(UTC) + timedelta(minutes=minutes)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def _subscription(body: dict[str, Any], client_state: str | None) -> Subscription:
    expires_at = parse_datetime(body.get("expirationDateTime")) or datetime.now(UTC)
    return Subscription(
        subscription_id=str(body["id"]),
        expires_at=expires_at,
        client_state=client_state,
        resource=body.get("resource"),
        extra={
            "notification_url": body.get("notificationUrl"),
            "change_type": body.get("changeType"),
        },
    )


async def create(
    graph: GraphClient, ctx: SyncContext, *, resource: str, notification_url: str
) -> Subscription:
    client_state = secrets.token_urlsafe(32)
    last_error: GraphRequestError | None = None
    for minutes in LIFETIMES_MINUTES:
        body = {
            "changeType": CHANGE_TYPES,
            "notificationUrl": notification_url,
            "lifecycleNotificationUrl": notification_url,
            "resource": resource,
            "expirationDateTime": _expiry(minutes),
            "clientState": client_state,
        }
        try:
            response = await graph.request(
                ctx, "POST", "subscriptions", json=body, headers=_IMMUTABLE_IDS
            )
        except GraphRequestError as exc:
            if _validation_failed(exc):
                # Our webhook did not answer Graph's handshake; it may be deploying.
                raise TransientError(
                    f"Graph could not validate {notification_url}: {exc.graph_message}"
                ) from exc
            if not _lifetime_rejected(exc):
                raise
            last_error = exc
            continue
        return _subscription(response.json(), client_state)
    assert last_error is not None
    raise last_error


async def renew(graph: GraphClient, ctx: SyncContext, subscription: Subscription) -> Subscription:
    path = f"subscriptions/{subscription.subscription_id}"
    last_error: GraphRequestError | None = None
    for minutes in LIFETIMES_MINUTES:
        try:
            response = await graph.request(
                ctx, "PATCH", path, json={"expirationDateTime": _expiry(minutes)}
            )
        except GraphRequestError as exc:
            if exc.status == 404:
                raise SubscriptionGone(f"Graph no longer knows subscription {path}") from exc
            if _validation_failed(exc):
                # Renewals are validated again now and then.
                raise TransientError(
                    f"Graph could not validate {path}: {exc.graph_message}"
                ) from exc
            if not _lifetime_rejected(exc):
                raise
            last_error = exc
            continue
        return _subscription(response.json(), subscription.client_state)
    assert last_error is not None
    raise last_error


async def delete(graph: GraphClient, ctx: SyncContext, subscription: Subscription) -> None:
    # 404: already expired or removed, which is what we wanted.
    await graph.request(
        ctx, "DELETE", f"subscriptions/{subscription.subscription_id}", accept=frozenset({404})
    )
