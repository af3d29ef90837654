"""Cloud Pub/Sub push, as Gmail's `users.watch` uses it.

When a watched mailbox changes, Gmail publishes `{"emailAddress", "historyId"}` to the
watch's topic, and a push subscription POSTs it to an HTTPS endpoint wrapped in Pub/Sub's
envelope, with `Authorization: Bearer <OIDC token>` signed by Google (iss
https://accounts.google.com, aud = the subscription's audience, email = its service
account). Gmail sends at most one notification per user per second and drops the rest.
Delivery is a background task, never part of the request that changed the mailbox; every
publish is kept in a log tests can read (and forward themselves).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import itertools
import json
import random
import time
from collections import deque
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

import httpx
from pydantic import BaseModel, Field

from app.simulator import outbound
from app.simulator.google.keys import SigningKeys

# The same defaults SimulatorServer.env() hands to mailsync.
DEFAULT_SERVICE_ACCOUNT = "gmail-push@mailsync-sim.iam.gserviceaccount.com"
DEFAULT_SUBSCRIPTION = "projects/mailsync-sim/subscriptions/gmail-push"
ISSUER = "https://accounts.google.com"
# Pub/Sub treats these answers as an acknowledgement; anything else is retried.
_ACK_STATUSES = {102, 200, 201, 202, 204}


class PushConfig(BaseModel):
    """The push subscription: where notifications go and how their token is minted."""

    endpoint: str | None = None
    # Pub/Sub's default audience is the push endpoint URL.
    audience: str | None = None
    service_account: str = DEFAULT_SERVICE_ACCOUNT
    # False: a push subscription created without "Enable authentication" (no service
    # account): Pub/Sub then posts with no Authorization header at all.
    authenticated: bool = True
    subscription: str = DEFAULT_SUBSCRIPTION
    # Gmail: "a maximum notification rate of 1 event/sec"; 0 lifts the limit.
    max_notifications_per_second: float = Field(default=1.0, ge=0)
    max_attempts: int = Field(default=3, ge=1, le=20)
    retry_backoff_seconds: float = Field(default=0.2, ge=0)


@dataclass
class PushDelivery:
    message_id: str
    email: str
    history_id: int
    topic_name: str
    publish_time: str
    # pending, delivered, failed, dropped (rate limit), no_endpoint (logged only)
    status: str
    endpoint: str | None
    envelope: dict[str, Any]
    authorization: str | None
    attempts: int = 0
    http_status: int | None = None
    error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _rfc3339(seconds: float) -> str:
    stamp = datetime.fromtimestamp(seconds, UTC)
    return stamp.strftime("%Y-%m-%dT%H:%M:%S.") + f"{stamp.microsecond // 1000:03d}Z"


def _numeric_sub(service_account: str) -> str:
    # Google's `sub` for a service account is a 21-digit number.
    digest = hashlib.sha256(service_account.encode()).digest()
    return str(10**20 + int.from_bytes(digest[:8], "big") % (9 * 10**20))


class PushService:
    def __init__(self, keys: SigningKeys) -> None:
        self.keys = keys
        self.config = PushConfig()
        self.deliveries: deque[PushDelivery] = deque(maxlen=10_000)
        self._last_sent: dict[str, float] = {}
        self._message_ids = itertools.count(random.randrange(10**15, 9 * 10**15))
        self._tasks: set[asyncio.Task[None]] = set()
        self._client: httpx.AsyncClient | None = None

    def configure(self, config: PushConfig) -> None:
        self.config = config
        self._last_sent.clear()

    def oidc_token(
        self,
        *,
        audience: str,
        service_account: str | None = None,
        issuer: str = ISSUER,
        expired: bool = False,
        bad_signature: bool = False,
        email_verified: bool = True,
    ) -> str:
        account = service_account or self.config.service_account
        now = int(time.time())
        issued = now - 7200 if expired else now
        sub = _numeric_sub(account)
        claims = {
            "aud": audience,
            "azp": sub,
            "email": account,
            "email_verified": email_verified,
            "exp": issued + 3600,
            "iat": issued,
            "iss": issuer,
            "sub": sub,
        }
        return self.keys.sign(claims, bad_signature=bad_signature)

    def envelope(
        self, email: str, history_id: int, *, message_id: str | None = None
    ) -> dict[str, Any]:
        # Gmail's payload travels base64url-encoded in message.data; historyId is a JSON
        # number in what Gmail sends (its guide shows a string; decoders take both).
        data = json.dumps({"emailAddress": email, "historyId": history_id}).encode()
        message_id = message_id or str(next(self._message_ids))
        publish_time = _rfc3339(time.time())
        return {
            "message": {
                "data": base64.urlsafe_b64encode(data).decode(),
                "attributes": {},
                "messageId": message_id,
                "message_id": message_id,
                "publishTime": publish_time,
                "publish_time": publish_time,
            },
            "subscription": self.config.subscription,
        }

    def publish(self, email: str, history_id: int, topic_name: str) -> PushDelivery:
        config = self.config
        envelope = self.envelope(email, history_id)
        message = envelope["message"]
        delivery = PushDelivery(
            message_id=message["messageId"],
            email=email,
            history_id=history_id,
            topic_name=topic_name,
            publish_time=message["publishTime"],
            status="pending",
            endpoint=config.endpoint,
            envelope=envelope,
            authorization=None,
        )
        self.deliveries.append(delivery)
        now = time.monotonic()
        rate = config.max_notifications_per_second
        if rate and now - self._last_sent.get(email, -1e9) < 1 / rate:
            delivery.status = "dropped"
            return delivery
        self._last_sent[email] = now
        audience = config.audience or config.endpoint or ""
        if config.authenticated:
            delivery.authorization = "Bearer " + self.oidc_token(audience=audience)
        if not config.endpoint:
            delivery.status = "no_endpoint"
            return delivery
        task = asyncio.get_running_loop().create_task(self._deliver(delivery))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return delivery

    async def _deliver(self, delivery: PushDelivery) -> None:
        assert delivery.endpoint is not None
        if self._client is None:
            self._client = outbound.client(timeout=10.0)
        config = self.config
        headers = {
            "User-Agent": "APIs-Google; (+https://developers.google.com/webmasters/APIs-Google.html)"
        }
        if delivery.authorization is not None:
            headers["Authorization"] = delivery.authorization
        for attempt in range(config.max_attempts):
            delivery.attempts = attempt + 1
            try:
                response = await self._client.post(
                    delivery.endpoint, json=delivery.envelope, headers=headers
                )
            except httpx.HTTPError as exc:
                delivery.error = f"{type(exc).__name__}: {exc}"
                delivery.http_status = None
            else:
                delivery.http_status = response.status_code
                if response.status_code in _ACK_STATUSES:
                    delivery.status = "delivered"
                    delivery.error = None
                    return
                delivery.error = f"HTTP {response.status_code}"
            if attempt + 1 < config.max_attempts:
                await asyncio.sleep(config.retry_backoff_seconds * 2**attempt)
        delivery.status = "failed"

    def log(self, email: str | None = None) -> list[dict[str, Any]]:
        email = email.lower() if email else None
        return [d.as_dict() for d in self.deliveries if email is None or d.email == email]
