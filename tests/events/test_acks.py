"""What JetStream answers decides what the publisher marks: an error ack, a missing ack, a
deleted stream and a late ack never mark a row (or count for another message), a duplicate
does; the window of outstanding acks is a bound."""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
from nats.aio.client import Client as NATS
from nats.js.api import DiscardPolicy
from sqlalchemy import text

from app.config import Settings
from app.db.repositories.messages import UpsertResult, stored_labels
from app.db.repositories.outbox import OutboxRepository
from app.events.acks import DUPLICATE, PENDING, REFUSED, STORED, AckedPublisher, AckTimeout
from app.events.changes import MESSAGES_CHANGED, PageChanges
from app.events.publisher import Publisher, RoundFailed
from app.events.wire import WireClient
from app.providers.base import MessageBatch
from app.providers.memory import make_message
from app.sync.runtime import Runtime
from tests.events.conftest import NATS_URL
from tests.events.support import Consumer
from tests.sync.helpers import connect, seeded


def _page(start: int, size: int) -> dict[str, Any]:
    batch = MessageBatch.of(make_message(i) for i in range(start, start + size))
    result = UpsertResult(batch, stored_labels(batch), list(batch.provider_message_id), [])
    changes = PageChanges("inbox")
    changes.upserted(result)
    payload = changes.payload()
    assert payload is not None
    return payload


async def _mailbox(rt: Runtime, user: str) -> uuid.UUID:
    return await connect(rt, seeded(0), user=user, email=f"{user}@example.com")


async def _rows(rt: Runtime, mailbox_id: uuid.UUID, *sizes: int, first: int = 0) -> None:
    """One committed outbox row per size, each that many email.received events."""
    for size in sizes:
        async with rt.sessions() as session, session.begin():
            await OutboxRepository(session).add(mailbox_id, MESSAGES_CHANGED, _page(first, size))
        first += size


async def _unpublished(rt: Runtime) -> list[tuple[str, int]]:
    async with rt.sessions() as session:
        rows = await session.execute(
            text(
                "SELECT m.user_id, o.position FROM outbox_events o "
                "JOIN mailboxes m ON m.id = o.mailbox_id "
                "WHERE o.published_at IS NULL ORDER BY m.user_id, o.position"
            )
        )
        return [(r[0], r[1]) for r in rows.all()]


@pytest.fixture
async def publisher(events_settings: Settings) -> AsyncIterator[Publisher]:
    p = Publisher(events_settings)
    p.ack_timeout = 1.0
    await p.connect_nats()
    try:
        yield p
    finally:
        await p.close()


async def _reconfigure(publisher: Publisher, **changes: Any) -> None:
    js = publisher.js
    assert js is not None
    info = await js.stream_info(publisher.settings.events_stream)
    await js.update_stream(dataclasses.replace(info.config, **changes))


async def test_an_error_ack_leaves_its_row_and_the_mailbox_later_rows_unmarked(
    ev_rt: Runtime, publisher: Publisher, consumer: Consumer
) -> None:
    rt = ev_rt
    mailbox_id = await _mailbox(rt, "erin")
    await _rows(rt, mailbox_id, 20, 20, 20)
    # The stream takes 30 messages and refuses the rest ("maximum messages exceeded").
    await _reconfigure(publisher, discard=DiscardPolicy.NEW, max_msgs=30)
    with pytest.raises(RoundFailed) as failed:
        await publisher.publish_round()
    assert failed.value.reason == "stream_error"
    assert "maximum messages" in str(failed.value)
    # Row 1 is stored whole; row 2 only in part; row 3 must wait behind it.
    assert await _unpublished(rt) == [("erin", 2), ("erin", 3)]

    await _reconfigure(publisher, max_msgs=-1)
    result = await publisher.publish_round()
    assert (result.published_rows, result.events) == (2, 40)
    assert await _unpublished(rt) == []
    await consumer.drain()
    # Row 2's first ten went out twice with the same ids and are stored once, in order.
    ids = [r.msg_id for r in consumer.events]
    assert len(ids) == len(set(ids)) == 60
    assert [r.event["version"] for r in consumer.events] == [1] * 20 + [2] * 20 + [3] * 20
    assert len(consumer.messages(mailbox_id)) == 60


async def test_a_missing_ack_leaves_its_row_unmarked_and_others_are_marked(
    ev_rt: Runtime, publisher: Publisher, nc: NATS
) -> None:
    rt = ev_rt
    prefix = publisher.settings.events_subject_prefix
    ann, bob = await _mailbox(rt, "ann"), await _mailbox(rt, "bob")
    await _rows(rt, ann, 5)
    await _rows(rt, bob, 5)
    await _rows(rt, ann, 5, first=100)
    # Bob's events reach a subscriber that never answers, and no stream: no ack ever comes.
    await _reconfigure(publisher, subjects=[f"{prefix}.user.ann.>"])
    silent = await nc.subscribe(f"{prefix}.user.bob.>")
    with pytest.raises(RoundFailed) as failed:
        await publisher.publish_round()
    assert failed.value.reason == "ack_timeout"
    assert await _unpublished(rt) == [("bob", 1)]

    await silent.unsubscribe()
    await _reconfigure(publisher, subjects=[f"{prefix}.>"])
    result = await publisher.publish_round()
    assert (result.published_rows, result.events) == (1, 5)
    assert await _unpublished(rt) == []


async def test_a_deleted_stream_marks_nothing_and_is_created_again(
    ev_rt: Runtime, publisher: Publisher, nc: NATS
) -> None:
    rt = ev_rt
    mailbox_id = await _mailbox(rt, "dan")
    await _rows(rt, mailbox_id, 10, 10)
    js = publisher.js
    assert js is not None
    await js.delete_stream(publisher.settings.events_stream)
    with pytest.raises(RoundFailed) as failed:
        await publisher.publish_round()
    assert failed.value.reason == "stream_error" and "no stream" in str(failed.value)
    assert await _unpublished(rt) == [("dan", 1), ("dan", 2)]
    assert not publisher.stream_ready

    result = await publisher.publish_round()
    assert (result.published_rows, result.events) == (2, 20)
    info = await nc.jetstream().stream_info(publisher.settings.events_stream)
    assert info.state.messages == 20


@pytest.fixture
async def wire() -> AsyncIterator[WireClient]:
    client = WireClient()
    await client.connect(NATS_URL)
    try:
        yield client
    finally:
        await client.close()


async def test_acks_are_read_per_message_and_a_late_ack_counts_for_nothing(
    nc: NATS, wire: WireClient, events_settings: Settings, consumer: Consumer
) -> None:
    prefix = events_settings.events_subject_prefix
    stored_subject = f"{prefix}.user.ida.email.received"
    acks = AckedPublisher(wire, window=8, timeout=0.5)
    await acks.start()

    # Something that answers after the batch gave up on it.
    async def late(msg: Any) -> None:
        await asyncio.sleep(1.0)
        await nc.publish(msg.reply, orjson.dumps({"stream": "X", "seq": 1}))

    slow = await nc.subscribe("slow.answer", cb=late)
    await nc.flush()  # the server knows the subscription before the other connection sends
    try:
        first = acks.batch()
        await acks.publish(first, "slow.answer", b"{}", "late-1")
        with pytest.raises(AckTimeout):
            await acks.settle(first)

        second = acks.batch()
        await acks.publish(second, stored_subject, b"{}", "id-a")
        await acks.publish(second, stored_subject, b"{}", "id-b")
        await acks.publish(second, stored_subject, b"{}", "id-a")  # the same Nats-Msg-Id
        await acks.publish(second, "nobody.listens.here", b"{}", "id-c")
        await acks.settle(second)
        assert list(second.states) == [STORED, STORED, DUPLICATE, REFUSED]
        assert second.no_stream and "no responders" in (second.refusal or "")
        assert second.stored(0, 3) and not second.stored(0, 4)
        assert second.duplicates(0, 4) == 1

        await asyncio.sleep(1.0)  # the late answer arrives now
        assert list(first.states) == [PENDING] and first.received == 0
        assert second.received == 4
        # Every answer came straight from the parser, none through the subscription.
        assert wire.routed == 5
    finally:
        await slow.unsubscribe()
        await acks.stop()


async def test_outstanding_acks_never_exceed_the_window(
    wire: WireClient, events_settings: Settings, consumer: Consumer
) -> None:
    subject = f"{events_settings.events_subject_prefix}.user.win.email.received"
    acks = AckedPublisher(wire, window=16, timeout=10)
    await acks.start()
    try:
        batch = acks.batch()
        most = 0
        for i in range(300):
            await acks.publish(batch, subject, b"{}", f"w-{i}")
            most = max(most, batch.outstanding)
        await acks.settle(batch)
        assert most == 16
        assert batch.stored(0, 300) and batch.received == 300
    finally:
        await acks.stop()
