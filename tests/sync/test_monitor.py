"""The completion monitor against the scriptable provider: spread-out checks, differences
confirmed after a pass and repaired in the one stream or label they are in, changes in
flight never taken for losses, overdue syncs re-enqueued, push-less mailboxes polled."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest
from sqlalchemy import text

from app.db.repositories.monitor import MonitorRepository
from app.providers import registry
from app.providers.base import Subscription, SyncContext
from app.providers.memory import MemoryProvider, make_message
from app.sync import jobs
from app.sync import mailboxes as service
from app.sync.engine import Outcome, SyncEngine
from app.sync.monitor import MAX_SUSPICIONS, CompletionMonitor
from app.sync.monitor import Outcome as Check
from app.sync.queue import sync_job_id
from app.sync.runtime import Runtime
from app.sync.subscriptions import SubscriptionService
from tests.conftest import run_worker
from tests.sync.helpers import (
    assert_periodic_slot,
    connect,
    mailbox_row,
    seeded,
    stored_state,
    truth_state,
)


async def _sync_until_done(rt: Runtime, mailbox_id: uuid.UUID) -> None:
    for _ in range(200):
        result = await SyncEngine(rt, "w").run_slice(mailbox_id)
        if result.outcome in (Outcome.DONE, Outcome.DONE_AGAIN):
            return
        assert result.outcome in (Outcome.CONTINUE,), result
    raise AssertionError("no end in sight")


async def _sql(rt: Runtime, sql: str, **params: Any) -> Any:
    async with rt.sessions() as session, session.begin():
        return await session.execute(text(sql), params)


async def _due(rt: Runtime, mailbox_id: uuid.UUID) -> None:
    """Time passing: the mailbox's next check has come."""
    await _sql(
        rt,
        "UPDATE mailboxes SET next_verify_at = now() - interval '1 second' WHERE id = :id",
        id=mailbox_id,
    )


async def _check(rt: Runtime, mailbox_id: uuid.UUID) -> Check:
    await _due(rt, mailbox_id)
    return await CompletionMonitor(rt, "monitor").verify(mailbox_id)


async def _repairs(rt: Runtime, mailbox_id: uuid.UUID) -> list[dict[str, Any]]:
    async with rt.sessions() as session:
        return await MonitorRepository(session).repairs_for(mailbox_id)


async def _generations(rt: Runtime, mailbox_id: uuid.UUID) -> dict[str, int]:
    rows = await _sql(
        rt,
        "SELECT stream_key, generation FROM sync_cursors WHERE mailbox_id = :id",
        id=mailbox_id,
    )
    return {r[0]: int(r[1]) for r in rows.all()}


async def _connected(rt: Runtime, provider: MemoryProvider, **kwargs: Any) -> uuid.UUID:
    registry.override(provider.name, lambda s, h: provider)
    mailbox_id = await connect(rt, provider, **kwargs)
    await _sync_until_done(rt, mailbox_id)
    return mailbox_id


@pytest.fixture
def quick(rt: Runtime) -> Runtime:
    rt.settings = rt.settings.model_copy(update={"sync_recent_first": 0})
    return rt


async def test_first_checks_are_spread_over_one_interval(quick: Runtime) -> None:
    rt = quick
    provider = seeded(10, streams=1)
    ids = [
        await _connected(rt, provider, user=f"user{n}", email=f"user{n}@example.com")
        for n in range(12)
    ]
    waiting = await connect(rt, provider, user="late", email="late@example.com")  # no pass yet
    assert (await CompletionMonitor(rt, "m").tick())["scheduled"] == 12
    rows = await _sql(
        rt,
        "SELECT id, next_verify_at, connected_at FROM mailboxes WHERE id = ANY(:ids)",
        ids=[*ids, waiting],
    )
    found = {r[0]: (r[1], r[2]) for r in rows.all()}
    assert found[waiting] == (None, None)
    interval = timedelta(seconds=rt.settings.verify_interval_seconds)
    moments = []
    for mailbox_id in ids:
        next_verify_at, connected_at = found[mailbox_id]
        assert connected_at <= next_verify_at <= connected_at + interval
        moments.append(next_verify_at)
    # Mailboxes connected together are not checked together.
    assert len(set(moments)) == len(moments)
    assert max(moments) - min(moments) > interval / 4
    # A second tick leaves the schedule alone, and nothing is due yet.
    assert await CompletionMonitor(rt, "m").tick() == {
        "scheduled": 0,
        "due": 0,
        "overdue": 0,
        "push_lapsed": 0,
    }


async def test_a_matching_mailbox_is_verified_and_checked_again_an_interval_later(
    quick: Runtime,
) -> None:
    rt = quick
    mailbox_id = await _connected(rt, seeded(60))
    assert await CompletionMonitor(rt, "m").verify(mailbox_id) is Check.NOT_DUE
    assert await _check(rt, mailbox_id) is Check.VERIFIED
    row = await mailbox_row(rt, mailbox_id)
    assert row["last_verified_at"] is not None
    interval = rt.settings.verify_interval_seconds
    left = (row["next_verify_at"] - datetime.now(UTC)).total_seconds()
    assert interval * 0.85 < left <= interval * 1.1
    async with rt.sessions() as session:
        [view] = await service.status_of(session, "alice")
    assert view.mailbox.last_verified_at == row["last_verified_at"] and view.in_sync


async def test_lost_and_foreign_rows_are_repaired_in_their_streams_only(quick: Runtime) -> None:
    rt = quick
    provider = seeded(400, page_size=50, streams=4)
    mailbox_id = await _connected(rt, provider)
    truth = truth_state(provider)
    before = await _generations(rt, mailbox_id)
    # Behind mailsync's back: 5% of the inbox's rows vanish, and the archive gains a row
    # the provider never had.
    await _sql(
        rt,
        "DELETE FROM messages WHERE mailbox_id = :id AND provider_message_id IN ("
        " SELECT provider_message_id FROM messages WHERE mailbox_id = :id"
        " AND stream_key = 'inbox' ORDER BY provider_message_id LIMIT 20)",
        id=mailbox_id,
    )
    await _sql(
        rt,
        "INSERT INTO messages (mailbox_id, provider_message_id, stream_key, generation, "
        "to_addresses, cc_addresses, bcc_addresses, labels, is_read, has_attachments) "
        "VALUES (:id, 'ghost-1', 'archive', 1, '{}', '{}', '{}', '{ARCHIVE,UNREAD}', false, false)",
        id=mailbox_id,
    )
    assert len(await stored_state(rt, mailbox_id)) == 400 - 20 + 1

    # First sight: only suspected (a change may have been in flight); a pass is asked for.
    assert await _check(rt, mailbox_id) is Check.SUSPECT
    assert await _repairs(rt, mailbox_id) == []
    assert await _check(rt, mailbox_id) is Check.AWAITING_SYNC
    await _sync_until_done(rt, mailbox_id)
    # The same difference after the pass: repaired, in those two streams only.
    assert await _check(rt, mailbox_id) is Check.REPAIRING
    after = await _generations(rt, mailbox_id)
    assert {k for k in after if after[k] != before[k]} == {"inbox", "archive"}
    async with rt.sessions() as session:
        [view] = await service.status_of(session, "alice")
    assert view.mailbox.phase == "resync" and not view.in_sync and view.percent < 100
    # While the streams are rebuilt the mailbox is not settled: no judgement.
    assert await _check(rt, mailbox_id) is Check.BUSY
    await _sync_until_done(rt, mailbox_id)
    assert await stored_state(rt, mailbox_id) == truth
    assert await _check(rt, mailbox_id) is Check.VERIFIED

    repairs = {r["scope_key"]: r for r in await _repairs(rt, mailbox_id)}
    assert set(repairs) == {"inbox", "archive"}
    inbox, archive = repairs["inbox"], repairs["archive"]
    assert (inbox["method"], inbox["state"], inbox["scope_kind"]) == ("restart", "done", "stream")
    assert (inbox["provider_total"], inbox["stored_total_before"]) == (100, 80)
    assert (inbox["provider_total_after"], inbox["stored_total_after"]) == (100, 100)
    assert (archive["stored_total_before"], archive["stored_total_after"]) == (101, 100)
    assert archive["stored_unread_before"] == archive["provider_unread"] + 1
    assert inbox["finished_at"] >= inbox["detected_at"]
    row = await mailbox_row(rt, mailbox_id)
    assert row["last_verified_at"] is not None and row["verify_suspect"] is None
    assert row["messages_synced"] == 400


async def test_a_label_repaired_by_listing_fetches_only_what_is_missing(quick: Runtime) -> None:
    rt = quick
    provider = MemoryProvider("google", page_size=100, repair="list", count_labels=True)
    provider.add_stream("mailbox")
    for i in range(200):
        labels = ["INBOX"] if i % 2 else ["Projects"]
        provider.put("mailbox", make_message(i, stream_labels=labels, read=i % 3 != 0))
    mailbox_id = await _connected(rt, provider)
    truth = truth_state(provider)
    # Label membership drifts (two rows lose Projects, one gains it, one is marked read)
    # and one row is lost outright.
    await _sql(
        rt,
        "UPDATE messages SET labels = array_remove(labels, 'Projects') "
        "WHERE mailbox_id = :id AND provider_message_id IN ('msg-0000000', 'msg-0000002')",
        id=mailbox_id,
    )
    await _sql(
        rt,
        "UPDATE messages SET labels = labels || '{Projects}' "
        "WHERE mailbox_id = :id AND provider_message_id = 'msg-0000001'",
        id=mailbox_id,
    )
    await _sql(
        rt,
        "UPDATE messages SET labels = array_remove(labels, 'UNREAD'), is_read = true "
        "WHERE mailbox_id = :id AND provider_message_id = 'msg-0000006'",
        id=mailbox_id,
    )
    await _sql(
        rt,
        "DELETE FROM messages WHERE mailbox_id = :id AND provider_message_id = 'msg-0000004'",
        id=mailbox_id,
    )
    assert await _check(rt, mailbox_id) is Check.SUSPECT
    await _sync_until_done(rt, mailbox_id)
    pages_before = provider.pages_served
    async with rt.sessions() as session:
        outbox_before = (
            await session.execute(text("SELECT coalesce(max(id), 0) FROM outbox_events"))
        ).scalar_one()
    assert await _check(rt, mailbox_id) is Check.REPAIRING
    # Listing, and one fetch: the message that was missing. No page of the stream again.
    assert provider.fetched_ids == ["msg-0000004"]
    assert provider.pages_served == pages_before
    assert "stream:mailbox" in provider.listed_scopes
    assert "label:Projects" in provider.listed_scopes
    assert await stored_state(rt, mailbox_id) == truth
    assert (await _generations(rt, mailbox_id)) == {"mailbox": 1}
    assert await _check(rt, mailbox_id) is Check.VERIFIED
    repairs = {(r["scope_kind"], r["scope_key"]): r for r in await _repairs(rt, mailbox_id)}
    assert repairs[("stream", "mailbox")]["fetched"] == 1
    assert repairs[("stream", "mailbox")]["stored_total_before"] == 199
    assert repairs[("stream", "mailbox")]["stored_total_after"] == 200
    projects = repairs[("label", "Projects")]
    assert (projects["method"], projects["state"]) == ("list", "done")
    # Two regained Projects, one lost it, and one is unread again (its read state drifted).
    assert projects["relabelled"] == 4
    assert projects["provider_total_after"] == projects["stored_total_after"] == 100
    assert all(r["state"] == "done" for r in repairs.values())
    # The outbox tells downstream what the repair changed, as pages do: the message fetched
    # back, the relabelled ones.
    async with rt.sessions() as session:
        rows = (
            await session.execute(
                text(
                    "SELECT payload FROM outbox_events WHERE mailbox_id = :id "
                    "AND kind = 'messages.changed' AND id > :since ORDER BY id"
                ),
                {"id": mailbox_id, "since": outbox_before},
            )
        ).all()
    payloads = [orjson.loads(p) for (p,) in rows]
    received = {i for p in payloads for i in p.get("received", {}).get("provider_message_id", [])}
    updated = {i for p in payloads for i in p.get("updated", {}).get("provider_message_id", [])}
    assert received == {"msg-0000004"}
    assert updated == {"msg-0000000", "msg-0000001", "msg-0000002", "msg-0000006"}


async def test_changes_arriving_while_it_checks_never_trigger_a_repair(quick: Runtime) -> None:
    rt = quick
    provider = seeded(80, streams=2)
    mailbox_id = await _connected(rt, provider)
    monitor = CompletionMonitor(rt, "monitor")

    # 1. A slice commits while the monitor counts: no judgement at all.
    async def a_slice_meanwhile() -> None:
        provider.put("inbox", make_message(5000))
        await _sync_until_done(rt, mailbox_id)

    provider.faults.after_counts = a_slice_meanwhile
    assert await _check(rt, mailbox_id) is Check.MOVING
    provider.faults.after_counts = None

    # 2. Mail arrives that no pass has read yet: suspected, then gone after the pass.
    provider.put("inbox", make_message(5001))
    assert await _check(rt, mailbox_id) is Check.SUSPECT
    await _sync_until_done(rt, mailbox_id)
    assert await _check(rt, mailbox_id) is Check.VERIFIED

    # 3. Mail keeps arriving before every check: the same gap each time, but the
    # provider's count moves, so it is never confirmed; after a few rounds it is left for
    # the next interval.
    outcomes = []
    for n in range(MAX_SUSPICIONS + 1):
        provider.put("sent", make_message(6000 + n))
        outcomes.append(await _check(rt, mailbox_id))
        await _sync_until_done(rt, mailbox_id)
    assert outcomes == [Check.SUSPECT] * MAX_SUSPICIONS + [Check.UNSETTLED]
    row = await mailbox_row(rt, mailbox_id)
    assert row["verify_suspect"] is None
    assert (row["next_verify_at"] - datetime.now(UTC)).total_seconds() > 0.8 * 3600
    assert await _repairs(rt, mailbox_id) == []
    assert await _generations(rt, mailbox_id) == {"inbox": 1, "sent": 1}
    assert await stored_state(rt, mailbox_id) == truth_state(provider)
    assert await _check(rt, mailbox_id) is Check.VERIFIED
    del monitor


async def test_busy_mailboxes_are_looked_at_later(quick: Runtime) -> None:
    rt = quick
    provider = seeded(40)
    mailbox_id = await _connected(rt, provider)
    # A notification not yet applied.
    await _sql(rt, "UPDATE mailboxes SET pending_since = now() WHERE id = :id", id=mailbox_id)
    assert await _check(rt, mailbox_id) is Check.BUSY
    row = await mailbox_row(rt, mailbox_id)
    assert 0 < (row["next_verify_at"] - datetime.now(UTC)).total_seconds() < 60
    assert provider.count_calls == 0
    # A failing mailbox has its own status to show: not checked.
    await _sql(
        rt,
        "UPDATE mailboxes SET pending_since = NULL, status = 'error' WHERE id = :id",
        id=mailbox_id,
    )
    assert await _check(rt, mailbox_id) is Check.SKIPPED


async def test_a_mailbox_whose_job_vanished_and_lease_lapsed_is_reenqueued(
    quick: Runtime,
) -> None:
    rt = quick
    rt.settings = rt.settings.model_copy(update={"lease_seconds": 3, "sync_slice_pages": 2})
    provider = seeded(200, page_size=20, streams=1)
    registry.override("microsoft", lambda s, h: provider)
    mailbox_id = await connect(rt, provider)
    healthy = await _connected(rt, provider, user="bob", email="bob@example.com")
    assert (await SyncEngine(rt, "w").run_slice(mailbox_id)).outcome is Outcome.CONTINUE
    # The worker holding the next slice died: its lease lapsed a while ago, nothing moved
    # since, and the queued jobs are gone from the queue while their ids are still held.
    token = (await mailbox_row(rt, mailbox_id))["fencing_token"] + 1
    await _sql(
        rt,
        "UPDATE mailboxes SET lease_owner = 'dead-worker', fencing_token = :token, "
        "lease_expires_at = now() - interval '30 seconds', "
        "updated_at = now() - interval '30 seconds', next_sync_at = now() - interval '30 seconds' "
        "WHERE id = :id",
        id=mailbox_id,
        token=token,
    )
    for suffix in (None, f"recover{token}"):
        await rt.redis.enqueue_job(
            "sync_mailbox", str(mailbox_id), _job_id=sync_job_id(mailbox_id, suffix)
        )
    await rt.redis.delete("arq:queue")
    assert (await jobs.schedule({"rt": rt}))["enqueued"] == 0  # the held ids swallow it

    ticked = await jobs.monitor({"rt": rt, "worker_id": "monitor"}, sweep=True)
    assert ticked["overdue"] == 1
    queued = [j.decode() for j in await rt.redis.zrange("arq:queue", 0, -1)]
    assert len(queued) == 1 and queued[0].startswith(f"sync:{mailbox_id}:overdue")
    await run_worker(rt)
    row = await mailbox_row(rt, mailbox_id)
    assert row["status"] == "connected" and row["lease_owner"] is None
    assert len(await stored_state(rt, mailbox_id)) == 200
    # Nothing else was overdue; the same window does not enqueue twice.
    assert (await jobs.monitor({"rt": rt}, sweep=True))["overdue"] == 0
    assert (await mailbox_row(rt, healthy))["status"] == "connected"


async def test_a_long_silent_mailbox_is_reenqueued(quick: Runtime) -> None:
    rt = quick
    provider = seeded(20, streams=1)
    mailbox_id = await _connected(rt, provider)
    await SubscriptionService(rt).ensure(mailbox_id)
    assert (await mailbox_row(rt, mailbox_id))["push_state"] == "active"
    # Its next pass was scheduled far ahead (push is working) but no pass completed for
    # more than twice the interval: the monitor does not wait for the schedule.
    await _sql(
        rt,
        "UPDATE mailboxes SET next_sync_at = now() + interval '1 day', "
        "last_synced_at = now() - interval '2000 seconds', "
        "updated_at = now() - interval '2000 seconds' WHERE id = :id",
        id=mailbox_id,
    )
    assert (await jobs.monitor({"rt": rt}, sweep=True))["overdue"] == 1
    await _sql(
        rt,
        "UPDATE mailboxes SET last_synced_at = now() - interval '1000 seconds' WHERE id = :id",
        id=mailbox_id,
    )
    assert (await jobs.monitor({"rt": rt}, sweep=True))["overdue"] == 0


class _Push:
    """Subscribe outcomes for the scriptable provider: a channel, none, or a failure."""

    def __init__(self, provider: MemoryProvider) -> None:
        self.mode = "active"
        self._subscribe = provider.subscribe
        provider.subscribe = self.subscribe  # type: ignore[method-assign]

    async def subscribe(self, ctx: SyncContext) -> Subscription | None:
        if self.mode == "none":
            return None
        if self.mode == "failing":
            from app.providers.base import TransientError

            raise TransientError("subscription validation timed out")
        return await self._subscribe(ctx)


async def _seconds_to_next_pass(rt: Runtime, mailbox_id: uuid.UUID) -> float:
    row = await mailbox_row(rt, mailbox_id)
    return float((row["next_sync_at"] - datetime.now(UTC)).total_seconds())


async def _assert_next_pass_slot(rt: Runtime, mailbox_id: uuid.UUID, interval: float) -> None:
    assert_periodic_slot((await mailbox_row(rt, mailbox_id))["next_sync_at"], mailbox_id, interval)


async def test_without_working_push_a_mailbox_is_polled(quick: Runtime) -> None:
    rt = quick
    provider = seeded(20, streams=1)
    push = _Push(provider)
    mailbox_id = await _connected(rt, provider)
    subscriptions = SubscriptionService(rt)

    await subscriptions.ensure(mailbox_id)
    await _sync_until_done(rt, mailbox_id)
    assert (await mailbox_row(rt, mailbox_id))["push_state"] == "active"
    await _assert_next_pass_slot(rt, mailbox_id, rt.settings.sync_interval_seconds)

    # The channel lapses without renewal: the monitor notices, and polling starts now.
    await _sql(
        rt,
        "UPDATE subscriptions SET expires_at = now() - interval '1 minute' WHERE mailbox_id = :id",
        id=mailbox_id,
    )
    assert (await jobs.monitor({"rt": rt}, sweep=True))["push_lapsed"] == 1
    assert (await mailbox_row(rt, mailbox_id))["push_state"] == "failing"
    assert await _seconds_to_next_pass(rt, mailbox_id) <= 60
    await _sync_until_done(rt, mailbox_id)
    poll = rt.settings.sync_poll_without_push_seconds
    await _assert_next_pass_slot(rt, mailbox_id, poll)

    # Renewal fails: still failing. Push not configured: none, still polled.
    await _sql(rt, "DELETE FROM subscriptions WHERE mailbox_id = :id", id=mailbox_id)
    push.mode = "failing"
    with pytest.raises(Exception, match="validation"):
        await subscriptions.ensure(mailbox_id)
    assert (await mailbox_row(rt, mailbox_id))["push_state"] == "failing"
    push.mode = "none"
    await subscriptions.ensure(mailbox_id)
    assert (await mailbox_row(rt, mailbox_id))["push_state"] == "none"
    await _sync_until_done(rt, mailbox_id)
    await _assert_next_pass_slot(rt, mailbox_id, poll)
    async with rt.sessions() as session:
        [view] = await service.status_of(session, "alice")
    assert view.push == "none"

    # A channel again: back to the slow safety net after the next pass.
    push.mode = "active"
    await subscriptions.ensure(mailbox_id)
    await _sync_until_done(rt, mailbox_id)
    assert (await mailbox_row(rt, mailbox_id))["push_state"] == "active"
    await _assert_next_pass_slot(rt, mailbox_id, rt.settings.sync_interval_seconds)


async def test_a_check_waits_while_a_sync_holds_the_lease(quick: Runtime) -> None:
    rt = quick
    provider = seeded(60, streams=1)
    mailbox_id = await _connected(rt, provider)
    await _sql(
        rt,
        "DELETE FROM messages WHERE mailbox_id = :id AND provider_message_id = 'msg-0000003'",
        id=mailbox_id,
    )
    assert await _check(rt, mailbox_id) is Check.SUSPECT
    await _sync_until_done(rt, mailbox_id)
    gate = asyncio.Event()

    async def hold(stream: Any, cursor: Any) -> None:
        await gate.wait()

    provider.faults.before_page = hold
    # A pass starts and holds the lease: the confirmed repair does not barge in.
    held = asyncio.create_task(SyncEngine(rt, "w").run_slice(mailbox_id))
    await asyncio.sleep(0.3)
    assert await _check(rt, mailbox_id) is Check.BUSY
    gate.set()
    provider.faults.before_page = None
    await held
    await _sync_until_done(rt, mailbox_id)
    assert await _check(rt, mailbox_id) is Check.REPAIRING
    await _sync_until_done(rt, mailbox_id)
    assert await stored_state(rt, mailbox_id) == truth_state(provider)


async def test_what_an_exact_repair_leaves_behind_is_not_repaired_again(quick: Runtime) -> None:
    rt = quick
    provider = seeded(60, streams=2)
    # The provider counts two items in the inbox that no enumeration ever returns.
    provider.faults.uncounted["inbox"] = 2
    mailbox_id = await _connected(rt, provider)
    assert await _check(rt, mailbox_id) is Check.SUSPECT
    await _sync_until_done(rt, mailbox_id)
    assert await _check(rt, mailbox_id) is Check.REPAIRING
    await _sync_until_done(rt, mailbox_id)
    # The rebuild made the inbox exactly what the provider enumerates; the 2 remain.
    assert await _check(rt, mailbox_id) is Check.VERIFIED
    [repair] = await _repairs(rt, mailbox_id)
    assert (repair["provider_total_after"], repair["stored_total_after"]) == (32, 30)
    for _ in range(2):
        assert await _check(rt, mailbox_id) is Check.VERIFIED
    assert len(await _repairs(rt, mailbox_id)) == 1
    assert await _generations(rt, mailbox_id) == {"inbox": 2, "sent": 1}
    # A real loss on top of it is still found.
    await _sql(
        rt,
        "DELETE FROM messages WHERE mailbox_id = :id AND provider_message_id = 'msg-0000000'",
        id=mailbox_id,
    )
    assert await _check(rt, mailbox_id) is Check.SUSPECT
