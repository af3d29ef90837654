"""One mailbox: its view, sync now, resync (exact), pause (nothing scheduled or synced)
and resume."""

from __future__ import annotations

import uuid

import httpx
from sqlalchemy import text

from app.db.repositories.mailbox_actions import MailboxActions
from app.providers import registry
from app.sync.engine import Outcome, SyncEngine
from app.sync.jobs import schedule
from app.sync.runtime import Runtime
from tests.conftest import bearer, run_worker
from tests.sync.helpers import connect, make_due, seeded, stored_state, truth_state

PAT = bearer("pat")


async def _generations(rt: Runtime, mailbox_id: uuid.UUID) -> list[int]:
    async with rt.sessions() as session:
        rows = await session.execute(
            text("SELECT generation FROM sync_cursors WHERE mailbox_id = :m ORDER BY stream_key"),
            {"m": mailbox_id},
        )
        return [int(r[0]) for r in rows.all()]


async def test_pause_resume_sync_and_resync(api: httpx.AsyncClient, rt: Runtime) -> None:
    provider = seeded(90, streams=2)
    registry.override("microsoft", lambda s, h: provider)
    mailbox_id = await connect(rt, provider, user="pat", email="pat@example.com", enqueue=True)
    await run_worker(rt)
    view = (await api.get(f"/mail/mailboxes/{mailbox_id}", headers=PAT)).json()
    assert view["status"] == "connected" and view["paused"] is False
    assert view["progress"]["messages_synced"] == 90

    # Pause: the flag, the same status, nothing scheduled, no slice takes the lease.
    paused = (await api.post(f"/mail/mailboxes/{mailbox_id}/pause", headers=PAT)).json()
    assert paused["mailbox"]["paused"] is True and paused["mailbox"]["status"] == "connected"
    status = (await api.get("/mail/status", headers=PAT)).json()["mailboxes"][0]
    assert status["paused"] is True
    refused = await api.post(f"/mail/mailboxes/{mailbox_id}/sync", headers=PAT)
    assert refused.status_code == 409 and refused.json()["error"]["code"] == "mailbox_unavailable"
    await make_due(rt, mailbox_id)
    assert (await schedule({"rt": rt}))["due"] == 0
    result = await SyncEngine(rt, owner="w").run_slice(mailbox_id)
    assert result.outcome is Outcome.BUSY

    # Resume: a pass runs and catches up what changed meanwhile.
    provider.delete("inbox", next(iter(provider.streams["inbox"])))
    resumed = await api.post(f"/mail/mailboxes/{mailbox_id}/resume", headers=PAT)
    assert resumed.status_code == 200 and resumed.json()["mailbox"]["paused"] is False
    await run_worker(rt)
    assert await stored_state(rt, mailbox_id) == truth_state(provider)

    # Sync now: 202, a pass runs.
    served = provider.pages_served
    response = await api.post(f"/mail/mailboxes/{mailbox_id}/sync", headers=PAT)
    assert response.status_code == 202
    await run_worker(rt)
    assert provider.pages_served > served

    # Resync: a message removed without any change record (a cursor cannot see it) is
    # gone after the rebuild, and every stream ran under a new generation.
    before = await _generations(rt, mailbox_id)
    silently = next(iter(provider.streams["sent"]))
    del provider.streams["sent"][silently]
    response = await api.post(f"/mail/mailboxes/{mailbox_id}/resync", headers=PAT)
    assert response.status_code == 202
    await run_worker(rt)
    assert await _generations(rt, mailbox_id) == [g + 1 for g in before]
    assert await stored_state(rt, mailbox_id) == truth_state(provider)
    view = (await api.get(f"/mail/mailboxes/{mailbox_id}", headers=PAT)).json()
    assert view["status"] == "connected" and view["progress"]["messages_synced"] == 88

    # Someone else's mailbox does not exist for this user.
    for action in ("sync", "resync", "pause", "resume"):
        other = await api.post(f"/mail/mailboxes/{mailbox_id}/{action}", headers=bearer("eve"))
        assert other.status_code == 404


async def test_pause_stops_a_running_slice(rt: Runtime) -> None:
    provider = seeded(400, streams=1, page_size=40)
    registry.override("microsoft", lambda s, h: provider)
    mailbox_id = await connect(rt, provider, user="pat", email="pat2@example.com")
    pages = 0

    async def pause_at_third_page(stream: object, cursor: object) -> None:
        nonlocal pages
        pages += 1
        if pages == 3:
            async with rt.sessions() as session, session.begin():
                await MailboxActions(session).pause(mailbox_id)

    provider.faults.before_page = pause_at_third_page
    result = await SyncEngine(rt, owner="w").run_slice(mailbox_id)
    assert result.outcome is Outcome.LEASE_LOST
    stored = len(await stored_state(rt, mailbox_id))
    assert stored < 400  # the slice stopped: nothing after the pause committed
    provider.faults.before_page = None
    assert (await SyncEngine(rt, owner="w2").run_slice(mailbox_id)).outcome is Outcome.BUSY
    assert len(await stored_state(rt, mailbox_id)) == stored
