"""Lifecycle events on NATS once per transition; subjects for awkward user ids; replay from
a sequence and a time; resnapshot; the event contract and its committed schema."""

from __future__ import annotations

import asyncio
import string
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st
from nats.aio.client import Client as NATS
from nats.js.api import ConsumerConfig, DeliverPolicy

from app.config import Settings
from app.events import snapshot
from app.events.contract import schema_document
from app.events.subjects import decode_user_token, subject, user_token
from app.providers import registry
from app.providers.memory import make_message
from app.sync.engine import Outcome, SyncEngine
from app.sync.runtime import Runtime
from tests.conftest import bearer, run_worker
from tests.events.support import Consumer, published, stored
from tests.sync.helpers import connect, seeded

ROOT = Path(__file__).resolve().parents[2]


async def _sync(rt: Runtime, mailbox_id: uuid.UUID) -> None:
    for _ in range(50):
        result = await SyncEngine(rt, "w").run_slice(mailbox_id)
        if result.outcome in (Outcome.DONE, Outcome.DONE_AGAIN):
            return
    raise AssertionError("sync did not finish")


def test_user_tokens_are_one_valid_token_each() -> None:
    assert user_token("alice") == "alice"
    assert [user_token(u) for u in ("a.b", "*", ">", "x y", "ü", "a_b")] == [
        "a_2Eb",
        "_2A",
        "_3E",
        "x_20y",
        "_C3_BC",
        "a_5Fb",
    ]


@given(st.text(min_size=1), st.text(min_size=1))
def test_user_tokens_are_injective_and_safe(a: str, b: str) -> None:
    allowed = set(string.ascii_letters + string.digits + "-_")
    token = user_token(a)
    assert token and set(token) <= allowed
    assert decode_user_token(token) == a
    assert (user_token(a) == user_token(b)) == (a == b)


def test_the_committed_schema_is_current() -> None:
    committed = (ROOT / "events.schema.json").read_text()
    assert committed == schema_document(), "events.schema.json is stale: `mailsync events schema`"


async def test_lifecycle_events_once_per_transition(
    ev_rt: Runtime, consumer: Consumer, publisher_running: Any
) -> None:
    rt = ev_rt
    rt.settings = rt.settings.model_copy(update={"max_transient_retries": 8})
    provider = seeded(40, page_size=20, streams=1)
    registry.override("microsoft", lambda s, h: provider)
    async with publisher_running():
        mailbox_id = await connect(rt, provider, user="lena")
        await _sync(rt, mailbox_id)
        await _sync(rt, mailbox_id)  # a second pass is no news
        # Ten transient failures: one sync_failed, at the eighth.
        provider.faults.throttle_next = 10
        provider.faults.retry_after = 0.0
        for _ in range(10):
            assert (await SyncEngine(rt, "w").run_slice(mailbox_id)).outcome is Outcome.RETRY_LATER
        await _sync(rt, mailbox_id)  # recovers
        # A refused refresh: one auth_expired, however often it is tried.
        other = seeded(5)
        registry.override("microsoft", lambda s, h: other)
        rt._providers.clear()  # the runtime keeps the provider it built
        expired = await connect(rt, other, user="lena", email="lena2@example.com", expires_in=0)
        other.faults.refuse_refresh = "invalid_grant: AADSTS70008 the refresh token has expired"
        assert (await SyncEngine(rt, "w").run_slice(expired)).outcome is Outcome.AUTH_EXPIRED
        assert (await SyncEngine(rt, "w").run_slice(expired)).outcome is Outcome.BUSY
        await published(rt)
        await consumer.drain()

    by_mailbox = [(e["mailbox_id"], e["type"]) for e in consumer.lifecycle]
    assert by_mailbox == [
        (str(mailbox_id), "mailbox.connected"),
        (str(mailbox_id), "mailbox.sync_failed"),
        (str(mailbox_id), "mailbox.recovered"),
        (str(expired), "mailbox.auth_expired"),
    ]
    failed = consumer.lifecycle[1]
    assert failed["consecutive_failures"] == 8 and failed["error_class"] == "ThrottledError"
    assert failed["status"] == "error" and failed["user_id"] == "lena"
    auth = consumer.lifecycle[3]
    assert auth["action"] == "reconnect" and "AADSTS70008" in auth["last_error"]
    assert [
        r.subject.rsplit(".", 2)[-2:]
        for r in consumer.events
        if r.event["type"] == "mailbox.recovered"
    ] == [["mailbox", "recovered"]]
    assert all(
        r.subject.startswith(f"{rt.settings.events_subject_prefix}.user.lena.")
        for r in consumer.events
    )


async def test_awkward_user_ids_get_valid_subjects_and_see_only_their_own(
    ev_rt: Runtime, nc: NATS, events_settings: Settings, consumer: Consumer, publisher_running: Any
) -> None:
    rt = ev_rt
    users = ["a.b", "*", ">", "x y", "ü", "a"]
    mailboxes: dict[str, uuid.UUID] = {}
    per_user: dict[str, Consumer] = {}
    prefix = events_settings.events_subject_prefix
    for user in users:
        per_user[user] = await Consumer.start(
            nc, events_settings, subject=f"{prefix}.user.{user_token(user)}.>"
        )
    async with publisher_running():
        for i, user in enumerate(users):
            provider = seeded(5 + i, streams=1)
            registry.override("microsoft", lambda s, h, p=provider: p)
            rt._providers.clear()  # the runtime keeps the provider it built
            mailboxes[user] = await connect(rt, provider, user=user, email=f"u{i}@example.com")
            await _sync(rt, mailboxes[user])
        await published(rt)
    await consumer.drain()
    everything = consumer.events
    assert {r.event["user_id"] for r in everything} == set(users)
    for i, user in enumerate(users):
        mine = per_user[user]
        await mine.drain()
        # Only this user's events, every one of them ("a" sees nothing of "a.b").
        assert {r.event["user_id"] for r in mine.events} == {user}
        assert len(mine.events) == sum(1 for r in everything if r.event["user_id"] == user)
        assert len(mine.messages(mailboxes[user])) == 5 + i
        assert all(r.subject == subject(prefix, user, r.event["type"]) for r in mine.events)
        await mine.close()


async def test_replay_from_a_sequence_and_from_a_time(
    ev_rt: Runtime, nc: NATS, events_settings: Settings, consumer: Consumer, publisher_running: Any
) -> None:
    rt = ev_rt
    provider = seeded(30, page_size=10, streams=1)
    registry.override("microsoft", lambda s, h: provider)
    async with publisher_running():
        mailbox_id = await connect(rt, provider, user="rita")
        await _sync(rt, mailbox_id)
        await published(rt)
        await asyncio.sleep(0.05)
        later = datetime.now(UTC)
        await asyncio.sleep(0.05)
        provider.put("inbox", make_message(1000))
        provider.put("inbox", make_message(1001))
        await _sync(rt, mailbox_id)
        await published(rt)
    await consumer.drain()
    everything = consumer.events
    start = everything[10].seq
    from_seq = await Consumer.start(
        nc,
        events_settings,
        config=ConsumerConfig(deliver_policy=DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=start),
    )
    await from_seq.drain()
    assert [r.event["event_id"] for r in from_seq.events] == [
        r.event["event_id"] for r in everything[10:]
    ]
    from_time = await Consumer.start(
        nc,
        events_settings,
        config=ConsumerConfig(
            deliver_policy=DeliverPolicy.BY_START_TIME,
            opt_start_time=later.isoformat().replace("+00:00", "Z"),
        ),
    )
    await from_time.drain()
    assert sorted(from_time.count("email.received")) == ["msg-0001000", "msg-0001001"]
    await from_seq.close()
    await from_time.close()


async def test_resnapshot_rebuilds_a_consumer_exactly(
    ev_rt: Runtime,
    nc: NATS,
    events_settings: Settings,
    api: httpx.AsyncClient,
    publisher_running: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    rt = ev_rt
    monkeypatch.setattr(snapshot, "BATCH", 7)  # several batches, one job each
    provider = seeded(40, page_size=15, streams=2)
    registry.override("microsoft", lambda s, h: provider)
    async with publisher_running():
        mailbox_id = await connect(rt, provider, user="sam")
        await _sync(rt, mailbox_id)
        provider.delete("inbox", "msg-0000000")
        changed = make_message(1, read=False)
        changed.labels = ["SENT", "UNREAD", "Follow-up"]
        provider.put("sent", changed)
        await _sync(rt, mailbox_id)
        await published(rt)

        # A consumer that lost everything: it only sees what comes from now on.
        fresh = await Consumer.start(
            nc, events_settings, config=ConsumerConfig(deliver_policy=DeliverPolicy.NEW)
        )
        path = f"/admin/mailboxes/{mailbox_id}/resnapshot"
        assert (await api.post(path, headers=bearer("sam"))).status_code == 403
        missing = await api.post(
            f"/admin/mailboxes/{uuid.uuid4()}/resnapshot",
            headers=bearer("ops", roles=["mailsync.operator"]),
        )
        assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"
        started = await api.post(path, headers=bearer("ops", roles=["mailsync.operator"]))
        assert started.status_code == 202, started.text
        body = started.json()
        assert body["created"] is True and body["complete"] is False
        again = await api.post(path, headers=bearer("ops", roles=["mailsync.operator"]))
        assert again.json()["snapshot_id"] == body["snapshot_id"] and not again.json()["created"]
        await run_worker(rt)
        await published(rt)
        await fresh.drain()

    assert fresh.messages(mailbox_id) == await stored(rt, mailbox_id)
    assert len(fresh.messages(mailbox_id)) == 39
    assert set(fresh.types()) == {"email.snapshot", "mailbox.snapshot_complete"}
    [complete] = fresh.lifecycle
    assert complete["snapshot_id"] == body["snapshot_id"] and complete["messages"] == 39
    assert fresh.types()[-1] == "mailbox.snapshot_complete"
    await fresh.close()
