"""Outlook folders that change while a mailbox syncs: created, renamed, moved, deleted."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence
from typing import Any

import pytest
from sqlalchemy import text

from app.db.repositories.outbox import OutboxRepository
from app.providers.base import StreamInfo, SyncContext
from app.sync.engine import Outcome, SyncEngine
from app.sync.queue import enqueue_sync
from app.sync.runtime import Runtime
from tests.conftest import LiveApi, run_worker
from tests.e2e.support import Sim, connect_via_api, status_of
from tests.e2e.test_outlook import assert_converged, connect_body, new_account


async def _folder(sim: Sim, user: str, name: str, parent: str = "msgfolderroot") -> str:
    created = await sim.call(
        "POST",
        f"/_sim/microsoft/accounts/{user}/folders",
        json={"display_name": name, "parent": parent},
    )
    return str(created["id"])


async def _fill(sim: Sim, user: str, folder: str, count: int) -> None:
    while count:
        batch = min(count, 5000)
        await sim.call(
            "POST",
            f"/_sim/microsoft/accounts/{user}/messages",
            json={"folder": folder, "count": batch},
        )
        count -= batch


async def _folder_ids(sim: Sim, user: str) -> dict[str, str]:
    account = await sim.call("GET", f"/_sim/microsoft/accounts/{user}")
    return {f["display_name"]: f["id"] for f in account["folders"]}


async def _rows_in(rt: Runtime, mailbox_id: str, stream_key: str) -> int:
    async with rt.sessions() as session:
        return int(
            (
                await session.execute(
                    text(
                        "SELECT count(*) FROM messages WHERE mailbox_id = :id AND stream_key = :key"
                    ),
                    {"id": uuid.UUID(mailbox_id), "key": stream_key},
                )
            ).scalar_one()
        )


async def _dropped_events(rt: Runtime, mailbox_id: str, stream_key: str) -> list[dict[str, Any]]:
    """messages.changed rows that deleted messages of this stream outside any page of it
    (a page also carries what it received or updated)."""
    async with rt.sessions() as session:
        events = await OutboxRepository(session).for_mailbox(uuid.UUID(mailbox_id))
    return [
        e["payload"]
        for e in events
        if e["kind"] == "messages.changed"
        and e["payload"].get("stream") == stream_key
        and e["payload"].get("deleted")
        and not e["payload"].get("received")
        and not e["payload"].get("updated")
    ]


async def test_a_folder_deleted_after_the_folder_list_was_read_is_dropped_not_an_error(
    sim: Sim, live_api: LiveApi, sim_rt: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    account = await new_account(sim, 300)
    user = account["user_id"]
    big = await _folder(sim, user, "Big")
    await _fill(sim, user, big, 2500)
    mailbox_id = await connect_via_api(live_api, "fran", connect_body(account))
    provider = sim_rt.provider("microsoft")
    read = provider.list_streams
    lists: list[Sequence[StreamInfo]] = []

    async def recording(ctx: SyncContext) -> Sequence[StreamInfo]:
        lists.append(await read(ctx))
        return lists[-1]

    monkeypatch.setattr(provider, "list_streams", recording)
    sim_rt.settings = sim_rt.settings.model_copy(update={"sync_slice_pages": 3})
    engine = SyncEngine(sim_rt, "w")
    assert (await engine.run_slice(uuid.UUID(mailbox_id))).outcome is Outcome.CONTINUE
    rows_before = await _rows_in(sim_rt, mailbox_id, big)
    assert rows_before > 0

    # The next slice works from a folder list read just before Big was deleted.
    await sim.call("DELETE", f"/_sim/microsoft/accounts/{user}/folders/{big}")

    async def folder_list_read_before(ctx: SyncContext) -> Sequence[StreamInfo]:
        return lists[0]

    monkeypatch.setattr(provider, "list_streams", folder_list_read_before)
    sim_rt.settings = sim_rt.settings.model_copy(update={"sync_slice_pages": 1000})
    result = await SyncEngine(sim_rt, "w").run_slice(uuid.UUID(mailbox_id))
    monkeypatch.undo()
    assert result.outcome in (Outcome.DONE, Outcome.DONE_AGAIN), result
    status = await status_of(live_api, "fran")
    assert status["status"] == "connected" and status["last_error"] is None, status
    assert await _rows_in(sim_rt, mailbox_id, big) == 0
    [event] = await _dropped_events(sim_rt, mailbox_id, big)
    assert len(event["deleted"]) == rows_before
    async with sim_rt.sessions() as session:
        cursors = await session.execute(
            text("SELECT count(*) FROM sync_cursors WHERE mailbox_id = :id AND stream_key = :key"),
            {"id": uuid.UUID(mailbox_id), "key": big},
        )
        assert cursors.scalar_one() == 0
    await assert_converged(sim, sim_rt, account["email"], mailbox_id)


async def test_folders_created_renamed_moved_and_deleted_while_syncing_converge(
    sim: Sim, live_api: LiveApi, sim_rt: Runtime
) -> None:
    account = await new_account(sim, 2000)
    user = account["user_id"]
    big = await _folder(sim, user, "Big")
    await _fill(sim, user, big, 3000)
    old = await _folder(sim, user, "Old", "archive")
    await _fill(sim, user, old, 40)
    folders = await _folder_ids(sim, user)
    await sim.call("PUT", "/_sim/faults", json={"latency_ms": 150})
    mailbox_id = await connect_via_api(live_api, "felix", connect_body(account))
    worker = asyncio.create_task(run_worker(sim_rt, max_seconds=180))
    try:
        # While Big is being enumerated, the user reorganises the mailbox.
        async with asyncio.timeout(60):
            # Commits are seen by polling the database.
            while not await _rows_in(sim_rt, mailbox_id, big):  # noqa: ASYNC110
                await asyncio.sleep(0.02)
        await sim.call("DELETE", f"/_sim/microsoft/accounts/{user}/folders/{big}")
        await sim.call(
            "PATCH", f"/_sim/microsoft/accounts/{user}/folders/{folders['Team']}",
            json={"display_name": "Crew"},
        )  # fmt: skip
        await sim.call(
            "PATCH", f"/_sim/microsoft/accounts/{user}/folders/{folders['Projects']}",
            json={"parent": "archive"},
        )  # fmt: skip
        clients = await _folder(sim, user, "Clients", "inbox")
        acme = await _folder(sim, user, "Acme", clients)
        await _fill(sim, user, acme, 25)
        await sim.call(
            "POST", f"/_sim/microsoft/accounts/{user}/messages/move",
            json={"folder": "inbox", "count": 10, "destination": acme},
        )  # fmt: skip
        # Same name in two places: two labels.
        await _fill(sim, user, await _folder(sim, user, "2024", clients), 3)
        await _fill(sim, user, await _folder(sim, user, "2024", "archive"), 3)
        await sim.call("DELETE", f"/_sim/microsoft/accounts/{user}/folders/{old}")
        await worker
    finally:
        worker.cancel()
        await sim.call("PUT", "/_sim/faults", json={})
    # The next pass (a push, the periodic sync) sees whatever came after the last one.
    assert await enqueue_sync(sim_rt.redis, mailbox_id)
    await run_worker(sim_rt, max_seconds=60)

    status = await status_of(live_api, "felix")
    assert status["status"] == "connected" and status["last_error"] is None, status
    await assert_converged(sim, sim_rt, account["email"], mailbox_id)
    assert await _rows_in(sim_rt, mailbox_id, big) == 0
    # Big went while its enumeration ran: the engine dropped the stream there and then.
    assert await _dropped_events(sim_rt, mailbox_id, big)
