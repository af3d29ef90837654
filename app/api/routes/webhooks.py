"""Provider webhooks: verify, record, enqueue, answer. No provider call happens here.

Many notifications for one mailbox collapse into one pending sync job (see
app.sync.queue); each is recorded first, so a 2xx means we will act on it.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Coroutine
from functools import partial
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import PlainTextResponse
from fastapi.routing import APIRoute

from app.api.deps import UnitOfWorkDep
from app.api.errors import ApiError
from app.db.repositories.mailboxes import MailboxRepository
from app.db.repositories.monitor import MonitorRepository
from app.db.repositories.subscriptions import NotificationRepository, SubscriptionRepository
from app.metrics import WEBHOOK_NOTIFICATIONS, WEBHOOK_SECONDS
from app.providers.gmail.push import PushAuthError, PushVerifier, decode_push
from app.providers.outlook.notifications import client_state_matches, parse_notifications
from app.sync import activity
from app.sync.queue import enqueue_subscription, enqueue_sync
from app.sync.states import PushState

log = logging.getLogger(__name__)


class _TimedRoute(APIRoute):
    """Times every webhook request, and counts it for the dashboard as accepted (2xx) or
    refused (anything else: a bad signature, a malformed body)."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()
        provider = self.path.rsplit("/", 1)[-1]

        async def timed(request: Request) -> Response:
            started = time.perf_counter()
            rt = request.app.state.rt
            try:
                response = await handler(request)
            except Exception:
                rt.activity.add(activity.WEBHOOKS_REFUSED)
                raise
            finally:
                WEBHOOK_SECONDS.labels(provider).observe(time.perf_counter() - started)
            ok = 200 <= response.status_code < 300
            rt.activity.add(activity.WEBHOOKS_ACCEPTED if ok else activity.WEBHOOKS_REFUSED)
            return response

        return timed


router = APIRouter(prefix="/webhooks", tags=["webhooks"], route_class=_TimedRoute)

MAX_BODY = 1_000_000


async def _body(request: Request) -> bytes:
    body = await request.body()
    if len(body) > MAX_BODY:
        raise ApiError(413, "payload_too_large", "notification body too large")
    return body


@router.post("/microsoft", response_class=Response, status_code=202)
async def microsoft(
    request: Request,
    uow: UnitOfWorkDep,
    validation_token: Annotated[str | None, Query(alias="validationToken", max_length=4096)] = None,
) -> Response:
    if validation_token is not None:
        # Graph's handshake: echo the (already URL-decoded) token as text/plain within 10 s.
        return PlainTextResponse(validation_token, status_code=200)
    try:
        notifications = parse_notifications(await _body(request))
    except ValueError as exc:
        raise ApiError(400, "bad_request", f"not a Graph notification: {exc}") from exc

    subs = SubscriptionRepository(uow.session, uow.rt.cipher)
    recorder = NotificationRepository(uow.session)
    to_sync: set[uuid.UUID] = set()
    to_resubscribe: set[uuid.UUID] = set()
    push_failing: set[uuid.UUID] = set()
    for n in notifications:
        stored = await subs.find(n.subscription_id)
        if stored is None:
            WEBHOOK_NOTIFICATIONS.labels("microsoft", "unknown_subscription").inc()
            log.info("graph notification for unknown subscription %s ignored", n.subscription_id)
            continue
        if not client_state_matches(stored.client_state or "", n.client_state):
            WEBHOOK_NOTIFICATIONS.labels("microsoft", "client_state_mismatch").inc()
            log.warning(
                "graph notification with a wrong clientState for %s ignored", n.subscription_id
            )
            continue
        kind = f"lifecycle:{n.lifecycle_event}" if n.lifecycle_event else f"change:{n.change_type}"
        await recorder.record(
            provider="microsoft",
            kind=kind,
            mailbox_id=stored.mailbox_id,
            subscription_id=n.subscription_id,
            payload={
                "resource": n.resource,
                "resource_id": n.resource_id,
                "tenant_id": n.tenant_id,
            },
        )
        WEBHOOK_NOTIFICATIONS.labels("microsoft", kind).inc()
        if n.lifecycle_event in ("reauthorizationRequired", "subscriptionRemoved"):
            to_resubscribe.add(stored.mailbox_id)
        if n.lifecycle_event in ("subscriptionRemoved", "missed"):
            # Push is not delivering (or lost changes): poll until the channel is recreated
            # or, after `missed`, renewed by the renewal cron.
            push_failing.add(stored.mailbox_id)
        if n.lifecycle_event != "reauthorizationRequired":
            # Changes, `missed` and a removed subscription all mean: read the delta now.
            to_sync.add(stored.mailbox_id)
    await MailboxRepository(uow.session).request_sync(sorted(to_sync))
    await MonitorRepository(uow.session).set_push_state(
        sorted(push_failing),
        PushState.FAILING,
        poll_within=uow.rt.settings.sync_poll_without_push_seconds,
    )
    redis = uow.rt.redis
    for mid in sorted(to_sync):
        uow.after_commit(partial(enqueue_sync, redis, mid))
    for mid in sorted(to_resubscribe):
        uow.after_commit(partial(enqueue_subscription, redis, mid))
    await uow.commit()
    return Response(status_code=202)


@router.post("/google", response_class=Response, status_code=204)
async def google(request: Request, uow: UnitOfWorkDep) -> Response:
    verifier: PushVerifier = request.app.state.push_verifier
    try:
        claims = await verifier.verify(request.headers.get("authorization"))
    except PushAuthError as exc:
        WEBHOOK_NOTIFICATIONS.labels("google", "refused").inc()
        log.warning("gmail push refused: %s", exc.reason)
        code = {401: "unauthorized", 403: "forbidden"}.get(exc.status, "unavailable")
        raise ApiError(exc.status, code, exc.reason) from exc
    try:
        push = decode_push(await _body(request))
    except ValueError as exc:
        raise ApiError(400, "bad_request", f"not a Pub/Sub push envelope: {exc}") from exc

    mailbox_ids = await MailboxRepository(uow.session).ids_by_email("google", push.email_address)
    recorder = NotificationRepository(uow.session)
    payload = {
        "history_id": str(push.history_id),
        "message_id": push.message_id,
        "sub": claims.get("sub"),
    }
    if not mailbox_ids:
        # Acknowledge: Pub/Sub would otherwise redeliver a push nobody can use.
        WEBHOOK_NOTIFICATIONS.labels("google", "unknown_address").inc()
        log.info("gmail push for an address with no mailbox acknowledged")
        await recorder.record(
            provider="google",
            kind="push:unknown",
            mailbox_id=None,
            subscription_id=None,
            payload=payload,
        )
        await uow.commit()
        return Response(status_code=204)
    for mid in mailbox_ids:
        await recorder.record(
            provider="google", kind="push", mailbox_id=mid, subscription_id=None, payload=payload
        )
    WEBHOOK_NOTIFICATIONS.labels("google", "push").inc()
    await MailboxRepository(uow.session).request_sync(mailbox_ids)
    redis = uow.rt.redis
    for mid in mailbox_ids:
        uow.after_commit(partial(enqueue_sync, redis, mid))
    await uow.commit()
    return Response(status_code=204)
