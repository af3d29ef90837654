"""Status tells the truth: phases, progress and in_sync during a rebuild, owed passes,
lifecycle events once per transition, and a lease kept by its heartbeat."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

from app.db.repositories.mailboxes import MailboxRepository
from app.db.repositories.outbox import OutboxRepository
from app.providers import registry
from app.providers.base import StreamInfo
from app.providers.memory import MemoryProvider, make_message
from app.sync import jobs
from app.sync import mailboxes as service
from app.sync.engine import Outcome, SyncEngine
from app.sync.runtime import Runtime
from tests.sync.helpers import connect, mailbox_row, seeded, stored_ids


async def _view(rt: Runtime, user: str = "alice") -> service.MailboxView:
    async with rt.sessions() as session:
        [view] = await service.status_of(session, user)
    return view


async def _sync_until_done(rt: Runtime, mailbox_id: uuid.UUID) -> list[Outcome]:
    outcomes = []
    for _ in range(100):
        result = await SyncEngine(rt, "w").run_slice(mailbox_id)
        outcomes.append(result.outcome)
        if result.outcome in (Outcome.DONE, Outcome.DONE_AGAIN):
            return outcomes
    raise AssertionError(f"no end in sight: {outcomes[-5:]}")


async def _lifecycle_events(rt: Runtime, mailbox_id: uuid.UUID) -> list[str]:
    async with rt.sessions() as session:
        events = await OutboxRepository(session).for_mailbox(mailbox_id)
    return [e["kind"] for e in events if e["kind"].startswith("mailbox.")]


async def test_a_dead_cursor_rebuild_is_reported_as_it_happens(rt: Runtime) -> None:
    rt.settings = rt.settings.model_copy(update={"sync_recent_first": 0})
    provider = seeded(400, page_size=25, streams=1)
    registry.override("microsoft", lambda s, h: provider)
    mailbox_id = await connect(rt, provider)
    await _sync_until_done(rt, mailbox_id)
    view = await _view(rt)
    assert (view.mailbox.status, view.mailbox.phase, view.percent) == ("connected", "idle", 100)
    assert view.in_sync and view.streams_behind == 0 and view.mailbox.pending_since is None

    # The cursor dies. From the first fetch of the rebuild on, status says so.
    provider.expire_cursors("inbox")
    seen_during_rebuild: list[tuple[str | None, bool, int]] = []

    async def look(stream: StreamInfo, cursor: Any) -> None:
        if cursor is None:
            v = await _view(rt)
            seen_during_rebuild.append((v.mailbox.phase, v.in_sync, v.percent))

    provider.faults.before_page = look
    rt.settings = rt.settings.model_copy(update={"sync_slice_pages": 4})
    first = await SyncEngine(rt, "w").run_slice(mailbox_id)
    assert first.outcome is Outcome.CONTINUE
    assert seen_during_rebuild == [("resync", False, 0)]
    view = await _view(rt)
    assert view.mailbox.status == "connected"  # the mailbox is still usable
    assert view.mailbox.phase == "resync"  # and a slice's end does not paper over it
    assert not view.in_sync and view.streams_behind == 1
    assert view.percent == 18  # 3 pages of 25 out of 400: the rebuild's own progress

    percents = [view.percent]
    rt.settings = rt.settings.model_copy(update={"sync_slice_pages": 3})
    while (await SyncEngine(rt, "w").run_slice(mailbox_id)).outcome is Outcome.CONTINUE:
        view = await _view(rt)
        assert view.mailbox.phase == "resync" and not view.in_sync
        percents.append(view.percent)
    assert percents == sorted(percents) and all(p < 100 for p in percents)
    view = await _view(rt)
    assert (view.mailbox.phase, view.percent, view.in_sync) == ("idle", 100, True)
    assert len(await stored_ids(rt, mailbox_id)) == 400


async def test_lifecycle_events_are_raised_once_per_transition(rt: Runtime) -> None:
    rt.settings = rt.settings.model_copy(update={"max_transient_retries": 8})
    provider = seeded(60, page_size=30, streams=1)
    registry.override("microsoft", lambda s, h: provider)
    mailbox_id = await connect(rt, provider)
    await _sync_until_done(rt, mailbox_id)
    await _sync_until_done(rt, mailbox_id)  # a second pass is no news
    assert await _lifecycle_events(rt, mailbox_id) == ["mailbox.connected"]

    # Ten transient failures in a row: status error after the eighth, one event.
    provider.faults.throttle_next = 10
    provider.faults.retry_after = 0.0
    statuses = []
    for _ in range(10):
        result = await SyncEngine(rt, "w").run_slice(mailbox_id)
        assert result.outcome is Outcome.RETRY_LATER
        statuses.append((await mailbox_row(rt, mailbox_id))["status"])
    assert statuses == ["connected"] * 7 + ["error"] * 3
    row = await mailbox_row(rt, mailbox_id)
    assert row["consecutive_failures"] == 10 and "429" in row["last_error"]
    assert await _lifecycle_events(rt, mailbox_id) == ["mailbox.connected", "mailbox.sync_failed"]
    async with rt.sessions() as session:
        events = await OutboxRepository(session).for_mailbox(mailbox_id)
    [failed] = [e["payload"] for e in events if e["kind"] == "mailbox.sync_failed"]
    assert failed["consecutive_failures"] == 8
    assert failed["error_class"] == "ThrottledError" and failed["user_id"] == "alice"

    await _sync_until_done(rt, mailbox_id)
    assert (await mailbox_row(rt, mailbox_id))["status"] == "connected"
    assert await _lifecycle_events(rt, mailbox_id) == [
        "mailbox.connected",
        "mailbox.sync_failed",
        "mailbox.recovered",
    ]


async def test_a_refused_refresh_and_a_disconnect_are_announced_once(rt: Runtime) -> None:
    provider = seeded(20)
    registry.override("microsoft", lambda s, h: provider)
    mailbox_id = await connect(rt, provider, expires_in=0)
    provider.faults.refuse_refresh = "invalid_grant: AADSTS70008 the refresh token has expired"
    result = await SyncEngine(rt, "w").run_slice(mailbox_id)
    assert result.outcome is Outcome.AUTH_EXPIRED
    # Parked: no slice runs, so nothing is raised twice.
    assert (await SyncEngine(rt, "w").run_slice(mailbox_id)).outcome is Outcome.BUSY
    async with rt.sessions() as session, session.begin():
        await MailboxRepository(session).mark_disconnected(mailbox_id)
    async with rt.sessions() as session, session.begin():
        await MailboxRepository(session).mark_disconnected(mailbox_id)
    assert await _lifecycle_events(rt, mailbox_id) == [
        "mailbox.auth_expired",
        "mailbox.disconnected",
    ]
    async with rt.sessions() as session:
        events = await OutboxRepository(session).for_mailbox(mailbox_id)
    expired = events[0]["payload"]
    assert expired["action"] == "reconnect" and "AADSTS70008" in expired["last_error"]


async def test_a_change_during_a_pass_spanning_slices_earns_another_pass(rt: Runtime) -> None:
    rt.settings = rt.settings.model_copy(update={"sync_recent_first": 0})
    provider = MemoryProvider("microsoft", page_size=50)
    provider.add_stream("inbox", labels=["INBOX"])
    provider.add_stream("sent", labels=["SENT"])
    for i in range(30):
        provider.put("inbox" if i < 20 else "sent", make_message(i))
    registry.override("microsoft", lambda s, h: provider)
    mailbox_id = await connect(rt, provider)
    await _sync_until_done(rt, mailbox_id)
    assert (await _view(rt)).mailbox.pending_since is None

    # An incremental pass of one page per slice: the first slice reads the inbox only.
    rt.settings = rt.settings.model_copy(update={"sync_slice_pages": 1})
    assert (await SyncEngine(rt, "w").run_slice(mailbox_id)).outcome is Outcome.CONTINUE
    # Mail arrives in the inbox, already read by this pass; its notification is recorded.
    provider.put("inbox", make_message(1000))
    async with rt.sessions() as session, session.begin():
        await MailboxRepository(session).request_sync([mailbox_id])
    noticed = (await _view(rt)).mailbox.pending_since
    assert noticed is not None and not (await _view(rt)).in_sync
    # The next slice completes the pass, which owes another one for that change.
    result = await SyncEngine(rt, "w").run_slice(mailbox_id)
    assert result.outcome is Outcome.DONE_AGAIN
    view = await _view(rt)
    assert view.mailbox.pending_since == noticed and not view.in_sync
    rt.settings = rt.settings.model_copy(update={"sync_slice_pages": 50})
    await _sync_until_done(rt, mailbox_id)
    view = await _view(rt)
    assert view.in_sync and view.mailbox.pending_since is None
    assert "msg-0001000" in await stored_ids(rt, mailbox_id)


async def test_a_fetch_slower_than_the_lease_keeps_it(rt: Runtime) -> None:
    rt.settings = rt.settings.model_copy(update={"lease_seconds": 3, "sync_recent_first": 0})
    provider = seeded(20)
    registry.override("microsoft", lambda s, h: provider)
    mailbox_id = await connect(rt, provider)
    provider.faults.stall_seconds = 5.0  # every page takes longer than the lease
    slow = asyncio.create_task(SyncEngine(rt, "slow").run_slice(mailbox_id))
    await asyncio.sleep(4.0)
    # Past the lease period: still held, nothing to recover, nobody else gets in.
    assert (await jobs.schedule({"rt": rt}))["lapsed"] == 0
    assert (await SyncEngine(rt, "eager").run_slice(mailbox_id)).outcome is Outcome.BUSY
    provider.faults.stall_seconds = 0.0
    assert (await slow).outcome is Outcome.DONE
    assert len(await stored_ids(rt, mailbox_id)) == 20


async def test_a_slice_whose_lease_is_taken_stops_at_once(rt: Runtime) -> None:
    rt.settings = rt.settings.model_copy(update={"lease_seconds": 3, "sync_recent_first": 0})
    provider = seeded(20)
    registry.override("microsoft", lambda s, h: provider)
    mailbox_id = await connect(rt, provider)
    provider.faults.stall_seconds = 60.0
    slice_task = asyncio.create_task(SyncEngine(rt, "w").run_slice(mailbox_id))
    await asyncio.sleep(0.5)
    async with rt.sessions() as session, session.begin():
        await MailboxRepository(session).mark_disconnected(mailbox_id)
    # The heartbeat finds the lease gone and stops the slice long before its fetch ends.
    result = await asyncio.wait_for(slice_task, timeout=10)
    assert result.outcome is Outcome.LEASE_LOST
    assert await stored_ids(rt, mailbox_id) == []
