"""Case mail in an Outlook mailbox connected for cases only: Graph `$search` windows, the
1,000-result cap, tokens at use time, a revoked grant and a reconnect, new mail."""

from __future__ import annotations

import asyncio
import math
import uuid
from typing import Any

from sqlalchemy import text

from app.sync.cases.jobs import schedule_cases
from app.sync.cases.runner import CaseSearchRunner, Outcome
from app.sync.runtime import Runtime
from tests.conftest import LiveApi, run_worker
from tests.e2e.cases_support import (
    CONTACT,
    OTHER,
    case_events,
    case_message_ids,
    entry_of,
    entry_rows,
    get_case,
    linked_by_events,
    links,
    message_events,
    put_case,
    stored_ids,
)
from tests.e2e.support import Sim, connect_via_api, status_of, unique_email

FIVE_YEARS_OF_SEVEN = 2 / 7  # the corpus spans seven years; the contact the last five


async def new_account(sim: Sim, count: int, contacts: list[dict[str, Any]]) -> dict[str, Any]:
    return dict(
        await sim.call(
            "POST",
            "/_sim/microsoft/accounts",
            json={"email": unique_email("cases"), "message_count": count, "contacts": contacts},
        )
    )


def connect_body(account: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {
        "provider": "microsoft",
        "access_token": account["access_token"],
        "refresh_token": account["refresh_token"],
        "expires_in": account["expires_in"],
        "email": account["email"],
        "scope": "cases",
        **extra,
    }


def _tokens(grant: dict[str, Any]) -> dict[str, Any]:
    return {k: grant[k] for k in ("access_token", "refresh_token", "expires_in")}


async def contact_truth(sim: Sim, account: dict[str, Any], address: str) -> set[str]:
    body = await sim.call("GET", f"/_sim/microsoft/accounts/{account['email']}/contacts/{address}")
    return set(body["ids"])


async def test_a_contacts_history_is_found_and_nothing_else_is_stored(
    sim: Sim, live_api: LiveApi, sim_rt: Runtime
) -> None:
    account = await new_account(
        sim, 50_000, [{"address": CONTACT, "count": 2500, "first": FIVE_YEARS_OF_SEVEN}]
    )
    mailbox_id = await connect_via_api(live_api, "carla", connect_body(account))
    await run_worker(sim_rt)
    # The mailbox's own pass enumerated every folder and kept nothing: no case yet.
    status = await status_of(live_api, "carla")
    assert status["status"] == "connected" and status["scope"] == "cases"
    assert await stored_ids(sim_rt, mailbox_id) == set()

    created = await put_case(
        live_api, "carla", "matter-1", mailbox_ids=[mailbox_id], contacts=[CONTACT]
    )
    assert created["status"] == "pending"
    await run_worker(sim_rt)

    expected = await contact_truth(sim, account, CONTACT)
    assert len(expected) == 2500
    case = await get_case(live_api, "carla", "matter-1")
    assert case["status"] == "complete", case
    entry = entry_of(case, mailbox_id, CONTACT)
    assert entry == {
        "email": CONTACT,
        "status": "complete",
        "found": 2500,
        "linked": 2500,
        "estimate": 2500,
        "last_error": None,
    }
    assert await stored_ids(sim_rt, mailbox_id) == expected  # all of it, nothing else
    assert set(await case_message_ids(live_api, "carla", "matter-1")) == expected

    # Windows were cut at the cap, and the search cost at most two requests per page of
    # results it needed, plus one per capped window.
    row = (await entry_rows(sim_rt, mailbox_id))[CONTACT]
    capped = row["plan"]["capped"]
    pages_needed = math.ceil(2500 / 1000)
    assert capped >= 1
    assert row["requests"] <= 2 * pages_needed + capped, row["requests"]
    assert row["plan"]["windows"] == []

    events = await case_events(sim_rt, mailbox_id)
    assert sorted(linked_by_events(events, "matter-1")) == sorted(expected)
    # What the search stored reaches event consumers like any new mail, once each.
    received, deleted = await message_events(sim_rt, mailbox_id)
    assert sorted(received) == sorted(expected) and deleted == []
    [complete] = [e for e in events if e["kind"] == "case.sync_complete"]
    assert complete["payload"]["case_id"] == "matter-1"
    assert complete["payload"]["user_id"] == "carla"


async def test_new_mail_is_stored_only_when_it_involves_a_case_contact(
    sim: Sim, live_api: LiveApi, sim_rt: Runtime
) -> None:
    account = await new_account(sim, 600, [{"address": CONTACT, "count": 40}])
    mailbox_id = await connect_via_api(live_api, "nora", connect_body(account))
    await put_case(live_api, "nora", "m-2", mailbox_ids=[mailbox_id], contacts=[CONTACT])
    await run_worker(sim_rt)
    assert len(await stored_ids(sim_rt, mailbox_id)) == 40

    email = account["email"]
    for sender in (CONTACT, "stranger@elsewhere.example"):
        await sim.call(
            "POST",
            f"/_sim/microsoft/accounts/{email}/messages",
            json={"folder": "inbox", "count": 2, "from_address": sender},
        )
    async with sim_rt.sessions() as session, session.begin():
        await session.execute(
            text("UPDATE mailboxes SET next_sync_at = now() WHERE id = :id"),
            {"id": uuid.UUID(mailbox_id)},
        )
    from app.sync.jobs import schedule

    await schedule({"rt": sim_rt})
    await run_worker(sim_rt)

    expected = await contact_truth(sim, account, CONTACT)
    assert len(expected) == 42
    assert await stored_ids(sim_rt, mailbox_id) == expected
    assert {m for _, m in await links(sim_rt, mailbox_id)} == expected
    case = await get_case(live_api, "nora", "m-2")
    assert entry_of(case, mailbox_id, CONTACT)["linked"] == 42


async def test_a_job_that_waited_longer_than_the_token_lives_completes(
    sim: Sim, live_api: LiveApi, sim_rt: Runtime
) -> None:
    account = await new_account(sim, 3000, [{"address": CONTACT, "count": 300}])
    mailbox_id = await connect_via_api(live_api, "tom", connect_body(account))
    await run_worker(sim_rt)
    await put_case(live_api, "tom", "m-3", mailbox_ids=[mailbox_id], contacts=[CONTACT])
    # The job waits in the queue for hours: the token it would have carried is long dead,
    # at Microsoft and in the store.
    await sim.call("POST", f"/_sim/microsoft/accounts/{account['user_id']}/access-tokens/expire")
    async with sim_rt.sessions() as session, session.begin():
        await session.execute(
            text(
                "UPDATE credentials SET access_expires_at = now() - interval '2 hours' "
                "WHERE mailbox_id = :id"
            ),
            {"id": uuid.UUID(mailbox_id)},
        )
    await sim.call("POST", "/_sim/counters/reset")
    await run_worker(sim_rt)

    case = await get_case(live_api, "tom", "m-3")
    assert case["status"] == "complete", case
    assert entry_of(case, mailbox_id, CONTACT)["linked"] == 300
    counters = await sim.counters(account["counter_key"])
    assert counters["token_refreshes"] >= 1


async def test_a_revoked_grant_parks_the_search_and_a_reconnect_resumes_it_exactly(
    sim: Sim, live_api: LiveApi, sim_rt: Runtime
) -> None:
    account = await new_account(sim, 8000, [{"address": CONTACT, "count": 2500}])
    mailbox_id = await connect_via_api(live_api, "ruth", connect_body(account))
    await run_worker(sim_rt)
    await put_case(live_api, "ruth", "m-4", mailbox_ids=[mailbox_id], contacts=[CONTACT])
    [entry_id] = [r["id"] for r in (await entry_rows(sim_rt, mailbox_id)).values()]

    runner = CaseSearchRunner(sim_rt, "test-worker", max_pages=2)
    first = await runner.run_slice(entry_id)
    assert first.outcome is Outcome.CONTINUE
    halfway = await stored_ids(sim_rt, mailbox_id)
    assert 0 < len(halfway) < 2500

    await sim.call(
        "POST", f"/_sim/microsoft/accounts/{account['email']}/revoke", json={"access_tokens": True}
    )
    parked = await runner.run_slice(entry_id)
    assert parked.outcome is Outcome.AUTH_EXPIRED
    case = await get_case(live_api, "ruth", "m-4")
    assert case["status"] == "auth_expired"
    entry = entry_of(case, mailbox_id, CONTACT)
    assert entry["status"] == "auth_expired"
    assert "reconnect the mailbox" in entry["last_error"]
    assert "AADSTS" in entry["last_error"]

    grant = await sim.call("POST", f"/_sim/microsoft/accounts/{account['email']}/grants")
    await connect_via_api(live_api, "ruth", connect_body(account | _tokens(grant)))
    await run_worker(sim_rt)

    expected = await contact_truth(sim, account, CONTACT)
    case = await get_case(live_api, "ruth", "m-4")
    assert case["status"] == "complete", case
    assert entry_of(case, mailbox_id, CONTACT)["linked"] == 2500
    assert await stored_ids(sim_rt, mailbox_id) == expected
    assert len(await links(sim_rt, mailbox_id)) == 2500
    row = (await entry_rows(sim_rt, mailbox_id))[CONTACT]
    # Resumed where it stopped: with the pages searched before the revocation, the whole
    # search still took no more requests than an uninterrupted one may.
    assert row["requests"] <= 2 * 3 + row["plan"]["capped"]
    events = await case_events(sim_rt, mailbox_id)
    linked = linked_by_events(events, "m-4")
    assert len(linked) == len(set(linked)) == 2500  # every link announced exactly once


async def test_a_message_of_two_contacts_is_stored_once_and_linked_to_both(
    sim: Sim, live_api: LiveApi, sim_rt: Runtime
) -> None:
    account = await new_account(
        sim, 2000, [{"address": CONTACT, "count": 700}, {"address": OTHER, "count": 700}]
    )
    mailbox_id = await connect_via_api(live_api, "ivy", connect_body(account))
    await put_case(live_api, "ivy", "m-5", mailbox_ids=[mailbox_id], contacts=[CONTACT, OTHER])
    await run_worker(sim_rt)
    mine = await contact_truth(sim, account, CONTACT)
    theirs = await contact_truth(sim, account, OTHER)
    both = mine & theirs
    assert both  # planted independently: some messages hold both
    assert await stored_ids(sim_rt, mailbox_id) == mine | theirs
    stored_links = await links(sim_rt, mailbox_id)
    assert {m for c, m in stored_links if c == CONTACT} == mine
    assert {m for c, m in stored_links if c == OTHER} == theirs
    assert set(await case_message_ids(live_api, "ivy", "m-5")) == mine | theirs


async def test_an_app_only_mailbox_searches_with_client_credentials(
    sim: Sim, live_api: LiveApi, sim_rt: Runtime
) -> None:
    account = await new_account(sim, 2000, [{"address": CONTACT, "count": 150}])
    live_api.settings.microsoft_app_only_tenants = account["tenant_id"]
    body = {
        "provider": "microsoft",
        "auth": "application",
        "tenant_id": account["tenant_id"],
        "email": account["email"],
        "scope": "cases",
    }
    mailbox_id = await connect_via_api(live_api, "ops", body, roles=["mailsync.operator"])
    await put_case(live_api, "ops", "m-6", mailbox_ids=[mailbox_id], contacts=[CONTACT])
    await run_worker(sim_rt)
    case = await get_case(live_api, "ops", "m-6")
    assert case["status"] == "complete", case
    assert await stored_ids(sim_rt, mailbox_id) == await contact_truth(sim, account, CONTACT)


async def test_a_dead_workers_search_is_resumed_by_the_scheduler_and_a_twin_job_waits(
    sim: Sim, live_api: LiveApi, sim_rt: Runtime
) -> None:
    account = await new_account(sim, 6000, [{"address": CONTACT, "count": 1800}])
    mailbox_id = await connect_via_api(live_api, "dora", connect_body(account))
    await run_worker(sim_rt)
    await put_case(live_api, "dora", "m-7", mailbox_ids=[mailbox_id], contacts=[CONTACT])
    [entry_id] = [r["id"] for r in (await entry_rows(sim_rt, mailbox_id)).values()]

    # The same job twice at once (ARQ may run a job twice): one searches, the other waits.
    first, twin = await asyncio.gather(
        CaseSearchRunner(sim_rt, "worker-a", max_pages=1).run_slice(entry_id),
        CaseSearchRunner(sim_rt, "worker-b", max_pages=1).run_slice(entry_id),
    )
    assert sorted([first.outcome, twin.outcome]) == sorted([Outcome.CONTINUE, Outcome.BUSY])

    # A worker takes the entry and dies mid-slice: its lease lapses with it.
    async with sim_rt.sessions() as session, session.begin():
        await session.execute(
            text(
                "UPDATE case_searches SET lease_owner = 'dead-worker', "
                "lease_expires_at = now() - interval '1 second', fencing_token = fencing_token + 1 "
                "WHERE id = :id"
            ),
            {"id": entry_id},
        )
    await sim_rt.redis.flushdb()  # and its queued continuation is gone too
    scheduled = await schedule_cases({"rt": sim_rt})
    assert scheduled["lapsed"] == 1
    await run_worker(sim_rt)

    case = await get_case(live_api, "dora", "m-7")
    assert case["status"] == "complete", case
    assert await stored_ids(sim_rt, mailbox_id) == await contact_truth(sim, account, CONTACT)
    assert len(await links(sim_rt, mailbox_id)) == 1800
