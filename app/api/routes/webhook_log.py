"""`GET /admin/webhook-log`: the webhook audit log, for operators."""

from __future__ import annotations

import base64
import binascii
import uuid
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query
from pydantic import BaseModel, Field

from app.api.auth import Operator
from app.api.deps import UnitOfWorkDep
from app.api.errors import ApiError
from app.db.repositories.notifications import NotificationRepository
from app.sync.webhook_log import WebhookOutcome

router = APIRouter(prefix="/admin", tags=["admin"])


class WebhookLogItem(BaseModel):
    id: str
    received_at: datetime
    provider: str
    outcome: WebhookOutcome
    kind: str = Field(
        description="change:<type>, lifecycle:<event>, push, validation, request, counted"
    )
    mailbox_id: uuid.UUID | None
    subscription_id: str | None
    source: str | None = Field(description="the sender's address")
    http_status: int | None
    handling_ms: float | None = Field(description="from the request's arrival to its record")
    count: int = Field(description="requests this row stands for (more than 1 when counted)")
    aggregated: bool = Field(
        description="past the per-minute rate, identical outcomes from one source counted"
    )
    detail: str | None
    notification: dict[str, Any] = Field(
        description="what the notification said (resource, ids, history id); never a secret"
    )


class WebhookLogResponse(BaseModel):
    items: list[WebhookLogItem]
    next_cursor: str | None


def _encode_cursor(row_id: int) -> str:
    return base64.urlsafe_b64encode(f"w{row_id}".encode()).decode().rstrip("=")


def _decode_cursor(cursor: str) -> int:
    try:
        raw = base64.urlsafe_b64decode((cursor + "=" * (-len(cursor) % 4)).encode()).decode()
        if not raw.startswith("w") or not raw[1:].isascii() or not raw[1:].isdigit():
            raise ValueError(cursor)
        row_id = int(raw[1:])
        if row_id >= 2**63:
            raise ValueError(cursor)
        return row_id
    except (ValueError, binascii.Error, UnicodeDecodeError) as exc:
        raise ApiError(400, "invalid_cursor", "cursor is not one this API returned") from exc


@router.get("/webhook-log")
async def webhook_log(
    _: Operator,
    uow: UnitOfWorkDep,
    outcome: WebhookOutcome | None = None,
    provider: Literal["google", "microsoft"] | None = None,
    mailbox_id: uuid.UUID | None = None,
    since: datetime | None = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    cursor: Annotated[str | None, Query(max_length=64)] = None,
) -> WebhookLogResponse:
    """Every request to a webhook route, newest first, with its outcome."""
    if since is not None and since.tzinfo is None:
        since = since.replace(tzinfo=UTC)
    rows = await NotificationRepository(uow.session).page(
        limit=limit + 1,
        before_id=_decode_cursor(cursor) if cursor else None,
        outcome=outcome,
        provider=provider,
        mailbox_id=mailbox_id,
        since=since,
    )
    more = len(rows) > limit
    rows = rows[:limit]
    items = [
        WebhookLogItem(
            id=str(r.id),
            received_at=r.received_at,
            provider=r.provider,
            outcome=WebhookOutcome(r.outcome),
            kind=r.kind,
            mailbox_id=r.mailbox_id,
            subscription_id=r.subscription_id,
            source=r.source,
            http_status=r.http_status,
            handling_ms=r.handling_ms,
            count=r.count,
            aggregated=r.aggregated,
            detail=r.detail,
            notification=r.payload,
        )
        for r in rows
    ]
    return WebhookLogResponse(
        items=items, next_cursor=_encode_cursor(rows[-1].id) if more and rows else None
    )
