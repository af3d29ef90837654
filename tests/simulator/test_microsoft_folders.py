"""Simulated folder lifecycle: created, renamed, moved and deleted folders as folder delta
and message delta report them."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from app.simulator.server import SimulatorServer
from tests.providers.outlook.support import create_account, ground_truth, sim_client
from tests.simulator.test_microsoft_delta import headers, round_trip

FOLDER_DELTA = "/v1.0/me/mailFolders/delta"


@pytest.fixture
async def client(simulator: SimulatorServer) -> AsyncIterator[httpx.AsyncClient]:
    async with sim_client(simulator) as c:
        yield c


async def _control(client: httpx.AsyncClient, method: str, path: str, **kwargs: Any) -> Any:
    response = await client.request(method, f"/_sim/microsoft/accounts{path}", **kwargs)
    assert response.status_code < 300, response.text
    return response.json()


async def test_folder_delta_reports_created_renamed_moved_and_deleted_folders(
    client: httpx.AsyncClient,
) -> None:
    # Enough mail that Leads (2% of it) is never empty.
    account = await create_account(client, message_count=1000)
    user = account["user_id"]
    hdrs = headers(account)
    first, delta_link = await round_trip(client, FOLDER_DELTA, hdrs)
    by_name = {f["displayName"]: f for page in first for f in page}
    assert "@removed" not in str(first)

    clients = await _control(
        client, "POST", f"/{user}/folders", json={"display_name": "Clients", "parent": "inbox"}
    )
    acme = await _control(
        client, "POST", f"/{user}/folders", json={"display_name": "Acme", "parent": clients["id"]}
    )
    await _control(
        client, "PATCH", f"/{user}/folders/{by_name['Receipts']['id']}",
        json={"display_name": "Invoices"},
    )  # fmt: skip
    await _control(
        client, "PATCH", f"/{user}/folders/{by_name['Team']['id']}",
        json={"parent": by_name["Projects"]["id"]},
    )  # fmt: skip
    leads_messages = await ground_truth(client, user, by_name["Leads"]["id"])
    assert leads_messages
    deleted = await _control(client, "DELETE", f"/{user}/folders/{by_name['Leads']['id']}")
    assert deleted["changed"] == len(leads_messages)

    pages, _ = await round_trip(client, delta_link, hdrs)
    changes = [f for page in pages for f in page]
    by_id = {f["id"]: f for f in changes}
    # Created: both, and the child before its parent (no order is promised).
    assert by_id[acme["id"]]["parentFolderId"] == clients["id"]
    assert by_id[clients["id"]]["parentFolderId"] == by_name["Inbox"]["id"]
    ids = [f["id"] for f in changes]
    assert ids.index(acme["id"]) < ids.index(clients["id"])
    # Renamed and moved: same id, new displayName / parentFolderId.
    assert by_id[by_name["Receipts"]["id"]]["displayName"] == "Invoices"
    assert by_id[by_name["Team"]["id"]]["parentFolderId"] == by_name["Projects"]["id"]
    # Deleted: @removed, nothing else.
    assert by_id[by_name["Leads"]["id"]] == {
        "id": by_name["Leads"]["id"],
        "@removed": {"reason": "deleted"},
    }
    # A fresh enumeration no longer lists the deleted folder.
    again, _ = await round_trip(client, FOLDER_DELTA, hdrs)
    assert by_name["Leads"]["id"] not in {f["id"] for page in again for f in page}
    # Its messages are gone from the mailbox.
    remaining = {m["id"] for m in await ground_truth(client, user)}
    assert not remaining & {m["id"] for m in leads_messages}
    # The truth names every folder's place in the tree.
    moved = (await ground_truth(client, user, by_name["Team"]["id"]))[0]
    assert [f["display_name"] for f in moved["folder_chain"]] == ["Projects", "Team"]


async def test_message_delta_on_a_deleted_folder_is_sync_folder_not_found(
    client: httpx.AsyncClient,
) -> None:
    account = await create_account(client, message_count=50)
    user = account["user_id"]
    hdrs = headers(account, "odata.maxpagesize=5")
    folder = await _control(client, "POST", f"/{user}/folders", json={"display_name": "Doomed"})
    await _control(client, "POST", f"/{user}/messages", json={"folder": folder["id"], "count": 12})
    url = f"/v1.0/me/mailFolders/{folder['id']}/messages/delta"
    first = await client.get(url, headers=hdrs)
    assert first.status_code == 200
    next_link = first.json()["@odata.nextLink"]
    await _control(client, "DELETE", f"/{user}/folders/{folder['id']}")

    # Mid-round (a skipToken) and later (a deltaToken): the sync state has no folder.
    gone = await client.get(next_link, headers=hdrs)
    assert gone.status_code == 404
    assert gone.json()["error"]["code"] == "ErrorSyncFolderNotFound"
    # A fresh round on the id: the folder is simply not found.
    fresh = await client.get(url, headers=hdrs)
    assert fresh.status_code == 404
    assert fresh.json()["error"]["code"] == "ErrorItemNotFound"
    assert (
        await client.get(f"/v1.0/me/mailFolders/{folder['id']}", headers=hdrs)
    ).status_code == 404


async def test_distinguished_folders_cannot_be_moved_or_deleted(
    client: httpx.AsyncClient,
) -> None:
    account = await create_account(client, message_count=5)
    user = account["user_id"]
    refused = await client.delete(f"/_sim/microsoft/accounts/{user}/folders/inbox")
    assert refused.status_code == 400
    moved = await client.patch(
        f"/_sim/microsoft/accounts/{user}/folders/inbox", json={"parent": "archive"}
    )
    assert moved.status_code == 400
    projects = next(
        f for f in (await _control(client, "GET", f"/{user}"))["folders"]
        if f["display_name"] == "Projects"
    )  # fmt: skip
    child = await _control(
        client, "POST", f"/{user}/folders", json={"display_name": "x", "parent": projects["id"]}
    )
    loop = await client.patch(
        f"/_sim/microsoft/accounts/{user}/folders/{projects['id']}", json={"parent": child["id"]}
    )
    assert loop.status_code == 400
