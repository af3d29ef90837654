"""The messages repository: set-based page writes that are idempotent and exact."""

from __future__ import annotations

import uuid

from sqlalchemy import text

from app.db.repositories.messages import MessageRepository
from app.providers.base import LabelChange
from app.providers.memory import make_message
from app.sync.runtime import Runtime


async def _mailbox(rt: Runtime) -> uuid.UUID:
    mailbox_id = uuid.uuid4()
    async with rt.sessions() as session, session.begin():
        await session.execute(
            text(
                "INSERT INTO mailboxes (id, user_id, provider, account_key, auth_mode, status) "
                "VALUES (:id, 'u', 'google', :key, 'delegated', 'syncing')"
            ),
            {"id": mailbox_id, "key": mailbox_id.hex},
        )
    return mailbox_id


async def test_upsert_is_idempotent_and_counts_inserts(rt: Runtime) -> None:
    mailbox_id = await _mailbox(rt)
    page = [make_message(i) for i in range(1000)]
    async with rt.sessions() as session, session.begin():
        first = await MessageRepository(session).upsert_page(mailbox_id, "s", 1, page)
    async with rt.sessions() as session, session.begin():
        replay = await MessageRepository(session).upsert_page(mailbox_id, "s", 1, page)
        assert await MessageRepository(session).count(mailbox_id) == 1000
    assert (first.inserted, first.updated) == (1000, 0)
    # An identical replay rewrites nothing at all.
    assert (replay.inserted, replay.updated) == (0, 0)


async def test_awkward_values_round_trip(rt: Runtime) -> None:
    mailbox_id = await _mailbox(rt)
    message = make_message(1)
    message.to = ['"quoted" <a@x>', "back\\slash@x", "comma,brace}{@x", "NULL", ""]
    message.labels = ["Label with spaces", 'Quote"d', "UNREAD"]
    message.subject = "naïve \u2013 ünïcode ✓ \x01"
    duplicate = make_message(1)
    duplicate.subject = "last one wins"
    async with rt.sessions() as session, session.begin():
        result = await MessageRepository(session).upsert_page(
            mailbox_id, "s", 1, [message, duplicate]
        )
    assert result.inserted == 1
    message.subject = "naïve \u2013 ünïcode ✓ \x01"
    async with rt.sessions() as session, session.begin():
        await MessageRepository(session).upsert_page(mailbox_id, "s", 1, [message])
        rows = await MessageRepository(session).list_page([mailbox_id], 10, None)
    [row] = rows
    assert row["to_addresses"] == message.to
    assert row["labels"] == sorted(message.labels)
    assert row["subject"] == message.subject


async def test_scoped_deletes_label_changes_and_sweep(rt: Runtime) -> None:
    mailbox_id = await _mailbox(rt)
    async with rt.sessions() as session, session.begin():
        repo = MessageRepository(session)
        await repo.upsert_page(mailbox_id, "inbox", 1, [make_message(i) for i in range(10)])
        await repo.upsert_page(mailbox_id, "archive", 1, [make_message(5)])  # moved
        # The old folder's removal must not delete the moved message.
        assert await repo.delete_from_stream(
            mailbox_id, "inbox", ["msg-0000005", "msg-0000006"]
        ) == ["msg-0000006"]
        changed = await repo.apply_label_changes(
            mailbox_id,
            [
                LabelChange("msg-0000001", add=("UNREAD", "STARRED")),
                LabelChange("msg-0000001", remove=("STARRED",)),
                LabelChange("msg-0000002", remove=("NOPE",)),
            ],
        )
        assert changed == ["msg-0000001"]
        relabelled = (await repo.ground_truth(mailbox_id))["msg-0000001"]
        assert relabelled["labels"] == ["UNREAD"] and relabelled["is_read"] is False
        # A new generation sees only 0..3: the sweep removes the rest of that stream.
        await repo.upsert_page(mailbox_id, "inbox", 2, [make_message(i) for i in range(4)])
        assert await repo.sweep_stream(mailbox_id, "inbox", 2) == 4  # 4, 7, 8, 9
        state = await repo.ground_truth(mailbox_id)
    assert sorted(state) == [
        "msg-0000000",
        "msg-0000001",
        "msg-0000002",
        "msg-0000003",
        "msg-0000005",
    ]
    assert state["msg-0000005"]["stream_key"] == "archive"
