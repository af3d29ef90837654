"""Change events for downstream systems, written in the same transaction as the change."""

from __future__ import annotations

import json
import uuid
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession


class OutboxRepository:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def add(self, mailbox_id: uuid.UUID, kind: str, payload: dict[str, Any]) -> None:
        await self.session.execute(
            text(
                "INSERT INTO outbox_events (mailbox_id, kind, payload) "
                "VALUES (:id, :kind, CAST(:payload AS jsonb))"
            ),
            {"id": mailbox_id, "kind": kind, "payload": json.dumps(payload)},
        )

    async def pending(self, limit: int) -> list[dict[str, Any]]:
        result = await self.session.execute(
            text(
                "SELECT id, mailbox_id, kind, payload, created_at FROM outbox_events "
                "WHERE published_at IS NULL ORDER BY id LIMIT :limit FOR UPDATE SKIP LOCKED"
            ),
            {"limit": limit},
        )
        return [dict(row._mapping) for row in result.all()]

    async def mark_published(self, ids: list[int]) -> None:
        if ids:
            await self.session.execute(
                text("UPDATE outbox_events SET published_at = now() WHERE id = ANY(:ids)"),
                {"ids": ids},
            )

    async def for_mailbox(self, mailbox_id: uuid.UUID) -> list[dict[str, Any]]:
        result = await self.session.execute(
            text("SELECT kind, payload FROM outbox_events WHERE mailbox_id = :id ORDER BY id"),
            {"id": mailbox_id},
        )
        return [dict(row._mapping) for row in result.all()]
