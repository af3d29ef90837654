"""EVENTS_ENABLED=false: no publisher runs, so nothing may pile up in the outbox: no page's
events, no lifecycle row, no resnapshot."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import httpx
import pytest
from sqlalchemy import text

from app.config import Settings
from app.events import snapshot
from app.main import create_app
from app.providers import registry
from app.providers.memory import make_message
from app.sync import mailboxes as service
from app.sync.engine import Outcome, SyncEngine
from app.sync.runtime import Runtime
from app.sync.states import MailboxStatus
from tests.conftest import bearer
from tests.sync.helpers import connect, mailbox_row, seeded


@pytest.fixture
async def off(rt: Runtime, settings: Settings) -> AsyncIterator[Runtime]:
    runtime = await Runtime.create(settings.model_copy(update={"events_enabled": False}))
    try:
        yield runtime
    finally:
        await runtime.close()


async def _sync(rt: Runtime, mailbox_id: uuid.UUID) -> Outcome:
    for _ in range(50):
        outcome = (await SyncEngine(rt, "w").run_slice(mailbox_id)).outcome
        if outcome is not Outcome.CONTINUE:
            return outcome
    raise AssertionError("sync did not finish")


async def _outbox(rt: Runtime) -> int:
    async with rt.sessions() as session:
        return int((await session.execute(text("SELECT count(*) FROM outbox_events"))).scalar_one())


class _Tx:
    def __init__(self, rt: Runtime, session: object) -> None:
        self.rt, self.session, self.jobs = rt, session, []

    def after_commit(self, action: object) -> None:
        self.jobs.append(action)


async def test_with_events_off_nothing_is_written_to_the_outbox(off: Runtime, rt: Runtime) -> None:
    off.settings = off.settings.model_copy(update={"max_transient_retries": 2})
    provider = seeded(30, page_size=10, streams=2)
    registry.override("microsoft", lambda s, h: provider)
    mailbox_id = await connect(off, provider, user="otto")
    assert await _sync(off, mailbox_id) in (Outcome.DONE, Outcome.DONE_AGAIN)  # connected
    provider.put("inbox", make_message(500))
    provider.delete("inbox", "msg-0000000")
    assert await _sync(off, mailbox_id) in (Outcome.DONE, Outcome.DONE_AGAIN)
    # Failing, then recovering: mailbox.sync_failed and mailbox.recovered if events were on.
    provider.faults.throttle_next = 100
    provider.faults.retry_after = 0.0
    for _ in range(2):
        assert (await SyncEngine(off, "w").run_slice(mailbox_id)).outcome is Outcome.RETRY_LATER
    assert (await mailbox_row(off, mailbox_id))["status"] == MailboxStatus.ERROR
    provider.faults.throttle_next = 0
    assert await _sync(off, mailbox_id) in (Outcome.DONE, Outcome.DONE_AGAIN)
    assert (await mailbox_row(off, mailbox_id))["status"] == MailboxStatus.CONNECTED
    async with off.sessions() as session:
        await service.disconnect(_Tx(off, session), [mailbox_id], purge=True)  # type: ignore[arg-type]
        await session.commit()
    assert await _outbox(off) == 0

    # The same steps with events on write rows: the test above can tell.
    other = seeded(5)
    registry.override("microsoft", lambda s, h: other)
    rt._providers.clear()
    on_mailbox = await connect(rt, other, user="olga")
    await _sync(rt, on_mailbox)
    assert await _outbox(rt) == 3  # a page per stream (inbox, sent), mailbox.connected


async def test_with_events_off_a_resnapshot_is_refused(
    off: Runtime, settings: Settings, rt: Runtime
) -> None:
    provider = seeded(3)
    registry.override("microsoft", lambda s, h: provider)
    mailbox_id = await connect(off, provider, user="opal")
    app = create_app(off.settings)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://mailsync.test"
        ) as client,
    ):
        response = await client.post(
            f"/admin/mailboxes/{mailbox_id}/resnapshot",
            headers=bearer("ops", roles=["mailsync.operator"]),
        )
    assert response.status_code == 409
    assert response.json()["error"]["code"] == "events_disabled"
    assert await snapshot.resnapshot_from_cli(off.settings, mailbox_id, wait=False) == 1
    async with off.sessions() as session:
        walks = (await session.execute(text("SELECT count(*) FROM resnapshots"))).scalar_one()
    assert walks == 0 and await _outbox(off) == 0
