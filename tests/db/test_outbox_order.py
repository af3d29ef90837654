"""A mailbox's outbox rows are claimed in commit order (positions), never in id order."""

from __future__ import annotations

import asyncio

from sqlalchemy import text

from app.db.repositories.outbox import OutboxRepository
from app.providers.memory import MemoryProvider
from app.sync.runtime import Runtime
from tests.sync.helpers import connect


async def test_a_row_whose_id_came_first_but_committed_second_is_claimed_second(
    rt: Runtime,
) -> None:
    mailbox_id = await connect(rt, MemoryProvider("microsoft"))
    async with rt.sessions() as first, rt.sessions() as second:
        await first.begin()
        # `first` changes the mailbox row (as a status transition does) and holds its lock.
        await first.execute(
            text("UPDATE mailboxes SET updated_at = now() WHERE id = :id"), {"id": mailbox_id}
        )
        # `second` draws its id now, then waits in the position trigger for that lock.
        waiting = asyncio.create_task(
            OutboxRepository(second).add(mailbox_id, "mailbox.test", {"n": "second"})
        )
        await asyncio.sleep(0.3)
        assert not waiting.done()
        await OutboxRepository(first).add(mailbox_id, "mailbox.test", {"n": "first"})
        await first.commit()
        await waiting
        await second.commit()

    async with rt.sessions() as session, session.begin():
        claimed = [
            r for r in await OutboxRepository(session).claim(100) if r.kind == "mailbox.test"
        ]
    # The id order disagrees with the commit order...
    by_id = sorted(claimed, key=lambda r: r.id)
    by_position = sorted(claimed, key=lambda r: r.position)
    assert by_id == list(reversed(by_position))
    # ...and the claim hands rows over in commit order, nothing blocked.
    assert claimed == by_position and not any(r.blocked for r in claimed)
