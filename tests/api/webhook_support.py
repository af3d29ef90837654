"""Seeding and reading for webhook tests: a mailbox with a live Graph subscription, without
running a worker, and the audit log's rows."""

from __future__ import annotations

import secrets
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import text

from app.db.repositories.mailboxes import MailboxRepository
from app.db.repositories.subscriptions import SubscriptionRepository
from app.sync.runtime import Runtime


@dataclass(frozen=True)
class Subscribed:
    mailbox_id: uuid.UUID
    subscription_id: str
    client_state: str


async def graph_mailbox(rt: Runtime, email: str = "ada@contoso.com") -> Subscribed:
    async with rt.sessions() as session:
        mailbox = await MailboxRepository(session).upsert_for_connect(
            user_id=email.split("@")[0],
            provider="microsoft",
            account_key=email,
            email=email,
            auth_mode="delegated",
            tenant_id=None,
            provider_user_id=None,
        )
        subscription_id = str(uuid.uuid4())
        client_state = secrets.token_urlsafe(24)
        await SubscriptionRepository(session, rt.cipher).replace_active(
            mailbox.id,
            provider="microsoft",
            subscription_id=subscription_id,
            expires_at=datetime.now(UTC) + timedelta(days=2),
            client_state=client_state,
            resource="me/messages",
        )
        await session.commit()
    return Subscribed(mailbox.id, subscription_id, client_state)


def change(
    sub: Subscribed,
    *,
    message_id: str = "AAMkAGI2",
    etag: str = 'W/"CQAAABYAAAA"',
    client_state: str | None = None,
    change_type: str = "created",
) -> dict[str, Any]:
    resource = f"Users/{sub.mailbox_id}/Messages/{message_id}"
    return {
        "subscriptionId": sub.subscription_id,
        "subscriptionExpirationDateTime": "2030-01-01T00:00:00Z",
        "changeType": change_type,
        "resource": resource,
        "resourceData": {
            "@odata.type": "#Microsoft.Graph.Message",
            "@odata.id": resource,
            "@odata.etag": etag,
            "id": message_id,
        },
        "clientState": sub.client_state if client_state is None else client_state,
        "tenantId": "84bd8158-6d4d-4958-8b9f-9d6445542f95",
    }


async def log_rows(rt: Runtime, where: str = "true", **params: Any) -> list[dict[str, Any]]:
    async with rt.sessions() as session:
        result = await session.execute(
            text(f"SELECT * FROM webhook_notifications WHERE {where} ORDER BY id"),  # noqa: S608
            params,
        )
        return [dict(r._mapping) for r in result.all()]


async def queued(rt: Runtime) -> list[str]:
    return sorted(j.decode() for j in await rt.redis.zrange("arq:queue", 0, -1))


async def asgi_post(
    app: Any,
    path: str,
    body: bytes,
    *,
    client: tuple[str, int] = ("127.0.0.1", 1),
    headers: dict[str, str] | None = None,
) -> int:
    """POST straight into the ASGI app, as uvicorn would: the status it answers. A fraction
    of an HTTP client's cost, for tests that send thousands of requests."""
    raw_headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        *((k.lower().encode(), v.encode()) for k, v in (headers or {}).items()),
    ]
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "headers": raw_headers,
        "client": client,
        "server": ("mailsync.test", 80),
        "root_path": "",
    }
    delivered = False

    async def receive() -> dict[str, Any]:
        nonlocal delivered
        if not delivered:
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}
        return {"type": "http.disconnect"}

    status = 0

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = int(message["status"])

    await app(scope, receive, send)
    return status
