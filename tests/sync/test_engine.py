"""The engine's invariants: leases, checkpoints, convergence, tokens, auth expiry."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest
from sqlalchemy import text

from app.db.repositories.mailboxes import Lease, LeaseLost, MailboxRepository
from app.db.repositories.outbox import OutboxRepository
from app.providers import registry
from app.providers.base import MessageBatch, Page, StreamInfo
from app.providers.memory import MemoryProvider, make_message
from app.sync import jobs
from app.sync.engine import Outcome, SyncEngine, _SliceState
from app.sync.runtime import Runtime
from tests.conftest import run_worker
from tests.sync.helpers import (
    connect,
    expire_lease,
    mailbox_row,
    make_due,
    seeded,
    stored_ids,
    stored_state,
    truth_state,
)


async def _leased_mailbox(rt: Runtime, provider: MemoryProvider) -> tuple[uuid.UUID, Lease]:
    """A connected mailbox whose lease worker "w" holds, as a running sync would."""
    registry.override("microsoft", lambda s, h: provider)
    mailbox_id = await connect(rt, provider)
    async with rt.sessions() as session, session.begin():
        lease = await MailboxRepository(session).acquire_lease(mailbox_id, "w", 30)
    assert lease is not None
    return mailbox_id, lease


class Crash(BaseException):
    """Stands for the process dying: nothing in the engine may catch it."""


async def test_killed_between_pages_resumes_from_last_committed_page(rt: Runtime) -> None:
    rt.settings = rt.settings.model_copy(update={"sync_recent_first": 0})  # pages only
    provider = seeded(400, page_size=25, streams=1)
    registry.override("microsoft", lambda s, h: provider)
    mailbox_id = await connect(rt, provider)
    cursors_seen: list[Any] = []

    def crash_after_four_pages(stream: StreamInfo, cursor: Any) -> None:
        cursors_seen.append(cursor)
        if len(cursors_seen) == 5:
            raise Crash()

    provider.faults.before_page = crash_after_four_pages
    with pytest.raises(Crash):
        await SyncEngine(rt, "doomed").run_slice(mailbox_id)
    assert len(await stored_ids(rt, mailbox_id)) == 100  # four committed pages of 25
    checkpoint = cursors_seen[-1]

    # The dead worker still holds a live lease: nobody else may sync yet.
    provider.faults.before_page = lambda stream, cursor: cursors_seen.append(cursor)
    assert (await SyncEngine(rt, "eager").run_slice(mailbox_id)).outcome is Outcome.BUSY

    await expire_lease(rt, mailbox_id)
    result = await jobs.schedule({"rt": rt})
    assert result["lapsed"] == 1
    await run_worker(rt)

    # The survivor started exactly where the last commit left off.
    assert cursors_seen[5] == checkpoint
    ids = await stored_ids(rt, mailbox_id)
    assert len(ids) == len(set(ids)) == 400
    assert (await mailbox_row(rt, mailbox_id))["status"] == "connected"


async def test_two_workers_race_exactly_one_syncs(rt: Runtime) -> None:
    provider = seeded(300, page_size=30)
    registry.override("microsoft", lambda s, h: provider)
    mailbox_id = await connect(rt, provider)
    results = await asyncio.gather(
        SyncEngine(rt, "w1").run_slice(mailbox_id), SyncEngine(rt, "w2").run_slice(mailbox_id)
    )
    assert sorted(r.outcome for r in results) == sorted([Outcome.DONE, Outcome.BUSY])
    assert provider.pages_served == 10 + 2  # every page once, plus one delta poll per stream
    assert len(await stored_ids(rt, mailbox_id)) == 300


async def test_a_worker_whose_lease_lapsed_cannot_write(rt: Runtime) -> None:
    provider = seeded(10)
    registry.override("microsoft", lambda s, h: provider)
    mailbox_id = await connect(rt, provider)
    async with rt.sessions() as session, session.begin():
        stale = await MailboxRepository(session).acquire_lease(mailbox_id, "stale", 30)
    assert stale is not None
    await expire_lease(rt, mailbox_id)
    async with rt.sessions() as session, session.begin():
        fresh = await MailboxRepository(session).acquire_lease(mailbox_id, "fresh", 30)
    assert fresh is not None and fresh.fencing_token == stale.fencing_token + 1

    engine = SyncEngine(rt, "stale")
    page = Page(upserts=MessageBatch.of([make_message(999_999)]), cursor={"seq": 1})
    with pytest.raises(LeaseLost):
        await engine._commit_page(
            mailbox_id, StreamInfo("inbox", "inbox"), 1, "full", page, _SliceState(stale)
        )
    assert await stored_ids(rt, mailbox_id) == []
    # Even a lease that has not lapsed in time is refused once it was taken over.
    async with rt.sessions() as session, session.begin():
        with pytest.raises(LeaseLost):
            await MailboxRepository(session).fence(stale, 30)


async def test_messages_are_never_written_for_a_mailbox_row_that_is_gone(rt: Runtime) -> None:
    # messages.mailbox_id has no foreign key (migration 0002): the fence that ends every
    # page's transaction is what refuses a page for a mailbox that no longer exists.
    mailbox_id, lease = await _leased_mailbox(rt, seeded(10))
    async with rt.sessions() as session, session.begin():
        await session.execute(text("DELETE FROM mailboxes WHERE id = :id"), {"id": mailbox_id})

    page = Page(upserts=MessageBatch.of([make_message(1), make_message(2)]), cursor={"seq": 1})
    with pytest.raises(LeaseLost):
        await SyncEngine(rt, "w")._commit_page(
            mailbox_id, StreamInfo("inbox", "inbox"), 1, "full", page, _SliceState(lease)
        )
    assert await stored_ids(rt, mailbox_id) == []


async def test_a_page_replayed_as_stored_is_no_change_event(rt: Runtime) -> None:
    mailbox_id, lease = await _leased_mailbox(rt, seeded(10))
    engine, stream = SyncEngine(rt, "w"), StreamInfo("inbox", "inbox")
    first = MessageBatch.of([make_message(1), make_message(2)])
    again = MessageBatch.of([make_message(1), make_message(2)])
    changed = MessageBatch.of([make_message(1), make_message(2)])
    changed.subject[1] = "edited"
    for batch in (first, again, changed):
        page = Page(upserts=batch, cursor={"seq": 1})
        await engine._commit_page(mailbox_id, stream, 1, "full", page, _SliceState(lease))
    async with rt.sessions() as session:
        events = await OutboxRepository(session).for_mailbox(mailbox_id)
    # The replay wrote nothing and said nothing; the edit is reported for its message only,
    # with the values the page committed.
    assert [
        event["payload"].get("received", {}).get("provider_message_id") for event in events
    ] == [
        ["msg-0000001", "msg-0000002"],
        None,
    ]
    assert events[1]["payload"]["updated"]["provider_message_id"] == ["msg-0000002"]
    assert events[1]["payload"]["updated"]["subject"] == ["edited"]
    assert [event["position"] for event in events] == [1, 2]


async def test_redis_flushed_mid_sync_scheduler_rebuilds_work(rt: Runtime, settings: Any) -> None:
    provider = seeded(300, page_size=20)
    registry.override("microsoft", lambda s, h: provider)
    rt.settings = settings.model_copy(update={"sync_slice_pages": 3})
    mailbox_id = await connect(rt, provider, enqueue=True)

    # One slice runs, enqueues its continuation... and Redis loses everything.
    outcome = await jobs.sync_mailbox({"rt": rt, "worker_id": "w"}, str(mailbox_id))
    assert outcome == "continue"
    await rt.redis.flushdb()
    assert 0 < len(await stored_ids(rt, mailbox_id)) < 300

    await make_due(rt, mailbox_id)  # the short retry horizon of an unfinished pass passes
    scheduled = await jobs.schedule({"rt": rt})
    assert scheduled["enqueued"] == 1
    await run_worker(rt)
    assert sorted(await stored_ids(rt, mailbox_id)) == sorted(provider.truth())
    assert (await mailbox_row(rt, mailbox_id))["status"] == "connected"


async def test_expired_cursor_converges_to_exactly_the_provider(rt: Runtime) -> None:
    provider = seeded(200, page_size=30)
    registry.override("microsoft", lambda s, h: provider)
    mailbox_id = await connect(rt, provider)
    assert (await SyncEngine(rt, "w").run_slice(mailbox_id)).outcome is Outcome.DONE

    # Changes the live cursor would have told us about, and one it never will: a message
    # that vanished without a trace while the cursor was dead.
    provider.put("inbox", make_message(5000))
    provider.delete("inbox", "msg-0000002")
    provider.put("sent", make_message(4, read=False))
    ghost = next(iter(provider.streams["inbox"]))
    del provider.streams["inbox"][ghost]
    provider.expire_cursors("inbox")
    provider.expire_cursors("sent")
    provider.faults.repeat_next_page = True

    result = await SyncEngine(rt, "w").run_slice(mailbox_id)
    assert result.outcome is Outcome.DONE
    assert await stored_state(rt, mailbox_id) == truth_state(provider)
    ids = await stored_ids(rt, mailbox_id)
    assert len(ids) == len(set(ids))
    row = await mailbox_row(rt, mailbox_id)
    assert row["messages_synced"] == len(provider.truth())


async def test_token_captured_before_a_long_sync_is_never_used_expired(
    rt: Runtime, settings: Any
) -> None:
    provider = seeded(100, page_size=5, streams=1, access_token_ttl=2.0)
    provider.faults.stall_seconds = 0.15
    registry.override("microsoft", lambda s, h: provider)
    rt.settings = settings.model_copy(update={"token_refresh_margin_seconds": 1})
    mailbox_id = await connect(rt, provider)
    first_token = next(iter(provider.valid_tokens))

    assert (await SyncEngine(rt, "w").run_slice(mailbox_id)).outcome is Outcome.DONE
    assert provider.refresh_count >= 2
    assert all(used < expires for _, expires, used in provider.token_uses)
    assert any(token == first_token for token, _, _ in provider.token_uses)
    assert provider.token_uses[-1][0] != first_token


async def test_rotated_refresh_token_is_stored_and_never_reused(rt: Runtime) -> None:
    provider = seeded(20, access_token_ttl=3600)
    registry.override("microsoft", lambda s, h: provider)
    mailbox_id = await connect(rt, provider, expires_in=0)
    for _ in range(3):
        await make_due(rt, mailbox_id)
        async with rt.sessions() as session, session.begin():
            from app.db.repositories.credentials import CredentialRepository

            repo = CredentialRepository(session, rt.cipher)
            cred = await repo.get(mailbox_id)
            assert cred is not None
            await repo.put(
                mailbox_id,
                access_token="expired",
                refresh_token=cred.refresh_token,
                expires_at=None,
            )
        assert (await SyncEngine(rt, "w").run_slice(mailbox_id)).outcome is Outcome.DONE
    # Each refresh spent the token stored by the previous one (the memory provider refuses reuse).
    assert provider.refresh_count == 3


async def test_refused_refresh_parks_mailbox_until_reconnect(rt: Runtime, api: Any) -> None:
    provider = seeded(30)
    provider.faults.refuse_refresh = "invalid_grant: AADSTS70008: The refresh token has expired"
    registry.override("microsoft", lambda s, h: provider)
    mailbox_id = await connect(rt, provider, expires_in=0, enqueue=True)
    await run_worker(rt)

    row = await mailbox_row(rt, mailbox_id)
    assert row["status"] == "auth_expired"
    assert "AADSTS70008" in row["last_error"] and row["last_error_at"] is not None
    # The first sync and the subscription job each tried once; then nothing retries.
    refusals = provider.refresh_count
    assert 1 <= refusals <= 2
    assert (await jobs.schedule({"rt": rt}))["due"] == 0
    await jobs.renew_subscriptions({"rt": rt})
    await run_worker(rt)
    assert provider.refresh_count == refusals

    provider.faults.refuse_refresh = None
    new_id = await connect(rt, provider, enqueue=True)
    assert new_id == mailbox_id
    row = await mailbox_row(rt, mailbox_id)
    assert row["status"] == "pending" and row["last_error"] is None
    await run_worker(rt)
    assert (await mailbox_row(rt, mailbox_id))["status"] == "connected"
    assert len(await stored_ids(rt, mailbox_id)) == 30


async def test_throttling_retries_after_retry_after_and_completes(rt: Runtime) -> None:
    provider = seeded(100, page_size=20)
    provider.faults.throttle_next = 2
    registry.override("microsoft", lambda s, h: provider)
    mailbox_id = await connect(rt, provider, enqueue=True)
    await run_worker(rt)
    row = await mailbox_row(rt, mailbox_id)
    assert row["status"] == "connected" and row["consecutive_failures"] == 0
    assert len(await stored_ids(rt, mailbox_id)) == 100


async def test_change_during_sync_earns_another_pass(rt: Runtime) -> None:
    provider = seeded(100, page_size=20)
    registry.override("microsoft", lambda s, h: provider)
    mailbox_id = await connect(rt, provider, enqueue=True)
    calls = {"n": 0}

    async def change_midway(stream: StreamInfo, cursor: Any) -> None:
        calls["n"] += 1
        if calls["n"] == 3:
            provider.put("inbox", make_message(777_777))
            async with rt.sessions() as session, session.begin():
                await MailboxRepository(session).request_sync([mailbox_id])

    provider.faults.before_page = change_midway
    await run_worker(rt)
    assert "msg-0777777" in await stored_ids(rt, mailbox_id)


async def test_disconnect_stops_sync_and_fences_running_worker(rt: Runtime) -> None:
    mailbox_id, lease = await _leased_mailbox(rt, seeded(50))
    async with rt.sessions() as session, session.begin():
        await MailboxRepository(session).mark_disconnected(mailbox_id)
    async with rt.sessions() as session, session.begin():
        with pytest.raises(LeaseLost):
            await MailboxRepository(session).fence(lease, 30)
    assert (await SyncEngine(rt, "w2").run_slice(mailbox_id)).outcome is Outcome.BUSY
    assert uuid.UUID(str(mailbox_id))


async def test_the_largest_stream_starts_first(rt: Runtime) -> None:
    provider = MemoryProvider("microsoft", page_size=50, max_concurrency=1)
    # Stream keys sort in another order than their sizes.
    sizes = {"a-small": 5, "b-large": 120, "c-medium": 40}
    first_id = 0
    for key, size in sizes.items():
        provider.add_stream(key)
        for i in range(first_id, first_id + size):
            provider.put(key, make_message(i))
        first_id += size
    registry.override("microsoft", lambda s, h: provider)
    mailbox_id = await connect(rt, provider)
    first_fetches: list[str] = []

    def record(stream: Any, cursor: Any) -> None:
        if cursor is None:
            first_fetches.append(stream.key)

    provider.faults.before_page = record
    assert (await SyncEngine(rt, "w").run_slice(mailbox_id)).outcome is Outcome.DONE
    # One stream at a time here, so the order is exactly the stream order.
    assert first_fetches == ["b-large", "c-medium", "a-small"]
    assert await stored_state(rt, mailbox_id) == truth_state(provider)
