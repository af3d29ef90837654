"""Simulated Graph `$search` on messages: KQL, the 1,000-result cap, sent-date order, refusals."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from app.simulator.server import SimulatorServer
from tests.providers.outlook.support import create_account, ground_truth, sim_client

CONTACT = "counsel@lawfirm.example"
SELECT = "receivedDateTime,sentDateTime,from,toRecipients,ccRecipients,parentFolderId"


@pytest.fixture
async def client(simulator: SimulatorServer) -> AsyncIterator[httpx.AsyncClient]:
    async with sim_client(simulator) as c:
        yield c


def auth(account: dict[str, Any]) -> dict[str, str]:
    return {"Authorization": f"Bearer {account['access_token']}"}


def participants(message: dict[str, Any]) -> set[str]:
    people = [
        message.get("from"),
        *message.get("toRecipients", []),
        *message.get("ccRecipients", []),
    ]
    return {p["emailAddress"]["address"].lower() for p in people if p}


async def search_all(
    client: httpx.AsyncClient, account: dict[str, Any], query: str, top: int = 1000
) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    response = await client.get(
        "/v1.0/me/messages",
        params={"$search": f'"{query}"', "$top": top, "$select": SELECT},
        headers=auth(account) | {"Prefer": 'IdType="ImmutableId"'},
    )
    while True:
        assert response.status_code == 200, response.text
        body = response.json()
        found += body["value"]
        link = body.get("@odata.nextLink")
        if not link:
            return found
        assert "$skiptoken=" in link and "$skip=" not in link
        response = await client.get(
            link, headers=auth(account) | {"Prefer": 'IdType="ImmutableId"'}
        )


async def test_participants_search_is_capped_at_1000_newest_sent_first(
    client: httpx.AsyncClient,
) -> None:
    account = await create_account(
        client, message_count=4000, contacts=[{"address": CONTACT, "count": 1300}]
    )
    assert account["planted"] == {CONTACT: 1300}
    truth = [m for m in await ground_truth(client, account["user_id"]) if _involves(m, CONTACT)]
    assert len(truth) == 1300

    found = await search_all(client, account, f"participants:{CONTACT}", top=300)
    assert len(found) == 1000  # the cap, across four pages
    assert all(CONTACT in participants(m) for m in found)
    sent = [m["sentDateTime"] for m in found]
    assert sent == sorted(sent, reverse=True)
    newest = sorted(truth, key=lambda m: m["received_at"], reverse=True)[:1000]
    assert {m["id"] for m in found} == {m["id"] for m in newest}


async def test_received_windows_and_or_select_exactly(client: httpx.AsyncClient) -> None:
    account = await create_account(
        client, message_count=3000, contacts=[{"address": CONTACT, "count": 600}]
    )
    truth = [m for m in await ground_truth(client, account["user_id"]) if _involves(m, CONTACT)]
    dates = sorted(m["received_at"] for m in truth)
    low, high = dates[100], dates[400]
    window = await search_all(
        client, account, f"participants:{CONTACT} AND received>={low} AND received<{high}"
    )
    assert {m["id"] for m in window} == {m["id"] for m in truth if low <= m["received_at"] < high}

    senders = await search_all(client, account, f"from:{CONTACT}")
    recipients = await search_all(client, account, f"to:{CONTACT}")
    either = await search_all(client, account, f"(from:{CONTACT} OR to:{CONTACT})")
    assert senders and recipients
    assert {m["id"] for m in either} == {m["id"] for m in senders} | {m["id"] for m in recipients}
    assert all(m["from"]["emailAddress"]["address"] == CONTACT for m in senders)


async def test_a_generated_address_is_found_by_scanning(client: httpx.AsyncClient) -> None:
    account = await create_account(client, message_count=400)
    truth = await ground_truth(client, account["user_id"])
    someone = truth[0]["cc"][0] if truth[0]["cc"] else truth[0]["from"]
    found = await search_all(client, account, f"participants:{someone}")
    assert {m["id"] for m in found} == {m["id"] for m in truth if _involves(m, someone)}


@pytest.mark.parametrize(
    ("extra", "word"),
    [
        ({"$orderby": "receivedDateTime desc"}, "$orderBy"),
        ({"$count": "true"}, "$count"),
        ({"$skip": "10"}, "$skip"),
        ({"$filter": "isRead eq true"}, "$filter"),
    ],
)
async def test_search_refuses_what_graph_refuses(
    client: httpx.AsyncClient, extra: dict[str, str], word: str
) -> None:
    account = await create_account(client, message_count=20)
    response = await client.get(
        "/v1.0/me/messages",
        params={"$search": '"participants:a@b.example"', **extra},
        headers=auth(account),
    )
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "BadRequest"
    assert f"'{word}' is not supported with '$search'" in error["message"]


async def test_malformed_searches_are_400(client: httpx.AsyncClient) -> None:
    account = await create_account(client, message_count=20)
    for bad in ("participants:a@b.example", '"received>=not-a-date"', '"(subject:x"'):
        response = await client.get(
            "/v1.0/me/messages", params={"$search": bad}, headers=auth(account)
        )
        assert response.status_code == 400, bad


def _involves(message: dict[str, Any], address: str) -> bool:
    return address in {message["from"], *message["to"], *message["cc"]}
