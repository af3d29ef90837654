"""Graph change-notification subscriptions: validation handshake, delivery, lifecycle events.

Creating (and, with a new URL, updating) a subscription POSTs `?validationToken=...` to the
notification URL and requires a 200 text/plain echo within 10 seconds before answering 201.
Change notifications are posted in the background, never inside the mutating request, and
every attempt is recorded so tests can read what was delivered.
"""

from __future__ import annotations

import asyncio
import json
import re
import secrets
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote

import httpx
from fastapi import Request
from starlette.responses import Response

from app.simulator import outbound
from app.simulator.core import Throttled
from app.simulator.microsoft.errors import graph_error, json_response, throttled_response
from app.simulator.microsoft.mailbox import ChangeEvent, Mailbox, change_key
from app.simulator.microsoft.state import APP_MAIL_ROLE, AccessToken, Delivery, MicrosoftState

# Outlook message subscriptions without resource data: 10,080 minutes (under 7 days).
MAX_MESSAGE_SUBSCRIPTION_MINUTES = 10_080
CHANGE_TYPES = frozenset({"created", "updated", "deleted"})
LIFECYCLE_EVENTS = frozenset({"reauthorizationRequired", "subscriptionRemoved", "missed"})
_RESOURCE = re.compile(
    r"^/?(?:(?P<me>me)|users/(?P<user>[^/]+))(?:/mailfolders/(?P<folder>[^/]+))?/messages/?$",
    re.IGNORECASE,
)
_QUOTED_KEY = re.compile(r"\('([^']*)'\)")


@dataclass
class GraphSubscription:
    id: str
    resource: str
    user_id: str
    # None: every folder of the mailbox.
    folder: int | None
    change_types: frozenset[str]
    notification_url: str
    lifecycle_notification_url: str | None
    client_state: str | None
    expiration: datetime
    tenant_id: str
    creator_app_only: bool
    creator_id: str
    immutable_ids: bool
    application_id: str

    def expired(self) -> bool:
        return self.expiration <= datetime.now(UTC)

    def resource_json(self, base_url: str) -> dict[str, Any]:
        return {
            "@odata.context": f"{base_url}/v1.0/$metadata#subscriptions/$entity",
            "id": self.id,
            "resource": self.resource,
            "applicationId": self.application_id,
            "changeType": ",".join(sorted(self.change_types)),
            "clientState": self.client_state,
            "notificationUrl": self.notification_url,
            "notificationQueryOptions": None,
            "lifecycleNotificationUrl": self.lifecycle_notification_url,
            "expirationDateTime": _iso(self.expiration),
            "creatorId": self.creator_id,
            "includeResourceData": False,
            "latestSupportedTlsVersion": "v1_2",
            "encryptionCertificate": None,
            "encryptionCertificateId": None,
            "notificationUrlAppId": None,
        }


class SubscriptionError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def _parse_expiration(raw: object) -> datetime:
    if not isinstance(raw, str):
        raise SubscriptionError(400, "InvalidRequest", "expirationDateTime is required.")
    try:
        moment = datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError:
        raise SubscriptionError(
            400, "InvalidRequest", f"Invalid expirationDateTime '{raw}'."
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    now = datetime.now(UTC)
    if moment <= now:
        raise SubscriptionError(
            400, "InvalidRequest", "Subscription expiration can only be in the future."
        )
    if moment > now + timedelta(minutes=MAX_MESSAGE_SUBSCRIPTION_MINUTES):
        raise SubscriptionError(
            400, "InvalidRequest",
            f"Subscription expiration can only be {MAX_MESSAGE_SUBSCRIPTION_MINUTES} minutes "
            "in the future.",
        )  # fmt: skip
    return moment


async def handle(
    state: MicrosoftState, request: Request, token: AccessToken, rest: list[str]
) -> Response:
    try:
        return await _handle(state, request, token, rest)
    except SubscriptionError as exc:
        return graph_error(exc.status, exc.code, exc.message)
    except Throttled as exc:
        return throttled_response(exc)


async def _handle(
    state: MicrosoftState, request: Request, token: AccessToken, rest: list[str]
) -> Response:
    method = request.method
    if not rest:
        if method == "POST":
            return await _create(state, request, token)
        if method == "GET":
            visible = [s for s in _live(state) if _visible(s, token)]
            return json_response(
                {
                    "@odata.context": f"{state.sim.base_url}/v1.0/$metadata#subscriptions",
                    "value": [s.resource_json(state.sim.base_url) for s in visible],
                }
            )
        raise SubscriptionError(405, "Request_BadRequest", "Method not allowed.")
    subscription = state.subscriptions.get(rest[0])
    if subscription is None or subscription.expired() or not _visible(subscription, token):
        if subscription is not None and subscription.expired():
            del state.subscriptions[subscription.id]
        raise SubscriptionError(404, "ResourceNotFound", "The object was not found.")
    mailbox = state.mailboxes[subscription.user_id]
    async with state.sim.core.admit(
        mailbox.counter_key, max_concurrency=state.sim.core.faults.graph_max_concurrency
    ):
        if len(rest) == 2 and rest[1].lower() == "reauthorize" and method == "POST":
            return Response(status_code=204)
        if len(rest) != 1:
            raise SubscriptionError(400, "BadRequest", "Unsupported subscription path.")
        if method == "GET":
            return json_response(subscription.resource_json(state.sim.base_url))
        if method == "DELETE":
            del state.subscriptions[subscription.id]
            return Response(status_code=204)
        if method == "PATCH":
            body = await _json_body(request)
            url = str(body.get("notificationUrl") or subscription.notification_url)
            if "notificationUrl" in body or state.revalidate_on_renew:
                _check(await validate_endpoint(state, subscription.id, url))
            if "expirationDateTime" in body:
                subscription.expiration = _parse_expiration(body["expirationDateTime"])
            subscription.notification_url = url
            return json_response(subscription.resource_json(state.sim.base_url))
    raise SubscriptionError(405, "Request_BadRequest", "Method not allowed.")


def _live(state: MicrosoftState) -> list[GraphSubscription]:
    for subscription in [s for s in state.subscriptions.values() if s.expired()]:
        del state.subscriptions[subscription.id]
    return list(state.subscriptions.values())


def _visible(subscription: GraphSubscription, token: AccessToken) -> bool:
    if token.app_only:
        return subscription.creator_app_only and subscription.tenant_id == token.tenant_id
    return not subscription.creator_app_only and subscription.user_id == token.user_id


async def _json_body(request: Request) -> dict[str, Any]:
    try:
        body = json.loads(await request.body())
    except ValueError:
        raise SubscriptionError(400, "BadRequest", "The request body is not valid JSON.") from None
    if not isinstance(body, dict):
        raise SubscriptionError(400, "BadRequest", "The request body must be a JSON object.")
    return body


def _check(outcome: str) -> None:
    """Graph's answers when its handshake with the notification URL did not succeed."""
    if outcome == "timeout":
        # Not answered within the 10 seconds Graph waits (a cold start, a deployment).
        raise SubscriptionError(400, "InvalidRequest", "Subscription validation request timed out.")
    if outcome != "ok":
        raise SubscriptionError(
            400, "ValidationError",
            "Subscription validation request failed. Notification endpoint must respond "
            "with 200 OK to validation request.",
        )  # fmt: skip


def _resolve_resource(
    state: MicrosoftState, token: AccessToken, resource: str
) -> tuple[Mailbox, int | None]:
    match = _RESOURCE.match(_QUOTED_KEY.sub(lambda m: "/" + m.group(1), resource))
    if match is None:
        raise SubscriptionError(
            400, "InvalidRequest",
            f"Resource '{resource}' is not supported; use me/messages, users/{{id}}/messages "
            "or a mailFolders('{id}')/messages path.",
        )  # fmt: skip
    if match.group("me"):
        if token.app_only or token.user_id is None:
            raise SubscriptionError(
                400, "BadRequest", "/me request is only valid with delegated authentication flow."
            )
        mailbox = state.mailboxes.get(token.user_id)
    else:
        mailbox = state.find_mailbox(match.group("user"))
    if mailbox is None:
        raise SubscriptionError(404, "ErrorInvalidUser", "The requested user is invalid.")
    denied = (
        (
            token.tenant_id != mailbox.tenant_id
            or APP_MAIL_ROLE not in token.roles
            or not mailbox.app_only_granted
        )
        if token.app_only
        else token.user_id != mailbox.user_id
    )
    if denied:
        raise SubscriptionError(
            403, "ExtensionError", "Access is denied. Check credentials and try again."
        )
    folder_index = None
    if match.group("folder"):
        folder = mailbox.folder(match.group("folder"))
        if folder is None:
            raise SubscriptionError(404, "ErrorItemNotFound", "The specified folder was not found.")
        folder_index = folder.index
    return mailbox, folder_index


async def _create(state: MicrosoftState, request: Request, token: AccessToken) -> Response:
    body = await _json_body(request)
    change_types = frozenset(
        p.strip() for p in str(body.get("changeType", "")).split(",") if p.strip()
    )
    if not change_types or not change_types <= CHANGE_TYPES:
        raise SubscriptionError(
            400,
            "InvalidRequest",
            "changeType must be a comma-separated subset of created,updated,deleted.",
        )
    notification_url = body.get("notificationUrl")
    lifecycle_url = body.get("lifecycleNotificationUrl")
    for url in (notification_url, lifecycle_url):
        if url is not None and (
            not isinstance(url, str) or not url.startswith(("https://", "http://"))
        ):
            raise SubscriptionError(400, "InvalidRequest", f"Invalid notification URL '{url}'.")
    if not notification_url:
        raise SubscriptionError(400, "InvalidRequest", "notificationUrl is required.")
    client_state = body.get("clientState")
    if client_state is not None and (not isinstance(client_state, str) or len(client_state) > 128):
        raise SubscriptionError(
            400, "InvalidRequest", "clientState must be at most 128 characters."
        )
    resource = str(body.get("resource", ""))
    mailbox, folder_index = _resolve_resource(state, token, resource)
    expiration = _parse_expiration(body.get("expirationDateTime"))
    prefer = request.headers.get("prefer", "").lower().replace(" ", "")
    subscription_id = str(uuid.uuid4())
    async with state.sim.core.admit(
        mailbox.counter_key, max_concurrency=state.sim.core.faults.graph_max_concurrency
    ):
        for url in dict.fromkeys(u for u in (notification_url, lifecycle_url) if u):
            _check(await validate_endpoint(state, subscription_id, url))
        subscription = GraphSubscription(
            id=subscription_id,
            resource=resource,
            user_id=mailbox.user_id,
            folder=folder_index,
            change_types=change_types,
            notification_url=notification_url,
            lifecycle_notification_url=lifecycle_url,
            client_state=client_state,
            expiration=expiration,
            tenant_id=mailbox.tenant_id,
            creator_app_only=token.app_only,
            creator_id=token.user_id or state.sim.client_id,
            immutable_ids='idtype="immutableid"' in prefer,
            application_id=state.sim.client_id,
        )
        state.subscriptions[subscription.id] = subscription
        return json_response(subscription.resource_json(state.sim.base_url), status=201)


# -- outbound HTTP ------------------------------------------------------------------------

_clients: dict[int, httpx.AsyncClient] = {}
_tasks: set[asyncio.Task[None]] = set()


def _client() -> httpx.AsyncClient:
    loop_id = id(asyncio.get_running_loop())
    client = _clients.get(loop_id)
    if client is None:
        client = outbound.client(follow_redirects=False)
        _clients[loop_id] = client
    return client


async def validate_endpoint(state: MicrosoftState, subscription_id: str, url: str) -> str:
    """ "ok", "timeout" (no answer in time) or "failed" (a wrong answer, or none at all)."""
    # Graph's tokens contain spaces and colons: receivers must URL-decode before echoing.
    validation_token = (
        "Validation: Testing client application reachability for subscription Request-Id: "
        + str(uuid.uuid4())
    )
    delivery = Delivery(state.next_delivery_id(), subscription_id, "validation", url, [])
    state.deliveries.append(delivery)
    delivery.attempts = 1
    separator = "&" if "?" in url else "?"
    try:
        response = await _client().post(
            f"{url}{separator}validationToken={quote(validation_token)}",
            headers={"Content-Type": "text/plain; charset=utf-8"},
            content=b"",
            timeout=state.validation_timeout_seconds,
        )
    except httpx.TimeoutException as exc:
        delivery.error = f"{type(exc).__name__}: {exc}"
        return "timeout"
    except httpx.HTTPError as exc:
        delivery.error = f"{type(exc).__name__}: {exc}"
        return "failed"
    delivery.status = response.status_code
    content_type = response.headers.get("content-type", "")
    ok = (
        response.status_code == 200
        and content_type.startswith("text/plain")
        and response.text == validation_token
    )
    if ok:
        delivery.delivered_at = time.time()
        return "ok"
    delivery.error = "the endpoint did not echo the validation token as 200 text/plain"
    return "failed"


def _notification(
    subscription: GraphSubscription, mailbox: Mailbox, change_type: str, key: int, generation: int
) -> dict[str, Any]:
    message_id = mailbox.message_id(
        key, immutable=subscription.immutable_ids, generation=generation
    )
    resource = f"Users/{mailbox.user_id}/Messages/{message_id}"
    return {
        "subscriptionId": subscription.id,
        "subscriptionExpirationDateTime": _iso(subscription.expiration),
        "changeType": change_type,
        "resource": resource,
        "resourceData": {
            "@odata.type": "#Microsoft.Graph.Message",
            "@odata.id": resource,
            "@odata.etag": f'W/"{change_key(key, mailbox.state(key).version)}"',
            "id": message_id,
        },
        "clientState": subscription.client_state,
        "tenantId": subscription.tenant_id,
    }


def _change_type_for(subscription: GraphSubscription, event: ChangeEvent) -> str | None:
    if subscription.folder is None:
        change_type: str | None = event.change_type
    elif event.previous_folder is not None:
        # A move is a creation in the destination folder and a deletion from the source.
        if event.folder == subscription.folder:
            change_type = "created"
        elif event.previous_folder == subscription.folder:
            change_type = "deleted"
        else:
            change_type = None
    else:
        change_type = event.change_type if event.folder == subscription.folder else None
    return change_type if change_type in subscription.change_types else None


def notify_changes(state: MicrosoftState, mailbox: Mailbox, events: list[ChangeEvent]) -> None:
    """Queue change notifications for `events`; returns at once, delivery runs in the background."""
    if not events or state.drop_change_notifications:
        return
    for subscription in _live(state):
        if subscription.user_id != mailbox.user_id:
            continue
        value = []
        for event in events:
            change_type = _change_type_for(subscription, event)
            if change_type is None:
                continue
            generation = mailbox.state(event.key).generation
            if change_type == "deleted" and event.previous_folder is not None:
                generation -= 1  # the id the source folder knew
            value.append(_notification(subscription, mailbox, change_type, event.key, generation))
        if value:
            _schedule(state, subscription, subscription.notification_url, "change", value)


def send_lifecycle(state: MicrosoftState, subscription: GraphSubscription, event: str) -> Delivery:
    url = subscription.lifecycle_notification_url or subscription.notification_url
    item: dict[str, Any] = {
        "subscriptionId": subscription.id,
        "subscriptionExpirationDateTime": _iso(subscription.expiration),
        "clientState": subscription.client_state,
        "lifecycleEvent": event,
    }
    if state.lifecycle_shape == "exchange":
        # What Exchange sends today: the tenant as organizationId and no tenantId.
        item["organizationId"] = subscription.tenant_id
    else:
        item["tenantId"] = subscription.tenant_id
    value = [item]
    if event == "subscriptionRemoved":
        state.subscriptions.pop(subscription.id, None)
    return _schedule(state, subscription, url, "lifecycle", value)


def _schedule(
    state: MicrosoftState,
    subscription: GraphSubscription,
    url: str,
    kind: str,
    value: list[dict[str, Any]],
) -> Delivery:
    delivery = Delivery(state.next_delivery_id(), subscription.id, kind, url, value)
    state.deliveries.append(delivery)
    task = asyncio.get_running_loop().create_task(_deliver(state, delivery))
    _tasks.add(task)
    task.add_done_callback(_tasks.discard)
    return delivery


async def _deliver(state: MicrosoftState, delivery: Delivery) -> None:
    body = json.dumps({"value": delivery.value}).encode()
    for attempt in range(1 + state.notification_retries):
        delivery.attempts += 1
        try:
            response = await _client().post(
                delivery.url,
                content=body,
                headers={"Content-Type": "application/json; charset=utf-8"},
                timeout=state.notification_timeout_seconds,
            )
        except httpx.HTTPError as exc:
            delivery.error = f"{type(exc).__name__}: {exc}"
        else:
            delivery.status = response.status_code
            if 200 <= response.status_code < 300:
                delivery.error = None
                delivery.delivered_at = time.time()
                return
            delivery.error = f"HTTP {response.status_code}"
        if attempt < state.notification_retries:
            delay = state.notification_retry_delay_seconds * 2**attempt
            await asyncio.sleep(delay * (0.5 + secrets.randbelow(1000) / 1000))
