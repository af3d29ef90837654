"""A provider's stream discovery as it left it (`stream_catalogs`): the state it hands back
with its streams (app/providers/base.py StreamListing), kept so that no worker discovers a
mailbox again (Graph: folder enumeration and well-known folder lookups)."""

from __future__ import annotations

import uuid
from typing import Any

import orjson
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession


class StreamCatalogRepository:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def get(self, mailbox_id: uuid.UUID) -> dict[str, Any] | None:
        result = await self.session.execute(
            text("SELECT state FROM stream_catalogs WHERE mailbox_id = :id"), {"id": mailbox_id}
        )
        state = result.scalar_one_or_none()
        return dict(state) if isinstance(state, dict) else None

    async def save(self, mailbox_id: uuid.UUID, state: dict[str, Any]) -> None:
        await self.session.execute(
            text(
                """
                INSERT INTO stream_catalogs (mailbox_id, state) VALUES (:id, CAST(:state AS jsonb))
                ON CONFLICT (mailbox_id) DO UPDATE
                   SET state = EXCLUDED.state, refreshed_at = now()
                """
            ),
            {"id": mailbox_id, "state": orjson.dumps(state).decode()},
        )

    async def forget(self, mailbox_id: uuid.UUID) -> None:
        await self.session.execute(
            text("DELETE FROM stream_catalogs WHERE mailbox_id = :id"), {"id": mailbox_id}
        )
