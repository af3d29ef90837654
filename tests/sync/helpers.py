"""Helpers for engine tests: seed a mailbox through the same code path connect uses."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import text

from app.providers.memory import MemoryProvider, make_message
from app.sync import mailboxes as service
from app.sync.runtime import Runtime
from app.sync.spread import phase_of


class _Tx:
    def __init__(self, session: Any, rt: Runtime) -> None:
        self.session = session
        self.rt = rt
        self.jobs: list[Any] = []

    def after_commit(self, action: Any) -> None:
        self.jobs.append(action)


def seeded(count: int, *, page_size: int = 40, streams: int = 2, **kwargs: Any) -> MemoryProvider:
    provider = MemoryProvider("microsoft", page_size=page_size, **kwargs)
    keys = ["inbox", "sent", "archive", "projects"][:streams]
    labels = {
        "inbox": ["INBOX"],
        "sent": ["SENT"],
        "archive": ["ARCHIVE"],
        "projects": ["Projects"],
    }
    for key in keys:
        provider.add_stream(key, labels=labels[key])
    for i in range(count):
        provider.put(keys[i % len(keys)], make_message(i, read=i % 5 != 0))
    return provider


async def connect(
    rt: Runtime,
    provider: MemoryProvider,
    *,
    user: str = "alice",
    email: str = "alice@example.com",
    expires_in: int | None = None,
    enqueue: bool = False,
) -> uuid.UUID:
    access, refresh, ttl = provider.issue_grant()
    async with rt.sessions() as session:
        tx = _Tx(session, rt)
        mailbox = await service.connect(
            tx,
            service.ConnectCommand(
                user_id=user,
                provider=provider.name,
                auth_mode="delegated",
                email=email,
                access_token=access,
                refresh_token=refresh,
                expires_in=ttl if expires_in is None else expires_in,
            ),
        )
        await session.commit()
    if enqueue:
        for job in tx.jobs:
            await job()
    return mailbox.id


async def mailbox_row(rt: Runtime, mailbox_id: uuid.UUID) -> dict[str, Any]:
    async with rt.sessions() as session:
        row = (
            await session.execute(
                text("SELECT * FROM mailboxes WHERE id = :id"), {"id": mailbox_id}
            )
        ).one()
    return dict(row._mapping)


async def stored_ids(rt: Runtime, mailbox_id: uuid.UUID) -> list[str]:
    async with rt.sessions() as session:
        rows = await session.execute(
            text("SELECT provider_message_id FROM messages WHERE mailbox_id = :id"),
            {"id": mailbox_id},
        )
        return [r[0] for r in rows.all()]


async def stored_state(
    rt: Runtime, mailbox_id: uuid.UUID
) -> dict[str, tuple[tuple[str, ...], bool]]:
    async with rt.sessions() as session:
        rows = await session.execute(
            text(
                "SELECT provider_message_id, labels, is_read FROM messages WHERE mailbox_id = :id"
            ),
            {"id": mailbox_id},
        )
        return {r[0]: (tuple(sorted(r[1])), r[2]) for r in rows.all()}


def truth_state(provider: MemoryProvider) -> dict[str, tuple[tuple[str, ...], bool]]:
    return {mid: (tuple(sorted(m.labels)), m.is_read) for mid, m in provider.truth().items()}


async def expire_lease(rt: Runtime, mailbox_id: uuid.UUID) -> None:
    """Time passing: the holder's lease lapses (as if it died or stalled)."""
    async with rt.sessions() as session, session.begin():
        await session.execute(
            text(
                "UPDATE mailboxes SET lease_expires_at = now() - interval '1 second' WHERE id = :id"
            ),
            {"id": mailbox_id},
        )


async def make_due(rt: Runtime, mailbox_id: uuid.UUID) -> None:
    async with rt.sessions() as session, session.begin():
        await session.execute(
            text("UPDATE mailboxes SET next_sync_at = now() - interval '1 second' WHERE id = :id"),
            {"id": mailbox_id},
        )


def assert_periodic_slot(next_at: datetime, mailbox_id: uuid.UUID, interval: float) -> None:
    """A periodic pass falls at the mailbox's own phase of the interval, between half an
    interval and one and a half after the pass that scheduled it (app/sync/spread.py)."""
    left = (next_at - datetime.now(UTC)).total_seconds()
    assert 0.5 * interval - 5 <= left <= 1.5 * interval, (left, interval)
    off = abs(next_at.timestamp() % interval - phase_of(mailbox_id, interval))
    assert min(off, interval - off) < 0.01, (next_at, phase_of(mailbox_id, interval))
