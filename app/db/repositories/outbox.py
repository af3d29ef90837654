"""Change events for downstream systems, written in the same transaction as the change."""

from __future__ import annotations

import uuid
from typing import Any

import orjson
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
            # orjson: a page's event lists up to a thousand ids.
            {"id": mailbox_id, "kind": kind, "payload": orjson.dumps(payload).decode()},
        )

    async def for_mailbox(self, mailbox_id: uuid.UUID) -> list[dict[str, Any]]:
        result = await self.session.execute(
            text("SELECT kind, payload FROM outbox_events WHERE mailbox_id = :id ORDER BY id"),
            {"id": mailbox_id},
        )
        return [dict(row._mapping) for row in result.all()]
