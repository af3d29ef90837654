"""Provider webhooks: verify, record, enqueue, answer. No provider call happens here.

Notifications go to this process's intake (app/sync/webhook_intake.py), which records
many requests' notifications in one transaction and answers each request once its records
have committed; a 2xx means we will act on it. Every request, refused or not, lands in the
webhook audit log with its outcome.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import PlainTextResponse
from fastapi.routing import APIRoute
from starlette.requests import ClientDisconnect

from app.api.errors import ApiError
from app.db.repositories.notifications import LogRow
from app.metrics import WEBHOOK_SECONDS
from app.providers.gmail.push import PushAuthError, PushVerifier, decode_push
from app.providers.outlook.notifications import VALIDATION_TOKEN_PARAM, parse_notifications
from app.sync import activity
from app.sync.webhook_intake import IntakeUnavailable, Notice, Received, WebhookIntake
from app.sync.webhook_log import OncePerInterval, WebhookOutcome

log = logging.getLogger(__name__)


class _TimedRoute(APIRoute):
    """Calls the endpoint with the request and nothing else, times every webhook request,
    and counts it for the dashboard as accepted (2xx) or refused (anything else: a bad
    signature, a malformed body).

    The endpoints here take the Request alone and return a Response, so FastAPI's request
    handling (solving dependencies: reading the query string, headers and cookies into
    parameters; serializing a return value) has nothing to do for them, and it costs more
    CPU than verifying and recording a notification. The route stays an APIRoute, so the
    OpenAPI document describes it; errors raised by the endpoint reach the app's exception
    handlers as before."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        endpoint = self.endpoint
        seconds = WEBHOOK_SECONDS.labels(self.path.rsplit("/", 1)[-1])

        async def handler(request: Request) -> Response:
            response: Response = await endpoint(request)
            return response

        async def timed(request: Request) -> Response:
            started = time.perf_counter()
            rt = request.app.state.rt
            try:
                response = await handler(request)
            except Exception:
                rt.activity.add(activity.WEBHOOKS_REFUSED)
                raise
            finally:
                seconds.observe(time.perf_counter() - started)
            ok = 200 <= response.status_code < 300
            rt.activity.add(activity.WEBHOOKS_ACCEPTED if ok else activity.WEBHOOKS_REFUSED)
            return response

        return timed


router = APIRouter(prefix="/webhooks", tags=["webhooks"], route_class=_TimedRoute)

MAX_BODY = 1_000_000
# Graph's validation tokens are a few hundred characters.
MAX_VALIDATION_TOKEN = 4096

_NO_AUTH_ADVICE = (
    "Pub/Sub pushes arrive without an Authorization header: the push subscription has no "
    "authentication, so mailsync refuses them (401) and Gmail changes wait for the periodic "
    "sync. Give the push subscription a service account and audience: gcloud pubsub "
    "subscriptions modify-push-config SUBSCRIPTION --push-endpoint=%s "
    "--push-auth-service-account=%s --push-auth-token-audience=%s "
    "(README, 'Gmail push set-up')"
)


class _Refused(Exception):
    def __init__(self, status: int, code: str, message: str, outcome: WebhookOutcome) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.outcome = status, code, message, outcome


def _intake(request: Request) -> WebhookIntake:
    intake: WebhookIntake = request.app.state.webhook_intake
    return intake


def _received(request: Request, status: int) -> Received:
    return Received(
        source=request.client.host if request.client else None,
        started=time.perf_counter(),
        http_status=status,
    )


def _refuse(
    request: Request, provider: str, received: Received, refused: _Refused, kind: str
) -> ApiError:
    """Record a request refused before any lookup, and the error it gets."""
    _intake(request).note(
        LogRow(
            provider=provider,
            outcome=refused.outcome,
            kind=kind,
            source=received.source,
            http_status=refused.status,
            handling_ms=received.elapsed_ms(),
            detail=refused.message[:500],
        )
    )
    return ApiError(refused.status, refused.code, refused.message)


async def _body(request: Request) -> bytes:
    """The body, read no further than MAX_BODY."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_BODY:
        raise _Refused(
            413, "payload_too_large", "notification body too large", WebhookOutcome.MALFORMED
        )
    try:
        if declared.isdigit():
            # The server stops reading at the declared length (uvicorn refuses more).
            return await request.body()
    except ClientDisconnect as exc:
        raise _Refused(
            400, "bad_request", "client disconnected mid-body", WebhookOutcome.MALFORMED
        ) from exc
    chunks: list[bytes] = []
    size = 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > MAX_BODY:
                raise _Refused(
                    413,
                    "payload_too_large",
                    "notification body too large",
                    WebhookOutcome.MALFORMED,
                )
            chunks.append(chunk)
    except ClientDisconnect as exc:
        raise _Refused(
            400, "bad_request", "client disconnected mid-body", WebhookOutcome.MALFORMED
        ) from exc
    return b"".join(chunks)


async def _record(request: Request, notices: list[Notice], received: Received) -> None:
    try:
        await _intake(request).submit(notices, received)
    except IntakeUnavailable as exc:
        # Nothing was recorded: the provider must deliver again.
        raise ApiError(503, "unavailable", str(exc), headers={"Retry-After": "5"}) from exc


# Read from the query string by hand (the route calls the endpoint with the request alone)
# and declared here for the OpenAPI document.
_VALIDATION_TOKEN_PARAMETER = {
    "name": VALIDATION_TOKEN_PARAM,
    "in": "query",
    "required": False,
    "description": "Graph's subscription validation handshake: echoed back as text/plain",
    "schema": {"type": "string", "maxLength": MAX_VALIDATION_TOKEN},
}


@router.post(
    "/microsoft",
    response_class=Response,
    status_code=202,
    openapi_extra={"parameters": [_VALIDATION_TOKEN_PARAMETER]},
)
async def microsoft(request: Request) -> Response:
    received = _received(request, 202)
    # Notifications come without a query string: parse one only when there is one.
    validation_token = (
        request.query_params.get(VALIDATION_TOKEN_PARAM) if request.scope["query_string"] else None
    )
    if validation_token is not None:
        # Graph's handshake: echo the (already URL-decoded) token as text/plain within 10 s.
        if len(validation_token) > MAX_VALIDATION_TOKEN:
            refused = _Refused(
                400, "bad_request", "validationToken too long", WebhookOutcome.MALFORMED
            )
            raise _refuse(request, "microsoft", received, refused, "validation")
        _intake(request).note(
            LogRow(
                provider="microsoft",
                outcome=WebhookOutcome.VALIDATION,
                kind="validation",
                source=received.source,
                http_status=200,
                handling_ms=received.elapsed_ms(),
            )
        )
        return PlainTextResponse(validation_token, status_code=200)
    try:
        body = await _body(request)
        try:
            notifications = parse_notifications(body)
        except ValueError as exc:
            raise _Refused(
                400, "bad_request", f"not a Graph notification: {exc}", WebhookOutcome.MALFORMED
            ) from exc
    except _Refused as refused:
        raise _refuse(request, "microsoft", received, refused, "request") from None
    notices = [
        Notice(
            provider="microsoft",
            kind=n.kind,
            payload=n.recorded(),
            subscription_id=n.subscription_id,
            client_state=n.client_state,
            dedup_key=n.dedup_key,
            lifecycle=n.lifecycle_event is not None,
            # Changes, `missed` and a removed subscription all mean: read the delta now.
            wants_sync=n.lifecycle_event != "reauthorizationRequired",
            wants_resubscribe=n.lifecycle_event
            in ("reauthorizationRequired", "subscriptionRemoved"),
            # Push is not delivering (or lost changes): poll until the channel is recreated
            # or, after `missed`, renewed by the renewal cron.
            push_failing=n.lifecycle_event in ("subscriptionRemoved", "missed"),
            hint=n.hint,
        )
        for n in notifications
    ]
    await _record(request, notices, received)
    return Response(status_code=202)


@router.post("/google", response_class=Response, status_code=204)
async def google(request: Request) -> Response:
    received = _received(request, 204)
    settings = request.app.state.settings
    authorization = request.headers.get("authorization")
    try:
        if authorization is None:
            unsigned: OncePerInterval = request.app.state.unsigned_push_log
            unsigned.warning(
                _NO_AUTH_ADVICE,
                f"{settings.public_base_url.rstrip('/')}/webhooks/google",
                settings.google_push_service_account or "SERVICE_ACCOUNT_EMAIL",
                settings.google_push_audience or "AUDIENCE",
            )
            raise _Refused(
                401,
                "unauthorized",
                "push without an Authorization header: configure authentication on the "
                "Pub/Sub push subscription (a service account and an audience)",
                WebhookOutcome.MISSING_TOKEN,
            )
        verifier: PushVerifier = request.app.state.push_verifier
        try:
            await verifier.verify(authorization)
        except PushAuthError as exc:
            refusals: OncePerInterval = request.app.state.refused_push_log
            refusals.warning("gmail push refused: %s", exc.reason)
            if exc.status == 401:
                raise _Refused(401, "unauthorized", exc.reason, WebhookOutcome.BAD_TOKEN) from exc
            if exc.status == 403 and verifier.configured:
                raise _Refused(403, "forbidden", exc.reason, WebhookOutcome.BAD_TOKEN) from exc
            code = "forbidden" if exc.status == 403 else "unavailable"
            raise _Refused(exc.status, code, exc.reason, WebhookOutcome.UNAVAILABLE) from exc
        body = await _body(request)
        try:
            push = decode_push(body)
        except ValueError as exc:
            raise _Refused(
                400,
                "bad_request",
                f"not a Pub/Sub push envelope: {exc}",
                WebhookOutcome.MALFORMED,
            ) from exc
    except _Refused as refused:
        raise _refuse(request, "google", received, refused, "push") from None
    notice = Notice(
        provider="google",
        kind="push",
        payload=push.recorded(),
        address=push.email_address,
        dedup_key=push.dedup_key,
        hint=push.hint,
    )
    # A push for an address with no mailbox is acknowledged too: Pub/Sub would otherwise
    # redeliver a push nobody can use (the log says `unknown_subscription`).
    await _record(request, [notice], received)
    return Response(status_code=204)
