"""Hints of change notifications: a pass takes them as it read them."""

from __future__ import annotations

import uuid

from sqlalchemy import text

from app.db.repositories.pending_streams import PendingStreamRepository
from app.providers.base import ChangeHint
from app.sync.runtime import Runtime
from tests.db.test_messages_repository import _mailbox


async def _note(rt: Runtime, mailbox_id: uuid.UUID, message_id: str) -> None:
    """What the webhook log's statement does for one notification of the message."""
    async with rt.sessions() as session, session.begin():
        await session.execute(
            text(
                "INSERT INTO pending_streams (mailbox_id, stream_key, message_id, locate) "
                "VALUES (:id, '', :message, true) "
                "ON CONFLICT (mailbox_id, stream_key, message_id, locate) "
                "DO UPDATE SET noted_at = EXCLUDED.noted_at"
            ),
            {"id": mailbox_id, "message": message_id},
        )


async def _messages(rt: Runtime, mailbox_id: uuid.UUID) -> list[str]:
    async with rt.sessions() as session:
        return [h.hint.message for h in await PendingStreamRepository(session).read(mailbox_id, 10)]


async def test_a_hint_noted_again_after_a_pass_read_it_stays_for_the_next_pass(
    rt: Runtime,
) -> None:
    mailbox_id = await _mailbox(rt)
    await _note(rt, mailbox_id, "moved")
    await _note(rt, mailbox_id, "read")
    async with rt.sessions() as session:
        read = await PendingStreamRepository(session).read(mailbox_id, 10)
    assert sorted(h.hint.message for h in read) == ["moved", "read"]
    # The message changes again (moves) after the pass read its hint, before it takes it.
    await _note(rt, mailbox_id, "moved")
    async with rt.sessions() as session, session.begin():
        await PendingStreamRepository(session).take(mailbox_id, read)
    assert await _messages(rt, mailbox_id) == ["moved"]
    async with rt.sessions() as session:
        assert await PendingStreamRepository(session).any(mailbox_id)


async def test_a_pass_notes_hints_for_the_next_pass_once_each(rt: Runtime) -> None:
    mailbox_id = await _mailbox(rt)
    hints = [ChangeHint(stream="inbox"), ChangeHint(message="m1", locate=True)]
    for _ in range(2):
        async with rt.sessions() as session, session.begin():
            await PendingStreamRepository(session).note(mailbox_id, hints)
    async with rt.sessions() as session:
        read = await PendingStreamRepository(session).read(mailbox_id, 10)
    assert sorted((h.hint.stream, h.hint.message, h.hint.locate) for h in read) == [
        ("", "m1", True),
        ("inbox", "", False),
    ]
