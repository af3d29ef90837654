"""MessageBatch: a page's messages by column, read back message by message."""

from __future__ import annotations

import dataclasses

from app.providers.base import MessageBatch
from app.providers.memory import make_message


def test_round_trips_messages_in_order() -> None:
    messages = [make_message(i, read=i % 2 == 0) for i in range(5)]
    batch = MessageBatch.of(messages)
    assert len(batch) == 5 and bool(batch)
    assert list(batch) == messages
    assert batch[3] == messages[3]
    assert batch.provider_message_id == [m.provider_message_id for m in messages]
    assert not MessageBatch()


def test_latest_keeps_the_last_version_of_a_repeated_message() -> None:
    first, second, third = make_message(1), make_message(2), make_message(3)
    newer = dataclasses.replace(first, subject="edited", labels=["UNREAD"], is_read=False)
    batch = MessageBatch.of([first, second, newer, third])
    latest = batch.latest()
    assert list(latest) == [second, newer, third]
    # Nothing repeated: the same batch, no copy.
    unique = MessageBatch.of([first, second])
    assert unique.latest() is unique


def test_remove_drops_rows_in_place_and_keeps_the_order() -> None:
    messages = [make_message(i) for i in range(6)]
    batch = MessageBatch.of(messages)
    batch.remove([4, 0, 4])
    assert list(batch) == [messages[1], messages[2], messages[3], messages[5]]
    assert all(len(getattr(batch, f.name)) == 4 for f in dataclasses.fields(batch))
    batch.remove([])
    assert len(batch) == 4
