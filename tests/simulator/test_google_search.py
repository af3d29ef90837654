"""Gmail `q` as the simulator reads it: from/to/cc/bcc, OR, parentheses, after/before."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from app.simulator.server import SimulatorServer
from tests.providers.gmail.sim import GoogleSim, SimAccount, google_sim

BASE = "/gmail/v1/users/me"
CONTACT = "counsel@lawfirm.example"


@pytest.fixture
async def sim(simulator: SimulatorServer) -> AsyncIterator[GoogleSim]:
    async with google_sim(simulator) as client:
        yield client


async def pages(sim: GoogleSim, account: SimAccount, **params: Any) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    token = None
    while True:
        query = {**params, **({"pageToken": token} if token else {})}
        response = await sim.http.get(f"{BASE}/messages", params=query, headers=account.auth)
        assert response.status_code == 200, response.text
        found.append(response.json())
        token = found[-1].get("nextPageToken")
        if not token:
            return found


def ids(listing: list[dict[str, Any]]) -> list[str]:
    return [m["id"] for page in listing for m in page.get("messages", [])]


def involves(message: dict[str, Any], address: str) -> bool:
    return address in message["from"] or address in {*message["to"], *message["cc"]}


async def test_a_planted_contact_is_listed_in_full_pages_with_an_exact_estimate(
    sim: GoogleSim,
) -> None:
    account = await sim.create_account(
        messages=6000, contacts=[{"address": CONTACT, "count": 1200, "first": 0.25}]
    )
    truth = await sim.truth(account.email)
    expected = [m["id"] for m in truth if involves(m, CONTACT)]
    assert len(expected) == 1200
    q = f"(from:{CONTACT} OR to:{CONTACT} OR cc:{CONTACT} OR bcc:{CONTACT})"
    listing = await pages(sim, account, q=q, maxResults=500, includeSpamTrash="true")
    assert ids(listing) == expected  # newest first, nothing else
    assert [len(p.get("messages", [])) for p in listing] == [500, 500, 200]
    assert all(p["resultSizeEstimate"] == 1200 for p in listing)
    # Sent mail lists the contact as a recipient, not as its sender.
    sent = [m for m in truth if m["id"] in set(expected) and "SENT" in m["labelIds"]]
    assert sent and all(CONTACT in {*m["to"], *m["cc"]} for m in sent)


async def test_or_groups_and_date_bounds(sim: GoogleSim) -> None:
    account = await sim.create_account(messages=2000, contacts=[{"address": CONTACT, "count": 300}])
    truth = await sim.truth(account.email)
    mine = [m for m in truth if involves(m, CONTACT)]
    dates = sorted(int(m["internalDate"]) // 1000 for m in mine)
    after, before = dates[50], dates[250]
    q = f"(from:{CONTACT} OR cc:{CONTACT}) after:{after} before:{before}"
    listing = await pages(sim, account, q=q, maxResults=500, includeSpamTrash="true")
    assert ids(listing) == [
        m["id"]
        for m in mine
        if (CONTACT in m["from"] or CONTACT in m["cc"])
        and after * 1000 <= int(m["internalDate"]) < before * 1000
    ]
    # OR binds tighter than the implied AND: "a b OR c" is "a AND (b OR c)".
    subject_word = "invoice"
    loose = await pages(
        sim, account, q=f"from:{CONTACT} {subject_word} OR cc:{CONTACT}", includeSpamTrash="true"
    )
    assert set(ids(loose)) == {
        m["id"]
        for m in mine
        if CONTACT in m["from"]
        and (
            subject_word in m["subject"].lower()
            or subject_word in m["snippet"].lower()
            or CONTACT in m["cc"]
        )
    }


async def test_bad_queries_are_400(sim: GoogleSim) -> None:
    account = await sim.create_account(messages=10)
    for bad in ("(from:a@b.example", "from:a@b.example)", 'subject:"open'):
        response = await sim.http.get(f"{BASE}/messages", params={"q": bad}, headers=account.auth)
        assert response.status_code == 400, bad
