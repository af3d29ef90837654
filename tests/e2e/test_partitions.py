"""Partitioned backfills through the whole service: a large stream's first enumeration as
leased windows, with the mailbox changing while the windows run, and Graph's limits kept."""

from __future__ import annotations

import asyncio
import os
import signal
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import text

from app.sync.engine import Outcome, SyncEngine
from app.sync.partitions import WindowRunner
from app.sync.runtime import Runtime
from tests.conftest import LiveApi, bearer, run_worker
from tests.e2e import test_gmail as gmail
from tests.e2e import test_outlook as outlook
from tests.e2e.support import Sim, connect_via_api, status_of
from tests.e2e.test_processes import Workers, _pid_of

PARTITIONING = {
    "backfill_partition_threshold": 300,
    "backfill_partition_size": 250,
    # One page per window job: the windows interleave with the changes below.
    "sync_slice_pages": 1,
}


@pytest.fixture
async def part_rt(live_api: LiveApi) -> AsyncIterator[Runtime]:
    runtime = await Runtime.create(live_api.settings.model_copy(update=PARTITIONING))
    try:
        yield runtime
    finally:
        await runtime.close()


async def windows_of(rt: Runtime, mailbox_id: uuid.UUID) -> list[dict[str, Any]]:
    async with rt.sessions() as session:
        rows = await session.execute(
            text("SELECT * FROM backfill_partitions WHERE mailbox_id = :id ORDER BY id"),
            {"id": mailbox_id},
        )
        return [dict(r._mapping) for r in rows]


async def stored_streams(rt: Runtime, mailbox_id: uuid.UUID) -> dict[str, str]:
    async with rt.sessions() as session:
        rows = await session.execute(
            text("SELECT provider_message_id, stream_key FROM messages WHERE mailbox_id = :id"),
            {"id": mailbox_id},
        )
        return {r[0]: r[1] for r in rows}


async def start_partitioned(rt: Runtime, mailbox_id: uuid.UUID) -> list[dict[str, Any]]:
    """The mailbox's first slice plans the windows and waits for them; a few window pages
    then commit, so the changes that follow land in the middle of the windows."""
    await slices_until_windows(rt, mailbox_id)
    planned = await windows_of(rt, mailbox_id)
    assert len(planned) >= 2
    runner = WindowRunner(rt, owner="early")
    for _ in range(3):
        assert (await runner.run(mailbox_id)).pages == 1
    row = await _mailbox(rt, mailbox_id)
    assert row["status"] == "syncing" and row["phase"] == "backfill"
    return planned


async def slices_until_windows(rt: Runtime, mailbox_id: uuid.UUID) -> None:
    """The mailbox's slices (the small streams a page a slice) until it waits for windows."""
    engine = SyncEngine(rt, owner="slice")
    for _ in range(200):
        result = await engine.run_slice(mailbox_id)
        if result.outcome is not Outcome.CONTINUE:
            break
    assert result.outcome is Outcome.WAITING, result


async def one_window_for_all(rt: Runtime, mailbox_id: uuid.UUID, stream_key: str) -> None:
    """As if all the stream's mail had arrived at once: its windows become one, from the
    start of time to now."""
    async with rt.sessions() as session, session.begin():
        await session.execute(
            text(
                "DELETE FROM backfill_partitions WHERE mailbox_id = :id AND stream_key = :key "
                "AND window_start IS NOT NULL"
            ),
            {"id": mailbox_id, "key": stream_key},
        )
        await session.execute(
            text(
                "UPDATE backfill_partitions SET window_end = NULL "
                "WHERE mailbox_id = :id AND stream_key = :key"
            ),
            {"id": mailbox_id, "key": stream_key},
        )


async def _mailbox(rt: Runtime, mailbox_id: uuid.UUID) -> dict[str, Any]:
    async with rt.sessions() as session:
        row = await session.execute(
            text("SELECT * FROM mailboxes WHERE id = :id"), {"id": mailbox_id}
        )
        return dict(row.one()._mapping)


async def test_outlook_partitioned_backfill_reflects_adds_deletes_moves_and_reads(
    sim: Sim, live_api: LiveApi, part_rt: Runtime
) -> None:
    account = await outlook.new_account(sim, 3000)
    email = account["email"]
    inbox = [
        m for m in (await outlook.truth(sim, email)).values() if m["well_known_name"] == "inbox"
    ]
    archive = [
        m for m in (await outlook.truth(sim, email)).values() if m["well_known_name"] == "archive"
    ]
    assert len(inbox) > PARTITIONING["backfill_partition_threshold"]
    mailbox_id = uuid.UUID(await connect_via_api(live_api, "petra", outlook.connect_body(account)))
    planned = await start_partitioned(part_rt, mailbox_id)
    assert {w["stream_key"] for w in planned} >= {inbox[0]["folder_id"]}
    # Status aggregates the windows: syncing, backfill, what the pages so far wrote.
    during = await status_of(live_api, "petra")
    assert during["status"] == "syncing" and during["phase"] == "backfill"
    assert 0 < during["progress"]["messages_synced"] < 3000
    assert 0 < during["progress"]["percent"] < 100

    written = await stored_streams(part_rt, mailbox_id)
    listed_inbox = [m for m in inbox if written.get(m["id"]) == m["folder_id"]]
    assert listed_inbox, "a window page of the inbox committed before the changes"
    control = f"/_sim/microsoft/accounts/{email}/messages"
    # Already listed by a window, then deleted or moved away: the live cursor removes them.
    await sim.call("POST", f"{control}/delete", json={"ids": [m["id"] for m in listed_inbox[:5]]})
    await sim.call(
        "POST",
        f"{control}/move",
        json={"ids": [m["id"] for m in listed_inbox[5:10]], "destination": "archive"},
    )
    # Not listed yet: whichever window lists them sees the change, the cursor replays it.
    unlisted = [m for m in inbox if m["id"] not in written]
    await sim.call("POST", f"{control}/delete", json={"ids": [m["id"] for m in unlisted[:7]]})
    await sim.call(
        "POST",
        f"{control}/move",
        json={"ids": [m["id"] for m in unlisted[7:12]], "destination": "archive"},
    )
    await sim.call(
        "POST",
        f"{control}/move",
        json={"ids": [m["id"] for m in archive[:6]], "destination": "inbox"},
    )
    await sim.call(
        "POST",
        f"{control}/read",
        json={"ids": [m["id"] for m in listed_inbox[10:20] + unlisted[12:22]], "is_read": True},
    )
    await sim.call("POST", control, json={"folder": "inbox", "count": 9})

    await run_worker(part_rt, max_seconds=180)

    status = await status_of(live_api, "petra")
    assert status["status"] == "connected", status
    assert status["phase"] == "idle"
    assert await windows_of(part_rt, mailbox_id) == []
    # The partitioned folders are exact: what was deleted or moved away during their
    # windows is gone from them, what arrived or moved in is there, none twice.
    partitioned = {w["stream_key"] for w in planned}
    truth = await outlook.truth(sim, email)
    stored = await stored_streams(part_rt, mailbox_id)
    assert {mid for mid, key in stored.items() if key in partitioned} == {
        mid for mid, m in truth.items() if m["folder_id"] in partitioned
    }
    # Folders enumerated the usual way before the changes see them on their next pass (a
    # notification's, here asked for by hand); then the whole mailbox is exact.
    async with httpx.AsyncClient(base_url=live_api.base_url) as client:
        asked = await client.post(f"/mail/mailboxes/{mailbox_id}/sync", headers=bearer("petra"))
        assert asked.status_code in (200, 202), asked.text
    await run_worker(part_rt, max_seconds=60)
    await outlook.assert_converged(sim, part_rt, email, str(mailbox_id))
    stored = await stored_streams(part_rt, mailbox_id)
    assert stored == {mid: m["folder_id"] for mid, m in truth.items()}
    assert (await status_of(live_api, "petra"))["progress"]["messages_synced"] == len(truth)


async def test_gmail_partitioned_backfill_reflects_label_changes_adds_and_deletes(
    sim: Sim, live_api: LiveApi, part_rt: Runtime
) -> None:
    account = await gmail.new_account(sim, 1500)
    email = account["email"]
    mailbox_id = uuid.UUID(await connect_via_api(live_api, "gail", gmail.connect_body(account)))
    planned = await start_partitioned(part_rt, mailbox_id)
    assert {w["stream_key"] for w in planned} == {"mailbox"}

    truth = await sim.call("GET", f"/_sim/google/accounts/{email}/truth", params={"limit": 100000})
    ids = [m["id"] for m in truth["messages"]]
    written = await stored_streams(part_rt, mailbox_id)
    listed = [i for i in ids if i in written]
    unlisted = [i for i in ids if i not in written]
    assert listed and unlisted
    control = f"/_sim/google/accounts/{email}/messages"
    await sim.call("POST", f"{control}/delete", json={"ids": listed[:4] + unlisted[:4]})
    await sim.call(
        "POST",
        f"{control}/modify",
        json={"ids": listed[4:12] + unlisted[4:12], "add_label_ids": ["STARRED"],
              "remove_label_ids": ["UNREAD"]},
    )  # fmt: skip
    await sim.call(
        "POST",
        f"{control}/modify",
        json={"ids": listed[12:16] + unlisted[12:16], "add_label_ids": ["TRASH"],
              "remove_label_ids": ["INBOX"]},
    )  # fmt: skip
    await sim.call("POST", control, json={"count": 5})

    await run_worker(part_rt, max_seconds=180)

    status = await status_of(live_api, "gail")
    assert status["status"] == "connected", status
    assert await windows_of(part_rt, mailbox_id) == []
    await gmail.assert_converged(sim, part_rt, account, str(mailbox_id))


async def test_graph_limits_hold_across_window_jobs_with_random_429s(
    sim: Sim, live_api: LiveApi, part_rt: Runtime
) -> None:
    account = await outlook.new_account(sim, 4000)
    await sim.call(
        "PUT",
        "/_sim/faults",
        json={
            "throttle_rate": 0.1,
            "retry_after_seconds": 1.0,
            # Requests a worker sent before it read a 429 may arrive late on a busy machine.
            "retry_after_grace_ms": 300,
            "latency_ms": 20,
            "seed": 5,
        },
    )
    await sim.call("POST", "/_sim/counters/reset")
    mailbox_id = await connect_via_api(live_api, "lena", outlook.connect_body(account))
    # Several workers' worth of window jobs at once: ten jobs per worker, three workers.
    await asyncio.gather(*(run_worker(part_rt, max_seconds=240) for _ in range(3)))
    counters = await sim.counters(account["counter_key"])
    await sim.call("PUT", "/_sim/faults", json={})
    assert counters["throttled"] > 0
    assert counters["retry_after_violations"] == 0
    assert counters["concurrency_peak"] <= 4
    assert (await status_of(live_api, "lena"))["status"] == "connected"
    assert await windows_of(part_rt, uuid.UUID(mailbox_id)) == []
    await outlook.assert_converged(sim, part_rt, account["email"], mailbox_id)


@pytest.fixture
def pool(live_api: LiveApi, tmp_path: Path) -> Iterator[Workers]:
    processes = Workers(
        live_api.settings,
        tmp_path,
        SYNC_SLICE_SECONDS="30",
        BACKFILL_PARTITION_THRESHOLD="5000",
        BACKFILL_PARTITION_SIZE="5000",
    )
    try:
        yield processes
    finally:
        processes.stop_all()


async def test_two_worker_processes_share_windows_and_resume_a_killed_ones(
    sim: Sim, live_api: LiveApi, sim_rt: Runtime, pool: Workers
) -> None:
    """Two real `mailsync worker` processes; one is SIGKILLed while it is in the middle of
    a window; the other takes the window over from its checkpoint; the result is exact."""
    account = await outlook.new_account(sim, 30_000)
    await sim.call("PUT", "/_sim/faults", json={"latency_ms": 250})
    first, second = pool.start(), pool.start()
    mailbox_id = uuid.UUID(await connect_via_api(live_api, "kai", outlook.connect_body(account)))

    async def in_the_middle() -> dict[str, Any]:
        async with asyncio.timeout(90):
            while True:
                for row in await windows_of(sim_rt, mailbox_id):
                    if row["lease_owner"] and row["listed"] > 0 and not row["done"]:
                        return row
                await asyncio.sleep(0.02)

    window = await in_the_middle()
    # The window jobs spread over both processes (ARQ would hand every ready job to the
    # first one that polls): each process holds windows of the mailbox.
    holders: set[int] = set()
    async with asyncio.timeout(30):
        while holders != {first.pid, second.pid}:
            rows = await windows_of(sim_rt, mailbox_id)
            holders |= {_pid_of(r["lease_owner"]) for r in rows if r["lease_owner"]}
            await asyncio.sleep(0.02)
    window = await in_the_middle()
    victim = _pid_of(window["lease_owner"])
    assert victim in (first.pid, second.pid)
    os.kill(victim, signal.SIGKILL)
    listed_at_kill = window["listed"]

    # The survivor claims the lapsed window (a new fencing token) and goes on from there.
    survivor = second.pid if victim == first.pid else first.pid
    taken: dict[str, Any] | None = None
    async with asyncio.timeout(120):
        while taken is None:
            rows = {r["id"]: r for r in await windows_of(sim_rt, mailbox_id)}
            row = rows.get(window["id"])
            assert row is not None, "the window finished without anyone taking it over"
            if row["lease_owner"] and _pid_of(row["lease_owner"]) != victim:
                taken = row
            await asyncio.sleep(0.02)
    print(
        f"\nwindow {window['id']}: killed with {listed_at_kill} listed; taken by {survivor} "
        f"with {taken['listed']} listed, token {window['fencing_token']} -> "
        f"{taken['fencing_token']}"
    )
    assert _pid_of(taken["lease_owner"]) == survivor
    assert taken["fencing_token"] > window["fencing_token"]
    # Resumed from its checkpoint: what it had listed before the kill still counts.
    assert taken["listed"] >= listed_at_kill
    assert taken["checkpoint"] is not None or taken["done"]

    await sim.call("PUT", "/_sim/faults", json={})
    async with asyncio.timeout(180):
        while True:
            if (await _mailbox(sim_rt, mailbox_id))["status"] == "connected":
                break
            await asyncio.sleep(0.1)
    assert await windows_of(sim_rt, mailbox_id) == []
    await outlook.assert_converged(sim, sim_rt, account["email"], str(mailbox_id))


async def test_a_window_that_turns_out_large_splits_and_the_result_stays_exact(
    sim: Sim, live_api: LiveApi, part_rt: Runtime
) -> None:
    account = await outlook.new_account(sim, 4000)
    mailbox_id = uuid.UUID(await connect_via_api(live_api, "sven", outlook.connect_body(account)))
    await slices_until_windows(part_rt, mailbox_id)
    planned = await windows_of(part_rt, mailbox_id)
    keys = [w["stream_key"] for w in planned]
    largest = max(set(keys), key=keys.count)
    # Before any window runs: one window far larger than a window should be.
    await one_window_for_all(part_rt, mailbox_id, largest)
    [whole] = [w for w in await windows_of(part_rt, mailbox_id) if w["stream_key"] == largest]
    runner = WindowRunner(part_rt, owner="splitter")
    split: list[dict[str, Any]] = []
    for _ in range(20):  # a page a run; other streams' windows may come first
        await runner.run(mailbox_id)
        now = [w for w in await windows_of(part_rt, mailbox_id) if w["stream_key"] == largest]
        split = [w for w in now if w["id"] != whole["id"]]
        if split:
            break
    assert split, "the large window split itself"
    [shrunk] = [w for w in now if w["id"] == whole["id"]]
    assert shrunk["window_end"] is not None
    assert [w["window_start"] for w in split] == [shrunk["window_end"]]
    assert split[0]["window_end"] is None

    await run_worker(part_rt, max_seconds=180)
    assert (await status_of(live_api, "sven"))["status"] == "connected"
    assert await windows_of(part_rt, mailbox_id) == []
    await outlook.assert_converged(sim, part_rt, account["email"], str(mailbox_id))


async def test_an_idle_job_takes_half_of_a_busy_window_and_the_result_stays_exact(
    sim: Sim, live_api: LiveApi
) -> None:
    """No window left to claim: a job takes the second half of what a held window has left
    while its holder runs; the holder stops where the taker begins, and the mailbox still
    converges exactly."""
    rt = await Runtime.create(
        live_api.settings.model_copy(
            update={
                "backfill_partition_threshold": 300,
                # Windows never split themselves here: only a steal can share one.
                "backfill_partition_size": 1_000_000,
            }
        )
    )
    try:
        account = await outlook.new_account(sim, 6000, layout="inbox_only")
        mailbox_id = uuid.UUID(
            await connect_via_api(live_api, "tove", outlook.connect_body(account))
        )
        await slices_until_windows(rt, mailbox_id)
        # One window for the whole Inbox: as if the other jobs' windows were all done.
        [inbox] = {w["stream_key"] for w in await windows_of(rt, mailbox_id)}
        await one_window_for_all(rt, mailbox_id, inbox)
        [whole] = await windows_of(rt, mailbox_id)

        # The holder pages through the whole window, slowly; once its first page is in,
        # an idle job finds nothing to claim.
        await sim.call("PUT", "/_sim/faults", json={"latency_ms": 300})
        holder = asyncio.create_task(WindowRunner(rt, owner="holder").run(mailbox_id))
        async with asyncio.timeout(30):
            while True:
                if (await windows_of(rt, mailbox_id))[0]["listed_before"]:
                    break
                await asyncio.sleep(0.02)
        seen: dict[int, dict[str, Any]] = {}

        async def watch() -> None:
            # The windows' rows go with the stream's finish: keep their last state.
            while True:
                for w in await windows_of(rt, mailbox_id):
                    seen[w["id"]] = w
                await asyncio.sleep(0.01)

        watcher = asyncio.create_task(watch())
        try:
            taker = await WindowRunner(rt, owner="taker").run(mailbox_id)
            held = await holder
        finally:
            watcher.cancel()
            await asyncio.gather(watcher, return_exceptions=True)
        await sim.call("PUT", "/_sim/faults", json={})

        assert taker.claimed == 1 and taker.pages >= 1
        [taken] = [w for w in seen.values() if w["id"] != whole["id"]]
        shrunk = seen[whole["id"]]
        # The second half of what was left, up to now.
        assert shrunk["window_end"] == taken["window_start"] and taken["window_end"] is None
        # The holder stopped at its new end instead of listing all 6000 in 7 pages (a
        # page it had already asked for may reach past that end).
        assert held.pages < 6 and held.pages + taker.pages <= 8
        print(f"\nholder {held.pages} pages, taker {taker.pages} pages")

        await run_worker(rt, max_seconds=180)
        assert (await status_of(live_api, "tove"))["status"] == "connected"
        assert await windows_of(rt, mailbox_id) == []
        await outlook.assert_converged(sim, rt, account["email"], str(mailbox_id))
    finally:
        await rt.close()
