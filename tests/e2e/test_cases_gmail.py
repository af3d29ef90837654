"""Case mail in a Gmail mailbox connected for cases only: `messages.list?q=` paged within the
quota, no enumeration of the mailbox, new mail from history."""

from __future__ import annotations

import math
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from sqlalchemy import text

from app.providers.gmail.quota import QUOTA_UNITS
from app.providers.gmail.search import SEARCH_PAGE_SIZE
from app.simulator.server import SimulatorServer
from app.sync.jobs import schedule
from app.sync.runtime import Runtime
from tests.conftest import LiveApi, run_worker
from tests.e2e.cases_support import (
    CONTACT,
    case_events,
    case_message_ids,
    entry_of,
    get_case,
    linked_by_events,
    links,
    put_case,
    stored_ids,
)
from tests.e2e.support import Sim, connect_via_api, sim_session, status_of, unique_email

# Fast enough for a test, but a real quota: every unit the search spends is counted.
QUOTA = 5000


@pytest.fixture
async def sim(simulator: SimulatorServer) -> AsyncIterator[Sim]:
    async with sim_session(simulator, faults={"gmail_quota_units_per_second": QUOTA}) as client:
        yield client


@pytest.fixture
def gmail_rt(sim_rt: Runtime) -> Runtime:
    sim_rt.settings = sim_rt.settings.model_copy(update={"gmail_quota_units_per_second": QUOTA})
    return sim_rt


async def new_account(sim: Sim, messages: int, contacts: list[dict[str, Any]]) -> dict[str, Any]:
    return dict(
        await sim.call(
            "POST",
            "/_sim/google/accounts",
            json={
                "email": unique_email("gcases", "example.com"),
                "messages": messages,
                "seed": 5,
                "contacts": contacts,
            },
        )
    )


def connect_body(account: dict[str, Any]) -> dict[str, Any]:
    return {
        "provider": "google",
        "access_token": account["access_token"],
        "refresh_token": account["refresh_token"],
        "expires_in": account["expires_in"],
        "email": account["email"],
        "scope": "cases",
    }


async def contact_truth(sim: Sim, account: dict[str, Any], address: str) -> set[str]:
    body = await sim.call("GET", f"/_sim/google/accounts/{account['email']}/contacts/{address}")
    return set(body["ids"])


async def test_a_contacts_history_is_found_within_the_quota_and_nothing_else_is_stored(
    sim: Sim, live_api: LiveApi, gmail_rt: Runtime
) -> None:
    account = await new_account(sim, 50_000, [{"address": CONTACT, "count": 2500, "first": 2 / 7}])
    mailbox_id = await connect_via_api(live_api, "gita", connect_body(account))
    await run_worker(gmail_rt)
    status = await status_of(live_api, "gita")
    assert status["status"] == "connected" and status["scope"] == "cases"
    # A cases-only Gmail mailbox follows history from now on: 50,000 messages, no gets.
    before = await sim.counters(account["counter_key"])
    assert before["quota_units"] < 200, before
    assert await stored_ids(gmail_rt, mailbox_id) == set()

    await put_case(live_api, "gita", "claim-7", mailbox_ids=[mailbox_id], contacts=[CONTACT])
    await run_worker(gmail_rt)

    expected = await contact_truth(sim, account, CONTACT)
    assert len(expected) == 2500
    case = await get_case(live_api, "gita", "claim-7")
    assert case["status"] == "complete", case
    entry = entry_of(case, mailbox_id, CONTACT)
    assert (entry["found"], entry["linked"], entry["estimate"]) == (2500, 2500, 2500)
    assert await stored_ids(gmail_rt, mailbox_id) == expected
    assert set(await case_message_ids(live_api, "gita", "claim-7")) == expected
    # Within the quota, and spending it on nothing but the contact's mail: the units used
    # are at least 0.9 of what the search needs at the least (its listings and one
    # metadata get per message). A client at the ceiling (here 1,000 gets a second) meets
    # a refusal when requests reach Gmail bunched by jitter, as with Google: refusals stay
    # rare, and each refused request was sent again (the result above is exact).
    after = await sim.counters(account["counter_key"])
    needed = (
        2500 * QUOTA_UNITS["users.messages.get"]
        + math.ceil(2500 / SEARCH_PAGE_SIZE) * QUOTA_UNITS["users.messages.list"]
    )
    spent = after["quota_units"] - before["quota_units"]
    assert needed <= spent <= needed / 0.9, (spent, needed)
    refused = after["throttled"] - before["throttled"]
    assert refused <= 0.02 * (after["requests"] - before["requests"]), (refused, after)
    events = await case_events(gmail_rt, mailbox_id)
    assert sorted(linked_by_events(events, "claim-7")) == sorted(expected)


async def test_new_mail_comes_from_history_and_only_a_contacts_is_kept(
    sim: Sim, live_api: LiveApi, gmail_rt: Runtime
) -> None:
    account = await new_account(sim, 800, [{"address": CONTACT, "count": 30}])
    mailbox_id = await connect_via_api(live_api, "hana", connect_body(account))
    await put_case(live_api, "hana", "c-1", mailbox_ids=[mailbox_id], contacts=[CONTACT])
    await run_worker(gmail_rt)
    assert len(await stored_ids(gmail_rt, mailbox_id)) == 30

    email = account["email"]
    await sim.call(
        "POST",
        f"/_sim/google/accounts/{email}/messages",
        json={"count": 2, "from": f"Counsel <{CONTACT}>"},
    )
    await sim.call(
        "POST",
        f"/_sim/google/accounts/{email}/messages",
        json={"count": 1, "from": "Someone <someone@elsewhere.example>", "cc": [CONTACT]},
    )
    await sim.call(
        "POST",
        f"/_sim/google/accounts/{email}/messages",
        json={"count": 3, "from": "Stranger <stranger@elsewhere.example>"},
    )
    async with gmail_rt.sessions() as session, session.begin():
        await session.execute(
            text("UPDATE mailboxes SET next_sync_at = now() WHERE id = :id"),
            {"id": uuid.UUID(mailbox_id)},
        )
    await schedule({"rt": gmail_rt})
    await run_worker(gmail_rt)

    expected = await contact_truth(sim, account, CONTACT)
    assert len(expected) == 33
    assert await stored_ids(gmail_rt, mailbox_id) == expected
    assert {m for _, m in await links(gmail_rt, mailbox_id)} == expected
    case = await get_case(live_api, "hana", "c-1")
    assert entry_of(case, mailbox_id, CONTACT)["linked"] == 33
