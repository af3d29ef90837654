"""Passes that cost what changed: a notified pass follows only the streams its notifications
point to, the periodic pass follows every stream, and folder discovery is kept in
PostgreSQL for every worker (app/sync/targets.py, app/providers/outlook/folders.py)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from sqlalchemy import event, text

from app.providers.base import Cursor, Page, StreamInfo, SyncContext
from app.sync.engine import Outcome, SliceResult, SyncEngine
from app.sync.jobs import schedule
from app.sync.runtime import Runtime
from tests.conftest import LiveApi, run_worker
from tests.e2e.support import Sim, connect_via_api, status_of, stored_messages
from tests.e2e.test_outlook import assert_converged, connect_body, new_account

DISCOVERY = ("folders.delta", "folders.get", "folders.list", "folders.children")


async def _eleven_folder_account(sim: Sim, count: int) -> dict[str, Any]:
    account = await new_account(sim, count)
    folders = (await sim.call("GET", f"/_sim/microsoft/accounts/{account['user_id']}"))["folders"]
    receipts = next(f["id"] for f in folders if f["display_name"] == "Receipts")
    await sim.call("DELETE", f"/_sim/microsoft/accounts/{account['user_id']}/folders/{receipts}")
    return account


async def _connected(
    sim: Sim, live_api: LiveApi, rt: Runtime, user: str, account: dict[str, Any]
) -> str:
    mailbox_id = await connect_via_api(live_api, user, connect_body(account))
    await run_worker(rt)
    status = await status_of(live_api, user)
    assert status["status"] == "connected" and status["in_sync"], status
    subscriptions = await sim.call("GET", "/_sim/microsoft/subscriptions")
    assert [s for s in subscriptions if s["userId"] == account["user_id"]]
    return mailbox_id


async def _requests(sim: Sim, account: dict[str, Any]) -> dict[str, int]:
    counters = await sim.counters(account["counter_key"])
    return {"total": int(counters.get("requests", 0)), **counters.get("methods", {})}


async def _reset_counters(sim: Sim) -> None:
    await sim.call("POST", "/_sim/counters/reset")


async def _accepted(rt: Runtime, mailbox_id: str) -> int:
    async with rt.sessions() as session:
        return int(
            (
                await session.execute(
                    text(
                        "SELECT count(*) FROM webhook_notifications "
                        "WHERE mailbox_id = :id AND outcome = 'accepted'"
                    ),
                    {"id": uuid.UUID(mailbox_id)},
                )
            ).scalar_one()
        )


async def _wait_accepted(rt: Runtime, mailbox_id: str, at_least: int) -> None:
    async with asyncio.timeout(20):
        # Another process (the live API) records them: poll the table.
        while await _accepted(rt, mailbox_id) < at_least:  # noqa: ASYNC110
            await asyncio.sleep(0.05)


async def _one_notified_change(
    sim: Sim,
    rt: Runtime,
    monkeypatch: pytest.MonkeyPatch,
    account: dict[str, Any],
    mailbox_id: str,
    change: str,
    body: dict[str, Any],
) -> list[str]:
    """One change at the simulator, recorded by the live API from its notification, then
    the worker until nothing is queued: the streams it followed (counters reset first)."""
    followed = _following(rt, monkeypatch)
    await _reset_counters(sim)
    before = await _accepted(rt, mailbox_id)
    await sim.call(
        "POST", f"/_sim/microsoft/accounts/{account['email']}/messages/{change}", json=body
    )
    await _wait_accepted(rt, mailbox_id, before + 1)
    await run_worker(rt)
    return followed


async def _pending_hints(rt: Runtime, mailbox_id: str) -> int:
    async with rt.sessions() as session:
        left = await session.execute(
            text("SELECT count(*) FROM pending_streams WHERE mailbox_id = :id"),
            {"id": uuid.UUID(mailbox_id)},
        )
        return int(left.scalar_one())


async def _folder_id(sim: Sim, account: dict[str, Any], name: str) -> str:
    folders = (await sim.call("GET", f"/_sim/microsoft/accounts/{account['user_id']}"))["folders"]
    return str(next(f["id"] for f in folders if f["display_name"] == name))


def _following(rt: Runtime, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The streams whose pages the engine fetches, in order."""
    provider = rt.provider("microsoft")
    fetch = provider.fetch_page
    followed: list[str] = []

    async def recording(ctx: SyncContext, stream: StreamInfo, cursor: Cursor | None) -> Page:
        followed.append(stream.key)
        return await fetch(ctx, stream, cursor)

    monkeypatch.setattr(provider, "fetch_page", recording)
    return followed


@pytest.fixture
async def notifications_dropped(sim: Sim) -> AsyncIterator[None]:
    yield
    await sim.call("PUT", "/_sim/microsoft/settings", json={"drop_change_notifications": False})


async def test_a_notified_pass_makes_at_most_three_graph_requests_and_converges(
    sim: Sim, live_api: LiveApi, sim_rt: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    account = await _eleven_folder_account(sim, 400)
    mailbox_id = await _connected(sim, live_api, sim_rt, "tara", account)
    async with sim_rt.sessions() as session:
        streams = await session.execute(
            text("SELECT count(*) FROM sync_cursors WHERE mailbox_id = :id"),
            {"id": uuid.UUID(mailbox_id)},
        )
        assert streams.scalar_one() == 11
    commits: list[object] = []

    def committed(connection: object) -> None:
        commits.append(connection)

    event.listen(sim_rt.engine.sync_engine, "commit", committed)
    try:
        followed = await _one_notified_change(
            sim,
            sim_rt,
            monkeypatch,
            account,
            mailbox_id,
            "categories",
            {"folder": "archive", "count": 1, "categories": ["Tara"]},
        )
    finally:
        event.remove(sim_rt.engine.sync_engine, "commit", committed)

    # The pass begins in its lease's transaction (the store places the message), then its
    # page, then its end.
    assert len(commits) == 3, commits
    requests = await _requests(sim, account)
    assert requests["total"] <= 3, requests
    # The store knows the changed message's folder: no request asks where it is.
    assert requests == {"total": 1, "messages.delta": 1}, requests
    assert followed == [await _folder_id(sim, account, "Archive")]
    await assert_converged(sim, sim_rt, account["email"], mailbox_id)
    status = await status_of(live_api, "tara")
    assert status["status"] == "connected" and status["in_sync"], status


async def test_a_notified_move_is_followed_to_the_folder_the_message_went_to(
    sim: Sim, live_api: LiveApi, sim_rt: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The pass follows the folder the store holds the message in; its delta removes the
    message, so the pass asks where it went and the next pass follows that folder."""
    account = await _eleven_folder_account(sim, 400)
    mailbox_id = await _connected(sim, live_api, sim_rt, "umar", account)
    followed = await _one_notified_change(
        sim,
        sim_rt,
        monkeypatch,
        account,
        mailbox_id,
        "move",
        {"folder": "archive", "count": 1, "destination": "inbox"},
    )

    archive = await _folder_id(sim, account, "Archive")
    inbox = await _folder_id(sim, account, "Inbox")
    assert followed == [archive, inbox]
    requests = await _requests(sim, account)
    assert requests == {"total": 3, "messages.delta": 2, "messages.get": 1}, requests
    await assert_converged(sim, sim_rt, account["email"], mailbox_id)
    assert await _pending_hints(sim_rt, mailbox_id) == 0
    status = await status_of(live_api, "umar")
    assert status["status"] == "connected" and status["in_sync"], status


async def test_a_change_without_a_notification_is_found_by_the_periodic_pass(
    sim: Sim,
    live_api: LiveApi,
    sim_rt: Runtime,
    monkeypatch: pytest.MonkeyPatch,
    notifications_dropped: None,
) -> None:
    account = await _eleven_folder_account(sim, 300)
    email = account["email"]
    mailbox_id = await _connected(sim, live_api, sim_rt, "ugo", account)
    await sim.call("PUT", "/_sim/microsoft/settings", json={"drop_change_notifications": True})
    silent = await sim.call(
        "POST",
        f"/_sim/microsoft/accounts/{email}/messages/categories",
        json={"folder": "sentitems", "count": 1, "categories": ["Silent"]},
    )
    await sim.call("PUT", "/_sim/microsoft/settings", json={"drop_change_notifications": False})
    before = await _accepted(sim_rt, mailbox_id)
    await sim.call(
        "POST", f"/_sim/microsoft/accounts/{email}/messages", json={"folder": "inbox", "count": 1}
    )
    await _wait_accepted(sim_rt, mailbox_id, before + 1)
    followed = _following(sim_rt, monkeypatch)
    await run_worker(sim_rt)

    # The notified pass read the Inbox only: the silent change is not seen yet.
    assert followed == [await _folder_id(sim, account, "Inbox")]
    [silent_id] = silent["ids"]
    assert "Silent" not in (await stored_messages(sim_rt, mailbox_id))[silent_id]["labels"]

    # The periodic pass comes due (as after SYNC_INTERVAL_SECONDS) and reads every folder.
    async with sim_rt.sessions() as session, session.begin():
        await session.execute(
            text("UPDATE mailboxes SET full_pass_at = now(), next_sync_at = now() WHERE id = :id"),
            {"id": uuid.UUID(mailbox_id)},
        )
    followed.clear()
    assert (await schedule({"rt": sim_rt}))["due"] == 1
    await run_worker(sim_rt)
    assert len(set(followed)) == 11
    await assert_converged(sim, sim_rt, email, mailbox_id)
    async with sim_rt.sessions() as session:
        row = (
            await session.execute(
                text("SELECT full_pass_at > now() AS later FROM mailboxes WHERE id = :id"),
                {"id": uuid.UUID(mailbox_id)},
            )
        ).one()
    assert row.later  # the next periodic pass is scheduled again


async def test_notifications_for_three_folders_in_one_burst_give_one_pass_over_those_three(
    sim: Sim, live_api: LiveApi, sim_rt: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    account = await _eleven_folder_account(sim, 500)
    email = account["email"]
    mailbox_id = await _connected(sim, live_api, sim_rt, "vera", account)
    before = await _accepted(sim_rt, mailbox_id)
    await sim.call(
        "POST", f"/_sim/microsoft/accounts/{email}/messages", json={"folder": "inbox", "count": 2}
    )
    await sim.call(
        "POST",
        f"/_sim/microsoft/accounts/{email}/messages/delete",
        json={"folder": "archive", "count": 1},
    )
    await sim.call(
        "POST",
        f"/_sim/microsoft/accounts/{email}/messages/categories",
        json={"folder": "sentitems", "count": 1, "categories": ["Vera"]},
    )
    await _wait_accepted(sim_rt, mailbox_id, before + 4)
    followed = _following(sim_rt, monkeypatch)

    result: SliceResult = await SyncEngine(sim_rt, "w").run_slice(uuid.UUID(mailbox_id))
    assert result.outcome is Outcome.DONE, result
    expected = {await _folder_id(sim, account, n) for n in ("Inbox", "Archive", "Sent Items")}
    assert sorted(followed) == sorted(expected)
    await assert_converged(sim, sim_rt, email, mailbox_id)
    assert await _pending_hints(sim_rt, mailbox_id) == 0


async def test_folder_discovery_is_not_repeated_by_a_slice_on_another_worker(
    sim: Sim, live_api: LiveApi, sim_rt: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    account = await new_account(sim, 3000)
    mailbox_id = uuid.UUID(await connect_via_api(live_api, "walt", connect_body(account)))
    small = {"sync_slice_pages": 2}
    sim_rt.settings = sim_rt.settings.model_copy(update=small)
    first = await SyncEngine(sim_rt, "worker-a").run_slice(mailbox_id)
    assert first.outcome is Outcome.CONTINUE
    discovery = await _requests(sim, account)
    assert discovery.get("folders.delta", 0) >= 1 and discovery.get("folders.get", 0) >= 1

    async def slice_elsewhere(owner: str) -> tuple[SliceResult, dict[str, int]]:
        # Another worker process: its own runtime and provider, nothing cached in memory.
        other = await Runtime.create(sim_rt.settings)
        try:
            await _reset_counters(sim)
            result = await SyncEngine(other, owner).run_slice(mailbox_id)
            return result, await _requests(sim, account)
        finally:
            await other.close()

    result, requests = await slice_elsewhere("worker-b")
    assert result.outcome in (Outcome.CONTINUE, Outcome.DONE), result
    assert result.pages >= 1
    assert not any(requests.get(kind) for kind in DISCOVERY), requests
    assert requests["total"] == requests.get("messages.delta"), requests
    while result.outcome is Outcome.CONTINUE:
        result, requests = await slice_elsewhere("worker-c")
        assert not any(requests.get(kind) for kind in DISCOVERY), requests
    assert result.outcome is Outcome.DONE

    # The next pass over every folder, on yet another worker: one folder-delta request
    # from the stored deltaLink, no well-known folder lookups.
    async with sim_rt.sessions() as session, session.begin():
        await session.execute(
            text("UPDATE mailboxes SET full_pass_at = now() WHERE id = :id"), {"id": mailbox_id}
        )
    sim_rt.settings = sim_rt.settings.model_copy(update={"sync_slice_pages": 1000})
    result, requests = await slice_elsewhere("worker-d")
    assert result.outcome is Outcome.DONE, result
    assert requests.get("folders.delta") == 1 and not requests.get("folders.get"), requests
    await assert_converged(sim, sim_rt, account["email"], str(mailbox_id))


async def test_an_outlook_sync_at_three_seconds_a_request_moves_forward_every_slice(
    sim: Sim, live_api: LiveApi, sim_rt: Runtime
) -> None:
    account = await _eleven_folder_account(sim, 120)
    mailbox_id = uuid.UUID(await connect_via_api(live_api, "xena", connect_body(account)))
    # The set-up alone (folder delta, well-known folders, newest-first listing) takes
    # longer than a slice's budget at this speed.
    sim_rt.settings = sim_rt.settings.model_copy(update={"sync_slice_seconds": 4.0})
    await sim.call("PUT", "/_sim/faults", json={"latency_ms": 3000})
    results: list[SliceResult] = []
    try:
        for turn in range(12):
            other = await Runtime.create(sim_rt.settings)
            try:
                result = await SyncEngine(other, f"slow-{turn}").run_slice(mailbox_id)
            finally:
                await other.close()
            results.append(result)
            if result.outcome is not Outcome.CONTINUE:
                break
    finally:
        await sim.call("PUT", "/_sim/faults", json={})
    assert results[-1].outcome is Outcome.DONE, results
    assert all(r.pages >= 1 for r in results), results
    requests = await _requests(sim, account)
    assert requests.get("folders.delta") == 1, requests
    await assert_converged(sim, sim_rt, account["email"], str(mailbox_id))
    status = await status_of(live_api, "xena")
    assert status["status"] == "connected" and status["in_sync"], status
