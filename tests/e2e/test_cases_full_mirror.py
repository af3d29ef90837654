"""Case mail in a fully mirrored mailbox: linked by a query over the store, no provider
calls; new mail linked in the transaction that stores it, even while a case is linked."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import text

from app.db.repositories.messages import MessageRepository
from app.providers.base import MessageBatch, NormalizedMessage
from app.sync.cases.mail import CaseMail
from app.sync.cases.runner import CaseSearchRunner, Outcome
from app.sync.jobs import schedule
from app.sync.runtime import Runtime
from tests.conftest import LiveApi, run_worker
from tests.e2e.cases_support import (
    CONTACT,
    case_events,
    case_message_ids,
    entry_of,
    entry_rows,
    get_case,
    linked_by_events,
    links,
    put_case,
)
from tests.e2e.support import Sim, connect_via_api, unique_email


async def new_account(sim: Sim, count: int, contacts: list[dict[str, Any]]) -> dict[str, Any]:
    return dict(
        await sim.call(
            "POST",
            "/_sim/microsoft/accounts",
            json={"email": unique_email("mirror"), "message_count": count, "contacts": contacts},
        )
    )


def connect_body(account: dict[str, Any]) -> dict[str, Any]:
    return {
        "provider": "microsoft",
        "access_token": account["access_token"],
        "refresh_token": account["refresh_token"],
        "expires_in": account["expires_in"],
        "email": account["email"],
    }


async def contact_truth(sim: Sim, account: dict[str, Any], address: str) -> set[str]:
    body = await sim.call("GET", f"/_sim/microsoft/accounts/{account['email']}/contacts/{address}")
    return set(body["ids"])


async def test_a_case_links_stored_mail_by_query_and_new_mail_as_it_is_stored(
    sim: Sim, live_api: LiveApi, sim_rt: Runtime
) -> None:
    account = await new_account(sim, 3000, [{"address": CONTACT, "count": 250}])
    mailbox_id = await connect_via_api(live_api, "fred", connect_body(account))
    await run_worker(sim_rt)
    await sim.call("POST", "/_sim/counters/reset")

    # Addresses are matched whatever their case.
    await put_case(
        live_api, "fred", "f-1", mailbox_ids=[mailbox_id], contacts=["Counsel@LawFirm.Example"]
    )
    await run_worker(sim_rt)
    expected = await contact_truth(sim, account, CONTACT)
    case = await get_case(live_api, "fred", "f-1")
    assert case["status"] == "complete"
    assert case["contacts"] == [CONTACT]
    entry = entry_of(case, mailbox_id, CONTACT)
    assert (entry["found"], entry["linked"], entry["estimate"]) == (250, 250, 250)
    assert set(await case_message_ids(live_api, "fred", "f-1")) == expected
    # No provider call: the store answered.
    assert (await sim.counters(account["counter_key"])).get("requests", 0) == 0

    # New mail of the contact: linked by the page that stores it, with its event.
    await sim.call(
        "POST",
        f"/_sim/microsoft/accounts/{account['email']}/messages",
        json={"folder": "inbox", "count": 3, "from_address": CONTACT},
    )
    async with sim_rt.sessions() as session, session.begin():
        await session.execute(
            text("UPDATE mailboxes SET next_sync_at = now() WHERE id = :id"),
            {"id": uuid.UUID(mailbox_id)},
        )
    await schedule({"rt": sim_rt})
    await run_worker(sim_rt)
    expected = await contact_truth(sim, account, CONTACT)
    assert len(expected) == 253
    assert {m for _, m in await links(sim_rt, mailbox_id)} == expected
    linked = linked_by_events(await case_events(sim_rt, mailbox_id), "f-1")
    assert sorted(linked) == sorted(expected)


async def _waiting_on_a_row_lock(rt: Runtime) -> None:
    """Until some session waits for a lock on a mailbox row."""
    async with asyncio.timeout(20):
        while True:
            async with rt.sessions() as session:
                waiting = (
                    await session.execute(
                        text(
                            "SELECT count(*) FROM pg_locks WHERE NOT granted "
                            "AND locktype IN ('tuple', 'transactionid')"
                        )
                    )
                ).scalar_one()
            if waiting:
                return
            await asyncio.sleep(0.05)


async def test_a_message_stored_while_the_case_is_linked_is_never_missed(
    sim: Sim, live_api: LiveApi, sim_rt: Runtime
) -> None:
    account = await new_account(sim, 500, [{"address": CONTACT, "count": 40}])
    mailbox_id = await connect_via_api(live_api, "gail", connect_body(account))
    await run_worker(sim_rt)
    mid = uuid.UUID(mailbox_id)
    async with sim_rt.sessions() as session:
        stream_key, generation = (
            await session.execute(
                text("SELECT stream_key, generation FROM sync_cursors WHERE mailbox_id = :id"),
                {"id": mid},
            )
        ).first()  # type: ignore[misc]

    # A page of the mailbox is committing: it stored a new message of the contact, took
    # the mailbox row in its fence, and its link step found no case (there was none).
    arrived = "inflight-" + uuid.uuid4().hex
    message = NormalizedMessage(
        provider_message_id=arrived,
        from_=CONTACT,
        to=[account["email"]],
        received_at=datetime.now(UTC),
        subject="arrives while the case is linked",
    )
    async with sim_rt.sessions() as page:
        await page.begin()
        await MessageRepository(page).upsert_page(
            mid, stream_key, generation, MessageBatch.of([message])
        )
        await page.execute(
            text("UPDATE mailboxes SET updated_at = now() WHERE id = :id"), {"id": mid}
        )
        assert await CaseMail("full").link(page, mid, [arrived]) == []
        assert await links(sim_rt, mailbox_id) == set()

        # Meanwhile the case is created, and its query starts...
        await put_case(live_api, "gail", "g-1", mailbox_ids=[mailbox_id], contacts=[CONTACT])
        [entry] = (await entry_rows(sim_rt, mailbox_id)).values()
        linking = asyncio.create_task(CaseSearchRunner(sim_rt, "test").run_slice(entry["id"]))
        # ...and waits for the page: it must not read the store without that message.
        await _waiting_on_a_row_lock(sim_rt)
        assert not linking.done()
        await page.commit()
    result = await linking
    assert result.outcome is Outcome.COMPLETE
    expected = await contact_truth(sim, account, CONTACT) | {arrived}
    assert {m for _, m in await links(sim_rt, mailbox_id)} == expected
    case = await get_case(live_api, "gail", "g-1")
    assert entry_of(case, mailbox_id, CONTACT)["linked"] == 41


async def test_a_case_on_a_mirror_still_backfilling_completes_with_its_first_pass(
    sim: Sim, live_api: LiveApi, sim_rt: Runtime
) -> None:
    account = await new_account(sim, 4000, [{"address": CONTACT, "count": 120}])
    mailbox_id = await connect_via_api(live_api, "bea", connect_body(account))
    # The case comes before the mailbox's first pass has stored anything.
    await put_case(live_api, "bea", "b-1", mailbox_ids=[mailbox_id], contacts=[CONTACT])
    [entry] = (await entry_rows(sim_rt, mailbox_id)).values()
    early = await CaseSearchRunner(sim_rt, "test").run_slice(entry["id"])
    assert early.outcome is Outcome.AWAITING_BACKFILL
    case = await get_case(live_api, "bea", "b-1")
    assert case["status"] == "syncing"

    await run_worker(sim_rt)  # the backfill; its completed pass wakes the entry
    case = await get_case(live_api, "bea", "b-1")
    assert case["status"] == "complete", case
    assert entry_of(case, mailbox_id, CONTACT)["linked"] == 120
    assert {m for _, m in await links(sim_rt, mailbox_id)} == await contact_truth(
        sim, account, CONTACT
    )
    completions = [
        e for e in await case_events(sim_rt, mailbox_id) if e["kind"] == "case.sync_complete"
    ]
    assert len(completions) == 1
