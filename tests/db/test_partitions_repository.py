"""Backfill windows as leases: SKIP LOCKED claims, fencing, lapsed leases, splits."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import text

from app.db.repositories.cursors import CursorRepository
from app.db.repositories.partitions import (
    HeldWindow,
    PartitionLease,
    PartitionLost,
    PartitionRepository,
    PlannedWindow,
    WindowEnd,
)
from app.providers.base import StreamInfo
from app.sync.partitions import steal_point, windows_for
from app.sync.runtime import Runtime

LIVE = {"delta_link": "https://graph.example/delta?$deltatoken=x"}


async def _planned(rt: Runtime, windows: int = 3) -> uuid.UUID:
    mailbox_id = uuid.uuid4()
    async with rt.sessions() as session, session.begin():
        await session.execute(
            text(
                "INSERT INTO mailboxes (id, user_id, provider, account_key, auth_mode, status) "
                "VALUES (:id, 'u', 'microsoft', :key, 'delegated', 'syncing')"
            ),
            {"id": mailbox_id, "key": mailbox_id.hex},
        )
        await CursorRepository(session).sync_streams(
            mailbox_id, [StreamInfo("inbox", "Inbox", 50_000)]
        )
        cuts = [datetime(2020 + i, 1, 1, tzinfo=UTC) for i in range(windows - 1)]
        bounds: list[datetime | None] = [None, *cuts, None]
        await PartitionRepository(session).plan(
            mailbox_id,
            "inbox",
            1,
            LIVE,
            [PlannedWindow(bounds[i], bounds[i + 1]) for i in range(windows)],
        )
    return mailbox_id


async def test_concurrent_claims_take_different_windows_until_none_is_free(rt: Runtime) -> None:
    mailbox_id = await _planned(rt, windows=3)

    async def claim(owner: str) -> int | None:
        async with rt.sessions() as session, session.begin():
            lease = await PartitionRepository(session).claim(mailbox_id, owner, 30)
            # Held open a moment: the others must skip this row, not wait for it.
            await asyncio.sleep(0.2)
            return None if lease is None else lease.partition_id

    taken = await asyncio.gather(*(claim(f"w{i}") for i in range(5)))
    ids = [t for t in taken if t is not None]
    assert len(ids) == 3 and len(set(ids)) == 3
    async with rt.sessions() as session, session.begin():
        assert await PartitionRepository(session).claim(mailbox_id, "late", 30) is None


async def test_a_lapsed_window_is_taken_over_and_the_old_owner_is_fenced_out(
    rt: Runtime,
) -> None:
    mailbox_id = await _planned(rt, windows=1)
    async with rt.sessions() as session, session.begin():
        zombie = await PartitionRepository(session).claim(mailbox_id, "zombie", 30)
    assert zombie is not None
    async with rt.sessions() as session, session.begin():
        await PartitionRepository(session).checkpoint(
            zombie, 30, checkpoint={"from": "2021-01-01T00:00:00+00:00"}, listed=10, done=False
        )
        # Its lease lapses (the worker died).
        await session.execute(
            text("UPDATE backfill_partitions SET lease_expires_at = now() - interval '1 s'")
        )
    async with rt.sessions() as session, session.begin():
        heir = await PartitionRepository(session).claim(mailbox_id, "heir", 30)
    assert heir is not None
    assert heir.fencing_token == zombie.fencing_token + 1
    # The heir resumes from the zombie's last committed page.
    assert heir.checkpoint == {"from": "2021-01-01T00:00:00+00:00"} and heir.listed == 10
    with pytest.raises(PartitionLost):
        async with rt.sessions() as session, session.begin():
            await PartitionRepository(session).checkpoint(
                zombie, 30, checkpoint=None, listed=5, done=True
            )
    async with rt.sessions() as session, session.begin():
        assert not await PartitionRepository(session).heartbeat(zombie, 30)
        assert await PartitionRepository(session).heartbeat(heir, 30)


async def test_pausing_the_mailbox_stops_a_window_mid_way(rt: Runtime) -> None:
    mailbox_id = await _planned(rt, windows=1)
    async with rt.sessions() as session, session.begin():
        lease = await PartitionRepository(session).claim(mailbox_id, "w", 30)
    assert lease is not None
    async with rt.sessions() as session, session.begin():
        await session.execute(
            text("UPDATE mailboxes SET paused = true WHERE id = :id"), {"id": mailbox_id}
        )
    with pytest.raises(PartitionLost):
        async with rt.sessions() as session, session.begin():
            await PartitionRepository(session).checkpoint(
                lease, 30, checkpoint=None, listed=1, done=False
            )
    async with rt.sessions() as session, session.begin():
        await session.execute(
            text("UPDATE backfill_partitions SET lease_owner = NULL, lease_expires_at = NULL")
        )
        assert await PartitionRepository(session).claim(mailbox_id, "w2", 30) is None


async def test_a_split_window_hands_its_second_half_to_a_new_window(rt: Runtime) -> None:
    mailbox_id = await _planned(rt, windows=1)
    async with rt.sessions() as session, session.begin():
        lease = await PartitionRepository(session).claim(mailbox_id, "w", 30)
    assert lease is not None
    at = datetime(2022, 6, 1, tzinfo=UTC)
    async with rt.sessions() as session, session.begin():
        new_id = await PartitionRepository(session).split(lease, at)
    async with rt.sessions() as session:
        rows = {
            r[0]: (r[1], r[2])
            for r in await session.execute(
                text("SELECT id, window_start, window_end FROM backfill_partitions")
            )
        }
    assert rows == {lease.partition_id: (None, at), new_id: (at, None)}
    async with rt.sessions() as session, session.begin():
        other = await PartitionRepository(session).claim(mailbox_id, "w2", 30)
    assert other is not None and other.partition_id == new_id


async def test_the_finished_stream_is_only_finished_once_every_window_is_done(
    rt: Runtime,
) -> None:
    mailbox_id = await _planned(rt, windows=2)
    leases = []
    for owner in ("a", "b"):
        async with rt.sessions() as session, session.begin():
            leases.append(await PartitionRepository(session).claim(mailbox_id, owner, 30))
    async with rt.sessions() as session, session.begin():
        assert leases[0] is not None
        await PartitionRepository(session).checkpoint(
            leases[0], 30, checkpoint=None, listed=1, done=True
        )
        assert await PartitionRepository(session).lock_finished_stream(mailbox_id, "inbox") is None
    async with rt.sessions() as session, session.begin():
        assert leases[1] is not None
        await PartitionRepository(session).checkpoint(
            leases[1], 30, checkpoint=None, listed=1, done=True
        )
        finished = await PartitionRepository(session).lock_finished_stream(mailbox_id, "inbox")
    assert finished is not None and finished.live_cursor == LIVE


def test_windows_cover_the_range_with_open_ends() -> None:
    oldest = datetime(2020, 1, 1, tzinfo=UTC)
    newest = datetime(2024, 1, 1, tzinfo=UTC)
    windows = windows_for(100_000, 5_000, oldest, newest)
    assert len(windows) == 20
    assert windows[0].start is None and windows[-1].end is None
    for before, after in itertools.pairwise(windows):
        assert before.end == after.start
    one = windows_for(10, 5_000, oldest, newest)
    assert len(one) == 1 and one[0].start is None and one[0].end is None


async def _held_after_a_page(rt: Runtime, mailbox_id: uuid.UUID, owner: str) -> PartitionLease:
    """A window claimed by `owner`, which has written one page of it (2020-01-01 to
    2021-01-01: a year of received time for 1000 messages)."""
    async with rt.sessions() as session, session.begin():
        lease = await PartitionRepository(session).claim(mailbox_id, owner, 30)
    assert lease is not None
    async with rt.sessions() as session, session.begin():
        await PartitionRepository(session).checkpoint(
            lease,
            30,
            checkpoint={"from": "2021-01-01T00:00:00+00:00"},
            listed=1000,
            done=False,
            listed_from=datetime(2020, 1, 1, tzinfo=UTC),
            listed_before=datetime(2021, 1, 1, tzinfo=UTC),
        )
    return lease


async def _shared(rt: Runtime, mailbox_id: uuid.UUID) -> list[HeldWindow]:
    async with rt.sessions() as session:
        return await PartitionRepository(session).shared_candidates(mailbox_id)


async def test_an_idle_worker_takes_the_second_half_of_what_a_held_window_has_left(
    rt: Runtime,
) -> None:
    mailbox_id = await _planned(rt, windows=1)
    holder = await _held_after_a_page(rt, mailbox_id, "holder")
    [held] = await _shared(rt, mailbox_id)
    assert held.partition_id == holder.partition_id and held.window_end is None
    assert held.listed == 1000 and held.provider == "microsoft"

    at = datetime(2023, 1, 1, tzinfo=UTC)
    async with rt.sessions() as session, session.begin():
        stolen = await PartitionRepository(session).steal(held, at, "idle", 30)
    assert stolen is not None and stolen.owner == "idle"
    assert (stolen.window_start, stolen.window_end) == (at, None)
    assert stolen.checkpoint is None and stolen.listed == 0
    # Leased at once: nobody else claims it, it counts as held.
    async with rt.sessions() as session, session.begin():
        assert await PartitionRepository(session).claim(mailbox_id, "third", 30) is None

    # The holder learns its new end with its next page, and writes on.
    async with rt.sessions() as session, session.begin():
        end = await PartitionRepository(session).checkpoint(
            holder, 30, checkpoint={"from": "2022-01-01T00:00:00+00:00"}, listed=1000, done=False
        )
    assert end == WindowEnd(at)
    # A second steal of the same window, as it was read before the first: nothing.
    async with rt.sessions() as session, session.begin():
        assert await PartitionRepository(session).steal(held, at, "late", 30) is None
    # Nor may the holder's own split hand out what is no longer its: it ends at `at` now.
    async with rt.sessions() as session, session.begin():
        assert (
            await PartitionRepository(session).split(holder, datetime(2024, 1, 1, tzinfo=UTC))
            is None
        )
        inside = await PartitionRepository(session).split(holder, datetime(2022, 6, 1, tzinfo=UTC))
    assert inside is not None
    async with rt.sessions() as session:
        spans = sorted(
            (r[0] or datetime.min.replace(tzinfo=UTC), r[1])
            for r in await session.execute(
                text("SELECT window_start, window_end FROM backfill_partitions")
            )
        )
    # Still one cover of all time, without overlaps.
    assert [s[1] for s in spans[:-1]] == [s[0] for s in spans[1:]] and spans[-1][1] is None


async def test_a_window_listed_past_the_steal_point_is_not_stolen(rt: Runtime) -> None:
    mailbox_id = await _planned(rt, windows=1)
    holder = await _held_after_a_page(rt, mailbox_id, "holder")
    [held] = await _shared(rt, mailbox_id)
    # Meanwhile the holder wrote past the point an idle worker chose.
    async with rt.sessions() as session, session.begin():
        await PartitionRepository(session).checkpoint(
            holder,
            30,
            checkpoint={"from": "2024-01-01T00:00:00+00:00"},
            listed=1000,
            done=False,
            listed_before=datetime(2024, 1, 1, tzinfo=UTC),
        )
    async with rt.sessions() as session, session.begin():
        assert (
            await PartitionRepository(session).steal(
                held, datetime(2023, 1, 1, tzinfo=UTC), "idle", 30
            )
            is None
        )
    # A window nobody holds is claimed, never stolen; one without a position is neither.
    async with rt.sessions() as session, session.begin():
        await PartitionRepository(session).release(holder)
    assert await _shared(rt, mailbox_id) == []


def _held(key: str, listed: int, start: int, before: int, end: int | None) -> HeldWindow:
    year = lambda y: datetime(y, 1, 1, tzinfo=UTC)  # noqa: E731
    return HeldWindow(
        partition_id=start,
        provider="microsoft",
        stream_key=key,
        window_end=None if end is None else year(end),
        listed_from=year(start),
        listed_before=year(before),
        listed=listed,
        now=year(2030),
    )


def test_the_steal_point_halves_the_window_with_the_most_left() -> None:
    # 1000 messages a year in this stream: 2000 left in one, 6000 in the other (open-ended).
    small = _held("inbox", 1000, 2000, 2001, 2003)
    large = _held("inbox", 1000, 2010, 2011, None)
    chosen = steal_point([small, large], min_messages=3000)
    assert chosen is not None
    victim, at = chosen
    assert victim is large
    assert datetime(2020, 6, 1, tzinfo=UTC) < at < datetime(2021, 6, 1, tzinfo=UTC)
    # Not worth a request of its own: none has 3 pages left.
    assert steal_point([small], min_messages=3000) is None
    # Seconds left, however dense: never split into slivers.
    dense = _held("inbox", 10**9, 2000, 2001, 2001)
    sliver = dataclasses.replace(dense, window_end=dense.listed_before + timedelta(seconds=6))
    assert steal_point([sliver], min_messages=1) is None
    assert steal_point([], min_messages=1) is None
