"""The messages repository: set-based page writes that are idempotent and exact."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta, timezone

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from sqlalchemy import text

from app.db.repositories.messages import MessageRepository
from app.db.repositories.reading import MessageFilter, ReadRepository
from app.db.session import make_engine, make_sessionmaker
from app.providers.base import LabelChange, MessageBatch
from app.providers.memory import make_message
from app.sync.runtime import Runtime


def _batch(indexes: Iterable[int]) -> MessageBatch:
    return MessageBatch.of(make_message(i) for i in indexes)


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
        first = await MessageRepository(session).upsert_page(
            mailbox_id, "s", 1, MessageBatch.of(page)
        )
    async with rt.sessions() as session, session.begin():
        replay = await MessageRepository(session).upsert_page(
            mailbox_id, "s", 1, MessageBatch.of(page)
        )
        assert await MessageRepository(session).count(mailbox_id) == 1000
    assert (first.inserted, first.updated) == (1000, 0)
    assert sorted(first.written) == sorted(m.provider_message_id for m in page)
    # An identical replay rewrites nothing at all, and reports nothing written.
    assert (replay.inserted, replay.updated, replay.written) == (0, 0, [])
    # A replay in which two messages changed writes (and reports) only those two.
    page[3].is_read = not page[3].is_read
    page[7].subject = "changed"
    async with rt.sessions() as session, session.begin():
        changed = await MessageRepository(session).upsert_page(
            mailbox_id, "s", 1, MessageBatch.of(page)
        )
    assert (changed.inserted, sorted(changed.written)) == (
        0,
        [page[3].provider_message_id, page[7].provider_message_id],
    )


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
            mailbox_id, "s", 1, MessageBatch.of([message, duplicate])
        )
    assert result.inserted == 1
    message.subject = "naïve \u2013 ünïcode ✓ \x01"
    async with rt.sessions() as session, session.begin():
        await MessageRepository(session).upsert_page(mailbox_id, "s", 1, MessageBatch.of([message]))
        rows = (
            await ReadRepository(session).list_messages([mailbox_id], MessageFilter(), 10, None)
        ).rows
    [row] = rows
    assert row["to_addresses"] == message.to
    assert row["labels"] == sorted(message.labels)
    assert row["subject"] == message.subject


async def test_timestamps_round_trip_exactly(rt: Runtime) -> None:
    mailbox_id = await _mailbox(rt)
    stamps = [
        datetime(2024, 5, 1, 10, 11, 12, 123457, tzinfo=UTC),
        None,
        datetime(1999, 12, 31, 23, 59, 59, tzinfo=timezone(timedelta(hours=-5, minutes=-30))),
        datetime(2024, 2, 29, 0, 0, 0, 1, tzinfo=UTC),
    ]
    messages = [make_message(i) for i in range(len(stamps))]
    for message, stamp in zip(messages, stamps, strict=True):
        message.received_at = stamp
    async with rt.sessions() as session, session.begin():
        await MessageRepository(session).upsert_page(mailbox_id, "s", 1, MessageBatch.of(messages))
        rows = (
            await ReadRepository(session).list_messages([mailbox_id], MessageFilter(), 10, None)
        ).rows
    stored = {row["provider_message_id"]: row["received_at"] for row in rows}
    assert [stored[m.provider_message_id] for m in messages] == stamps


async def test_scoped_deletes_label_changes_and_sweep(rt: Runtime) -> None:
    mailbox_id = await _mailbox(rt)
    async with rt.sessions() as session, session.begin():
        repo = MessageRepository(session)
        await repo.upsert_page(mailbox_id, "inbox", 1, _batch(range(10)))
        await repo.upsert_page(mailbox_id, "archive", 1, _batch([5]))  # moved
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
        # The rows it changed come back as stored now (what their events carry).
        [row] = changed
        assert row["provider_message_id"] == "msg-0000001" and row["subject"] == "Subject 1"
        assert (row["labels"], row["is_read"]) == (["UNREAD"], False)
        relabelled = (await repo.ground_truth(mailbox_id))["msg-0000001"]
        assert relabelled["labels"] == ["UNREAD"] and relabelled["is_read"] is False
        # A new generation sees only 0..3: the sweep removes the rest of that stream.
        await repo.upsert_page(mailbox_id, "inbox", 2, _batch(range(4)))
        swept = await repo.sweep_stream(mailbox_id, "inbox", 2)
        assert sorted(swept) == [f"msg-000000{i}" for i in (4, 7, 8, 9)]
        state = await repo.ground_truth(mailbox_id)
    assert sorted(state) == [
        "msg-0000000",
        "msg-0000001",
        "msg-0000002",
        "msg-0000003",
        "msg-0000005",
    ]
    assert state["msg-0000005"]["stream_key"] == "archive"


async def test_listing_pages_across_mailboxes_with_undated_messages(rt: Runtime) -> None:
    first, second = await _mailbox(rt), await _mailbox(rt)
    async with rt.sessions() as session, session.begin():
        repo = MessageRepository(session)
        a = [make_message(i) for i in range(7)]
        b = [make_message(100 + i) for i in range(6)]
        a[2].received_at = a[5].received_at = None  # undated: listed after every dated one
        b[1].received_at = a[3].received_at  # equal dates: ordered by id
        await repo.upsert_page(first, "s", 1, MessageBatch.of(a))
        await repo.upsert_page(second, "s", 1, MessageBatch.of(b))
    seen: list[dict] = []
    after = None
    async with rt.sessions() as session:
        reader = ReadRepository(session)
        while True:
            listed = await reader.list_messages([first, second], MessageFilter(), 3, after)
            seen.extend(listed.rows)
            if listed.next_key is None:
                break
            after = listed.next_key
        # A handful of rows would make any plan fine; ask whether the index *can* serve it.
        await session.execute(text("SET LOCAL enable_seqscan = off"))
        plan = (
            (
                await session.execute(
                    text(
                        "EXPLAIN SELECT id FROM messages WHERE mailbox_id = :m AND "
                        "(COALESCE(received_at, '-infinity'::timestamptz), id) < ('2030-01-01', 10) "
                        "ORDER BY COALESCE(received_at, '-infinity'::timestamptz) DESC, id DESC LIMIT 3"
                    ),
                    {"m": first},
                )
            )
            .scalars()
            .all()
        )
    assert len(seen) == 13 and len({r["id"] for r in seen}) == 13
    keys = [((r["received_at"] is not None), r["received_at"] or 0, r["id"]) for r in seen]
    dated = [k for k in keys if k[0]]
    assert dated == sorted(dated, key=lambda k: (k[1], k[2]), reverse=True)
    assert [k[0] for k in keys] == [True] * 11 + [False] * 2
    assert any("ix_messages_listing" in line for line in plan), plan


_TEXT = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00\x1f"),
    max_size=12,
)


@given(
    subjects=st.lists(_TEXT, min_size=1, max_size=6),
    labels=st.lists(_TEXT.filter(bool), max_size=4),
)
@example(subjects=['a","b', "c"], labels=['x","y', "z"])  # a separator inside a value
@example(subjects=['"', "\\", "{,}", "NULL"], labels=["NULL", '"'])
@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
def test_any_text_round_trips_in_column_order(
    database_url: str, subjects: list[str], labels: list[str]
) -> None:
    """Quotes, backslashes, commas, braces and separators never shift a value into another row."""

    async def scenario() -> None:
        engine = make_engine(database_url, pool_size=1)
        sessions = make_sessionmaker(engine)
        mailbox_id = uuid.uuid4()
        try:
            async with sessions() as session, session.begin():
                await session.execute(
                    text(
                        "INSERT INTO mailboxes (id, user_id, provider, account_key, auth_mode, status) "
                        "VALUES (:id, 'u', 'google', :key, 'delegated', 'syncing')"
                    ),
                    {"id": mailbox_id, "key": mailbox_id.hex},
                )
                messages = []
                for i, subject in enumerate(subjects):
                    message = make_message(i)
                    message.subject, message.labels, message.to = (
                        subject,
                        labels,
                        [subject or "x@y"],
                    )
                    messages.append(message)
                await MessageRepository(session).upsert_page(
                    mailbox_id, "s", 1, MessageBatch.of(messages)
                )
                rows = {
                    r["provider_message_id"]: r
                    for r in (
                        await ReadRepository(session).list_messages(
                            [mailbox_id], MessageFilter(), 50, None
                        )
                    ).rows
                }
                for message in messages:
                    row = rows[message.provider_message_id]
                    assert row["subject"] == message.subject
                    assert row["labels"] == sorted(set(labels))
                    assert row["to_addresses"] == message.to
                await session.execute(
                    text("DELETE FROM mailboxes WHERE id = :id"), {"id": mailbox_id}
                )
        finally:
            await engine.dispose()

    asyncio.run(scenario())
