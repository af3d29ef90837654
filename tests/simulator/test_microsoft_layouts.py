"""Simulated Exchange: where seeded messages are placed, per account (`layout`)."""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from app.simulator.server import SimulatorServer
from tests.providers.outlook.support import create_account, ground_truth, sim_client

WELL_KNOWN = ("inbox", "sentitems", "archive", "junkemail", "drafts", "deleteditems", "outbox")


@pytest.fixture
async def client(simulator: SimulatorServer) -> AsyncIterator[httpx.AsyncClient]:
    async with sim_client(simulator) as c:
        yield c


def auth(account: dict[str, Any]) -> dict[str, str]:
    return {
        "Authorization": f"Bearer {account['access_token']}",
        "Prefer": 'IdType="ImmutableId", odata.maxpagesize=97',
    }


async def folder_totals(client: httpx.AsyncClient, account: dict[str, Any]) -> dict[str, int]:
    response = await client.get(f"/_sim/microsoft/accounts/{account['user_id']}")
    assert response.status_code == 200, response.text
    return {f["display_name"]: f["total"] for f in response.json()["folders"]}


async def delta_ids(client: httpx.AsyncClient, account: dict[str, Any], folder: str) -> list[str]:
    found: list[str] = []
    link: str | None = f"/v1.0/me/mailFolders/{folder}/messages/delta"
    while link:
        response = await client.get(link, headers=auth(account))
        assert response.status_code == 200, response.text
        body = response.json()
        found += [m["id"] for m in body["value"]]
        link = body.get("@odata.nextLink")
    return found


async def window_ids(
    client: httpx.AsyncClient, account: dict[str, Any], folder: str, start: str, end: str | None
) -> list[str]:
    flt = f"receivedDateTime ge {start}" + (f" and receivedDateTime lt {end}" if end else "")
    params: dict[str, Any] | None = {
        "$filter": flt,
        "$orderby": "receivedDateTime",
        "$top": 50,
        "$select": "receivedDateTime",
    }
    link: str | None = f"/v1.0/me/mailFolders/{folder}/messages"
    found: list[str] = []
    while link:
        response = await client.get(link, params=params, headers=auth(account))
        assert response.status_code == 200, response.text
        body = response.json()
        found += [m["id"] for m in body["value"]]
        link, params = body.get("@odata.nextLink"), None
    return found


async def test_inbox_only_puts_every_seeded_message_in_the_inbox(
    client: httpx.AsyncClient,
) -> None:
    account = await create_account(client, message_count=600, seed=11, layout="inbox_only")
    assert account["layout"] == "inbox_only"
    totals = await folder_totals(client, account)
    assert totals["Inbox"] == 600
    assert sum(totals.values()) == 600
    headers = auth(account)
    for name in WELL_KNOWN:
        response = await client.get(f"/v1.0/me/mailFolders/{name}", headers=headers)
        assert response.status_code == 200, response.text
        assert response.json()["totalItemCount"] == (600 if name == "inbox" else 0)
    truth = await ground_truth(client, account["user_id"])
    assert Counter(m["well_known_name"] for m in truth) == Counter({"inbox": 600})
    unread = (await client.get("/v1.0/me/mailFolders/inbox", headers=headers)).json()
    assert unread["unreadItemCount"] == sum(1 for m in truth if not m["is_read"])


async def test_inbox_only_delta_and_windows_list_the_same_messages(
    client: httpx.AsyncClient,
) -> None:
    account = await create_account(client, message_count=500, seed=12, layout="inbox_only")
    truth = {m["id"]: m for m in await ground_truth(client, account["user_id"], "inbox")}
    assert len(truth) == 500
    delta = await delta_ids(client, account, "inbox")
    assert len(delta) == len(set(delta)) == 500
    assert set(delta) == set(truth)
    received = sorted(m["received_at"] for m in truth.values())
    cut = received[len(received) // 2]
    early = await window_ids(client, account, "inbox", "1900-01-01T00:00:00Z", cut)
    late = await window_ids(client, account, "inbox", cut, None)
    assert all(truth[i]["received_at"] < cut for i in early)
    assert all(truth[i]["received_at"] >= cut for i in late)
    assert len(early) + len(late) == 500
    assert set(early) | set(late) == set(truth)
    for name in ("sentitems", "archive", "drafts"):
        assert await delta_ids(client, account, name) == []
        assert await window_ids(client, account, name, "1900-01-01T00:00:00Z", None) == []


async def test_the_default_layout_is_unchanged_by_the_option(client: httpx.AsyncClient) -> None:
    implicit = await create_account(client, message_count=1000, seed=13)
    explicit = await create_account(client, message_count=1000, seed=13, layout="default")
    assert implicit["layout"] == explicit["layout"] == "default"
    totals = await folder_totals(client, implicit)
    assert totals == await folder_totals(client, explicit)
    assert sum(totals.values()) == 1000
    # Spread over the folders by their shares (Inbox about 64%), none holding everything.
    assert 550 < totals["Inbox"] < 730
    assert totals["Sent Items"] > 60 and totals["Archive"] > 40
    truth = await ground_truth(client, implicit["user_id"])
    by_folder = Counter(m["folder"] for m in truth)
    assert {k: v for k, v in totals.items() if v} == dict(by_folder)


async def test_an_unknown_layout_is_refused(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/_sim/microsoft/accounts",
        json={"email": "layout-nope@contoso.com", "layout": "everything_in_junk"},
    )
    assert response.status_code == 422
