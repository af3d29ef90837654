"""Simulated Graph: folder listings by receivedDateTime window, $orderby rules, and
`messages/delta?$deltatoken=latest`, as a partitioned backfill uses them."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from app.simulator.server import SimulatorServer
from tests.providers.outlook.support import create_account, ground_truth, sim_client


@pytest.fixture
async def client(simulator: SimulatorServer) -> AsyncIterator[httpx.AsyncClient]:
    async with sim_client(simulator) as c:
        yield c


def auth(account: dict[str, Any]) -> dict[str, str]:
    return {"Authorization": f"Bearer {account['access_token']}", "Prefer": 'IdType="ImmutableId"'}


async def window(
    client: httpx.AsyncClient, account: dict[str, Any], start: str, end: str | None
) -> list[dict[str, Any]]:
    flt = f"receivedDateTime ge {start}" + (f" and receivedDateTime lt {end}" if end else "")
    params: dict[str, Any] | None = {
        "$filter": flt,
        "$orderby": "receivedDateTime",
        "$top": 7,
        "$select": "receivedDateTime,subject",
    }
    link = "/v1.0/me/mailFolders/inbox/messages"
    found: list[dict[str, Any]] = []
    while link:
        response = await client.get(link, params=params, headers=auth(account))
        assert response.status_code == 200, response.text
        body = response.json()
        found += body["value"]
        link, params = body.get("@odata.nextLink"), None
    return found


async def test_windows_partition_a_folder_exactly_in_received_order(
    client: httpx.AsyncClient,
) -> None:
    account = await create_account(client, message_count=400)
    truth = await ground_truth(client, account["user_id"], "inbox")
    received = sorted(m["received_at"] for m in truth)
    assert len(received) > 60
    cut_a, cut_b = received[len(received) // 3], received[2 * len(received) // 3]
    first = await window(client, account, "1900-01-01T00:00:00Z", cut_a)
    middle = await window(client, account, cut_a, cut_b)
    last = await window(client, account, cut_b, None)
    for part in (first, middle, last):
        dates = [m["receivedDateTime"] for m in part]
        assert dates == sorted(dates)
    assert all(m["receivedDateTime"] < cut_a for m in first)
    assert all(cut_a <= m["receivedDateTime"] < cut_b for m in middle)
    ids = [m["id"] for m in first + middle + last]
    assert len(ids) == len(set(ids))
    assert set(ids) == {m["id"] for m in truth}


async def test_orderby_needs_its_property_first_in_the_filter(client: httpx.AsyncClient) -> None:
    account = await create_account(client, message_count=20)
    refused = await client.get(
        "/v1.0/me/mailFolders/inbox/messages",
        params={"$filter": "isRead eq false", "$orderby": "receivedDateTime"},
        headers=auth(account),
    )
    assert refused.status_code == 400
    assert refused.json()["error"]["code"] == "InefficientFilter"
    second = await client.get(
        "/v1.0/me/mailFolders/inbox/messages",
        params={
            "$filter": "isRead eq false and receivedDateTime ge 1900-01-01T00:00:00Z",
            "$orderby": "receivedDateTime",
        },
        headers=auth(account),
    )
    assert second.status_code == 400
    assert second.json()["error"]["code"] == "InefficientFilter"
    accepted = await client.get(
        "/v1.0/me/mailFolders/inbox/messages",
        params={
            "$filter": "receivedDateTime ge 1900-01-01T00:00:00Z and isRead eq false",
            "$orderby": "receivedDateTime",
        },
        headers=auth(account),
    )
    assert accepted.status_code == 200
    assert all(m["isRead"] is False for m in accepted.json()["value"])


async def test_latest_delta_token_returns_nothing_and_follows_later_changes(
    client: httpx.AsyncClient,
) -> None:
    account = await create_account(client, message_count=50)
    headers = auth(account)
    inbox = await ground_truth(client, account["user_id"], "inbox")
    latest = await client.get(
        "/v1.0/me/mailFolders/inbox/messages/delta",
        params={"$deltatoken": "latest", "$select": "subject"},
        headers=headers,
    )
    assert latest.status_code == 200
    body = latest.json()
    assert body["value"] == []
    assert "@odata.nextLink" not in body
    added = await client.post(
        f"/_sim/microsoft/accounts/{account['user_id']}/messages",
        json={"folder": "inbox", "count": 1},
    )
    assert added.status_code == 201, added.text
    await client.post(
        f"/_sim/microsoft/accounts/{account['user_id']}/messages/delete",
        json={"ids": [inbox[0]["id"]]},
    )
    changes = (await client.get(body["@odata.deltaLink"], headers=headers)).json()
    removed = [m["id"] for m in changes["value"] if "@removed" in m]
    present = [m for m in changes["value"] if "@removed" not in m]
    assert removed == [inbox[0]["id"]]
    assert len(present) == 1
    assert set(present[0]) >= {"id", "subject"}


async def test_a_prerendered_folder_lists_its_windows_as_before(client: httpx.AsyncClient) -> None:
    account = await create_account(client, message_count=300)
    select = "subject,receivedDateTime,isRead,categories"
    params = {
        "$filter": "receivedDateTime ge 1900-01-01T00:00:00Z",
        "$orderby": "receivedDateTime",
        "$top": 1000,
        "$select": select,
    }
    before = await client.get(
        "/v1.0/me/mailFolders/inbox/messages", params=params, headers=auth(account)
    )
    rendered = await client.post(
        f"/_sim/microsoft/accounts/{account['user_id']}/prerender",
        json={"select": select, "immutable": True},
    )
    assert rendered.status_code == 200, rendered.text
    after = await client.get(
        "/v1.0/me/mailFolders/inbox/messages", params=params, headers=auth(account)
    )
    assert after.json()["value"] == before.json()["value"]
    assert len(after.json()["value"]) > 100


async def _page(
    client: httpx.AsyncClient, account: dict[str, Any], link: str, params: dict[str, Any] | None
) -> dict[str, Any]:
    response = await client.get(link, params=params, headers=auth(account))
    assert response.status_code == 200, response.text
    return dict(response.json())


@pytest.mark.parametrize("order", ["receivedDateTime", "receivedDateTime desc"])
async def test_skip_pages_count_from_the_window_start_even_after_a_change_between_pages(
    client: httpx.AsyncClient, order: str
) -> None:
    """The simulator resumes a page where the previous one stopped while nothing changed;
    its pages are always what counting $skip items from the window's start gives."""
    account = await create_account(client, message_count=400)
    user = account["user_id"]
    truth = await ground_truth(client, user, "inbox")
    received = sorted(m["received_at"] for m in truth)
    start, end = received[10], received[-10]
    link = "/v1.0/me/mailFolders/inbox/messages"
    base = {
        "$filter": f"receivedDateTime ge {start} and receivedDateTime lt {end}",
        "$orderby": order,
        "$select": "receivedDateTime,subject",
    }

    async def whole() -> list[str]:
        body = await _page(client, account, link, {**base, "$top": 1000})
        assert "@odata.nextLink" not in body
        return [m["id"] for m in body["value"]]

    before = await whole()
    paged: list[str] = []
    body = await _page(client, account, link, {**base, "$top": 9})
    for _ in range(3):
        paged += [m["id"] for m in body["value"]]
        body = await _page(client, account, body["@odata.nextLink"], None)
    paged += [m["id"] for m in body["value"]]
    assert paged == before[: len(paged)] and len(paged) == 36

    # A message of the window's first page leaves the folder: offset paging now counts
    # from the start again, so the next page starts one item later than before.
    moved = await client.post(
        f"/_sim/microsoft/accounts/{user}/messages/move",
        json={"ids": [before[0]], "destination": "archive"},
    )
    assert moved.status_code == 200, moved.text
    after = await whole()
    assert after == before[1:]
    body = await _page(client, account, body["@odata.nextLink"], None)
    assert [m["id"] for m in body["value"]] == after[36:45]
